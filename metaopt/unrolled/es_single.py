"""ES-Single (Vicol, Lin & Sohl-Dickstein, 2023): one perturbation per particle per inner problem."""

from __future__ import annotations

from typing import Any

import torch

from metaopt.checks import require
from metaopt.tasks.unrolled.problem import UnrolledProblem
from metaopt.unrolled.base import GradientEstimator, to_device

__all__ = ["ESSingle"]


class ESSingle(GradientEstimator):
    """ES-Single: each particle samples ``ε`` when its inner problem starts and keeps it for all its unrolls.

    ``ĝ = Σ_i ε^(i) L_τ^(i) / (Nσ²)``, no accumulator. With θ fixed, the sum of the estimates over an
    inner problem is exactly full-unroll ES with that ε, and the variance of one estimate does not grow
    with the number of unrolls (unlike PES). Particles own their states, as in PES; ``ε`` is resampled
    for a pair when it resets (or diverges).

    Because ε changes only between inner problems, resets must fall on truncation boundaries: the
    horizon must be a multiple of ``truncation_length``, and staggered starts are multiples of it.
    """

    def __init__(self, problem: UnrolledProblem, num_particles: int, sigma: float = 0.01,
                 truncation_length: int = 10, antithetic: bool = True, seed: int = 0, stagger: bool = True):
        super().__init__(problem, num_particles, sigma, truncation_length, antithetic, seed)
        if problem.horizon is not None:
            require("truncation_length", truncation_length, problem.horizon % truncation_length == 0,
                    f"a divisor of the horizon T={problem.horizon} (ES-Single keeps one ε per inner "
                    "problem, so resets must fall between truncations)")
        self.state = problem.init_state(self.local_particles, self._staggered_steps(stagger))
        self.epsilon = self._sample_noise()

    @torch.no_grad()
    def estimate(self, theta: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        theta = self._check_theta(theta)
        self.state, losses, resets = self._unroll(self.state, theta + self.epsilon)
        unroll_loss = losses.sum(0)
        kept = self._kept(losses)
        gradient, info = self._reduce(unroll_loss[:, None] * self.epsilon, unroll_loss, kept)

        if not kept.all():
            self.state = self.problem.reset(self.state, ~kept)
        # Resets of a pair happen together (same stream, same horizon); every rank draws for all pairs.
        fresh = resets.any(0) | ~kept
        # Every rank draws when any particle anywhere needs fresh noise, so generators stay in step.
        if self._any_rank(fresh):
            self.epsilon = torch.where(fresh[:, None], self._sample_noise(), self.epsilon)
        info.update(losses=losses, resets=resets.any(0), diverged=~kept)
        return gradient, info

    def _extra_state(self) -> dict[str, Any]:
        return {"state": self.state, "epsilon": self.epsilon}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.state = to_device(state["state"], self.problem.device)
        self.epsilon = to_device(state["epsilon"], self.problem.device)
