"""The chaotic 2-D learning-rate schedule task of the PES paper (Vicol et al., 2021)."""

from __future__ import annotations

import math

import torch

from metaopt.checks import require
from metaopt.tasks.unrolled.problem import ParticleState, UnrolledProblem

__all__ = ["Toy2DSchedule"]


class Toy2DSchedule(UnrolledProblem):
    """Plain SGD on ``f(x) = √(x₀²+5) − √5 + sin²(x₁)·exp(−5x₀²) + ¼|x₁ − 100|`` from ``x = (1, 1)``.

    The learning rate follows ``lr_t = e^{θ₀}(T−t)/T + e^{θ₁}t/T`` (a linear schedule between two
    log-parameterised values); the meta-objective is the sum of the inner losses ``f(x_{t+1})`` over the
    ``T`` steps. Its surface over θ is chaotic for large learning rates, so truncated methods get stuck.
    """

    dim = 2

    def __init__(self, horizon: int = 100, theta0: tuple[float, float] = (-4.0, -4.0),
                 x0: tuple[float, float] = (1.0, 1.0), device: str = "cpu"):
        require("horizon", horizon, isinstance(horizon, int) and horizon > 0, "a positive integer")
        self.horizon = horizon
        self.theta0 = tuple(float(v) for v in theta0)
        self.x0 = tuple(float(v) for v in x0)
        self.device = torch.device(device)

    @property
    def theta_names(self) -> list[str]:
        return ["log_lr_start", "log_lr_end"]

    def initial_theta(self) -> torch.Tensor:
        return torch.tensor(self.theta0, device=self.device)

    def init_state(self, num_particles: int, steps: torch.Tensor | None = None) -> ParticleState:
        if steps is None:
            steps = torch.zeros(num_particles, dtype=torch.long, device=self.device)
        x = torch.tensor(self.x0, device=self.device).expand(num_particles, 2).clone()
        return {"step": steps.clone(), "x": x}

    @staticmethod
    def loss(x: torch.Tensor) -> torch.Tensor:
        x0, x1 = x[..., 0], x[..., 1]
        return (torch.sqrt(x0**2 + 5) - math.sqrt(5) + torch.sin(x1) ** 2 * torch.exp(-5 * x0**2)
                + 0.25 * torch.abs(x1 - 100))

    @staticmethod
    def grad(x: torch.Tensor) -> torch.Tensor:
        x0, x1 = x[..., 0], x[..., 1]
        bump = torch.exp(-5 * x0**2)
        g0 = x0 / torch.sqrt(x0**2 + 5) - 10 * x0 * torch.sin(x1) ** 2 * bump
        g1 = torch.sin(2 * x1) * bump + 0.25 * torch.sign(x1 - 100)
        return torch.stack([g0, g1], -1)

    def _unroll(self, state, theta, num_steps, generator, streams, num_streams):
        x, step = state["x"], state["step"]
        start = torch.tensor(self.x0, device=x.device, dtype=x.dtype)
        T = self.horizon
        losses, resets = [], []
        for _ in range(num_steps):
            frac = (step.to(x.dtype) / T)[:, None]
            lr = torch.exp(theta[:, :1]) * (1 - frac) + torch.exp(theta[:, 1:]) * frac
            x = x - lr * self.grad(x)
            losses.append(self.loss(x))
            step = step + 1
            done = step >= T
            resets.append(done)
            x = torch.where(done[:, None], start, x)
            step = torch.where(done, torch.zeros_like(step), step)
        return {"step": step, "x": x}, torch.stack(losses), torch.stack(resets)

    @torch.no_grad()
    def meta_loss(self, theta: torch.Tensor) -> torch.Tensor:
        """The meta-objective (sum of the T inner losses) at each row of ``theta`` (M, 2), from step 0."""
        state = self.init_state(theta.shape[0])
        _, losses, _ = self._unroll(state, theta, self.horizon, None, None, 0)
        return losses.sum(0)

    def evaluate(self, theta: torch.Tensor) -> dict[str, float]:
        return {"meta_objective": float(self.meta_loss(theta[None].to(self.device))[0])}
