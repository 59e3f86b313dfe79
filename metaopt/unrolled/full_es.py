"""Full-unroll antithetic ES: every estimate runs whole inner problems."""

from __future__ import annotations

from typing import Any

import torch

from metaopt.checks import require
from metaopt.tasks.unrolled.problem import UnrolledProblem
from metaopt.unrolled.base import GradientEstimator

__all__ = ["FullES"]


class FullES(GradientEstimator):
    """``ĝ = mean_pairs ε (L(θ+ε) − L(θ−ε)) / (2σ²)`` with ``L`` the loss of a whole inner problem.

    Each call starts every particle at ``s_0`` and unrolls the full horizon ``T`` (in chunks of
    ``truncation_length`` steps, which only bounds the size of the loss buffer). Unbiased for the
    smoothed objective, but one update costs a whole inner problem.
    """

    def __init__(self, problem: UnrolledProblem, num_particles: int, sigma: float = 0.01,
                 truncation_length: int | None = None, antithetic: bool = True, seed: int = 0):
        require("problem.horizon", problem.horizon, problem.horizon is not None,
                "a finite horizon (full-unroll ES needs inner problems that end)")
        truncation_length = truncation_length or problem.horizon
        super().__init__(problem, num_particles, sigma, truncation_length, antithetic, seed)

    @torch.no_grad()
    def estimate(self, theta: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        theta = self._check_theta(theta)
        epsilon = self._sample_noise()
        state = self.problem.init_state(self.local_particles)
        chunks, remaining = [], self.problem.horizon
        while remaining > 0:
            steps = min(self.truncation_length, remaining)
            state, losses, _ = self._unroll(state, theta + epsilon, steps)
            chunks.append(losses)
            remaining -= steps
        losses = torch.cat(chunks)
        unroll_loss = losses.sum(0)
        kept = self._kept(losses)
        gradient, info = self._reduce(unroll_loss[:, None] * epsilon, unroll_loss, kept)
        resets = torch.ones_like(kept)
        info.update(losses=losses, resets=resets, diverged=~kept)
        return gradient, info
