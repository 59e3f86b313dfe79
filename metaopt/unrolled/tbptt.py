"""Truncated backpropagation through time (Williams & Peng, 1990) for unrolled inner problems."""

from __future__ import annotations

from typing import Any

import torch

from metaopt.tasks.unrolled.problem import UnrolledProblem
from metaopt.unrolled.base import GradientEstimator, to_device

__all__ = ["TBPTT"]


class TBPTT(GradientEstimator):
    """``ĝ = ∇_θ L^(τ)(θ; stop_grad(s))``: backpropagate through the current truncation only.

    ``num_particles`` independent inner states (each with its own data stream) are advanced under the
    same θ and their gradients averaged. Exact for ``K = T`` with lockstep resets, biased for short
    ``K`` (it ignores θ's effect on the state a truncation starts from). Memory grows with ``K``.
    ``sigma`` and ``antithetic`` do not apply (accepted for a uniform constructor).
    """

    uses_noise = False
    differentiates = True

    def __init__(self, problem: UnrolledProblem, num_particles: int = 1, sigma: float | None = None,
                 truncation_length: int = 10, antithetic: bool = False, seed: int = 0, stagger: bool = True):
        super().__init__(problem, num_particles, 1.0, truncation_length, False, seed)
        self.state = problem.init_state(self.local_particles, self._staggered_steps(stagger))

    def estimate(self, theta: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        theta = self._check_theta(theta)
        # One leaf row per particle, so that a diverging particle's gradient can be dropped alone.
        rows = theta.expand(self.local_particles, -1).clone().requires_grad_(True)
        with torch.enable_grad():
            state, losses, resets = self._unroll(self.state, rows)
            unroll_loss = losses.sum(0)
            (grads,) = torch.autograd.grad(unroll_loss.sum(), rows)
        self.state = _detach(state)
        unroll_loss = unroll_loss.detach()
        kept = torch.isfinite(losses.detach()).all(0) & torch.isfinite(grads).all(1)
        # _reduce divides by σ² = 1: the per-particle rows are the gradients themselves.
        gradient, info = self._reduce(grads, unroll_loss, kept)
        if not kept.all():
            self.state = self.problem.reset(self.state, ~kept)
        info.update(losses=losses.detach(), resets=resets.any(0), diverged=~kept)
        return gradient, info

    def _extra_state(self) -> dict[str, Any]:
        return {"state": self.state}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.state = to_device(state["state"], self.problem.device)


def _detach(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detach(v) for v in value)
    return value.detach()
