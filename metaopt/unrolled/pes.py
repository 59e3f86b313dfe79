"""Persistent Evolution Strategies (Vicol, Metz & Sohl-Dickstein, ICML 2021)."""

from __future__ import annotations

from typing import Any

import torch

from metaopt.tasks.unrolled.problem import UnrolledProblem
from metaopt.unrolled.base import GradientEstimator, split_at_reset, to_device

__all__ = ["PES"]


class PES(GradientEstimator):
    """PES: each particle keeps its own inner state, advanced only under its own perturbed θ.

    Every truncation τ draws a fresh ``ε_τ``, accumulates ``ξ_τ = ξ_{τ−1} + ε_τ`` (the sum includes the
    current ε) and estimates ``ĝ = Σ_i ξ_τ^(i) L_τ^(i) / (Nσ²)`` (Vicol, Metz & Sohl-Dickstein, 2021;
    antithetic pairs as in the paper). A particle that reaches the end of its horizon inside the truncation
    weights the losses up to its reset by ``ξ_{τ−1} + ε_τ`` and those after it by ``ε_τ`` alone, and
    carries ``ε_τ`` (or nothing, when the reset was the truncation's last step) into the next
    accumulator: the new inner problem was perturbed only by ``ε_τ``. Unbiased for the Gaussian-
    smoothed meta-objective when θ is fixed during an inner problem.

    ``stagger=True`` starts the particles at inner steps spread over the horizon (as learned_optimization's
    ``random_initial_iteration_offset``), so that consecutive estimates are not all from the same phase.
    """

    def __init__(self, problem: UnrolledProblem, num_particles: int, sigma: float = 0.01,
                 truncation_length: int = 10, antithetic: bool = True, seed: int = 0, stagger: bool = True):
        super().__init__(problem, num_particles, sigma, truncation_length, antithetic, seed)
        self.state = problem.init_state(self.local_particles, self._staggered_steps(stagger))
        self.accumulator = torch.zeros(self.local_particles, problem.dim, device=problem.device)

    @torch.no_grad()
    def estimate(self, theta: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        theta = self._check_theta(theta)
        epsilon = self._sample_noise()
        self.state, losses, resets = self._unroll(self.state, theta + epsilon)
        before, after = split_at_reset(losses, resets)
        accumulated = self.accumulator + epsilon
        weighted = before[:, None] * accumulated + after[:, None] * epsilon
        kept = self._kept(losses)
        gradient, info = self._reduce(weighted, before + after, kept)

        reset_any = resets.any(0)
        reset_last = resets[-1]
        self.accumulator = torch.where(reset_any[:, None], epsilon, accumulated)
        self.accumulator[reset_last] = 0.0
        if not kept.all():
            self.state = self.problem.reset(self.state, ~kept)
            self.accumulator[~kept] = 0.0
        info.update(losses=losses, resets=resets.any(0), diverged=~kept)
        return gradient, info

    def _extra_state(self) -> dict[str, Any]:
        return {"state": self.state, "accumulator": self.accumulator}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.state = to_device(state["state"], self.problem.device)
        self.accumulator = to_device(state["accumulator"], self.problem.device)
