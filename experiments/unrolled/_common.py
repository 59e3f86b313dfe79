"""Helpers shared by the unrolled experiments: an outer loop that records θ, and Markdown tables."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent


def optimize(estimator, theta: torch.Tensor, steps: int, optimizer: Callable,
             callback: Callable | None = None) -> tuple[torch.Tensor, list[float]]:
    """Run ``steps`` outer steps; return the θ trajectory (steps+1, dim) and the unroll losses."""
    theta = torch.nn.Parameter(theta.clone())
    outer = optimizer([theta])
    trajectory, losses = [theta.detach().clone()], []
    for step in range(steps):
        gradient, info = estimator.estimate(theta.detach())
        outer.zero_grad()
        theta.grad = gradient
        outer.step()
        trajectory.append(theta.detach().clone())
        losses.append(info["loss"])
        if callback is not None:
            callback(step, theta.detach(), info)
    return torch.stack(trajectory), losses


def write(name: str, text: str) -> Path:
    path = HERE / name
    path.write_text(text)
    print(text)
    return path
