"""Truncated ES: antithetic ES over one truncation from a shared inner state (biased)."""

from __future__ import annotations

from typing import Any

import torch

from metaopt.tasks.unrolled.problem import UnrolledProblem
from metaopt.unrolled.base import GradientEstimator, to_device

__all__ = ["TruncatedES"]


class TruncatedES(GradientEstimator):
    """Every particle starts each truncation from one shared state ``s̄``: ``ĝ = Σ_i ε_i L_i / (Nσ²)``.

    Afterwards ``s̄`` is advanced ``K`` steps with the unperturbed θ. The estimate ignores how θ acted
    on ``s̄`` in earlier truncations, so it is biased towards short-horizon behaviour (Vicol et al.,
    2021). Used as the baseline PES improves upon.
    """

    def __init__(self, problem: UnrolledProblem, num_particles: int, sigma: float = 0.01,
                 truncation_length: int = 10, antithetic: bool = True, seed: int = 0):
        super().__init__(problem, num_particles, sigma, truncation_length, antithetic, seed)
        self.shared = problem.init_state(1)

    @torch.no_grad()
    def estimate(self, theta: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        theta = self._check_theta(theta)
        epsilon = self._sample_noise()
        start = {k: _repeat(v, self.local_particles) for k, v in self.shared.items()}
        # The shared trajectory replays the draws of the particles' unroll and reads stream 0's data
        # (on every rank, so that s̄ stays identical across processes).
        generator_state = self.data_generator.get_state()
        _, losses, resets = self._unroll(start, theta + epsilon)
        after_particles = self.data_generator.get_state()
        self.data_generator.set_state(generator_state)
        stream_zero = torch.zeros(1, dtype=torch.long, device=self.problem.device)
        self.steps_spent += self.truncation_length
        self.shared, _, _ = self.problem.unroll(self.shared, theta[None], self.truncation_length,
                                                self.data_generator, stream_zero, self.num_streams)
        self.data_generator.set_state(after_particles)
        unroll_loss = losses.sum(0)
        kept = self._kept(losses)
        gradient, info = self._reduce(unroll_loss[:, None] * epsilon, unroll_loss, kept)
        info.update(losses=losses, resets=resets.any(0), diverged=~kept)
        return gradient, info

    def _extra_state(self) -> dict[str, Any]:
        return {"shared": self.shared}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.shared = to_device(state["shared"], self.problem.device)


def _repeat(value: Any, n: int) -> Any:
    if isinstance(value, dict):
        return {k: _repeat(v, n) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_repeat(v, n) for v in value)
    return value.expand(n, *value.shape[1:]).clone()
