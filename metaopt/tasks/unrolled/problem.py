"""The one interface between an unrolled inner problem and the gradient estimators that drive it.

Modelled on learned_optimization's ``TruncatedStep``: the problem knows how to initialise, advance and
reset a batch of inner states; the estimators (TBPTT, ES, PES, ES-Single) know only this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from metaopt.checks import require

__all__ = ["UnrolledProblem", "ParticleState", "where_particles"]

# A batch of inner states: a dict of tensors (or lists of tensors) whose leading dimension indexes the
# particles, always holding ``"step"``, the (N,) inner-step counter t ∈ [0, T). Only tensors, lists
# and dicts inside, so that checkpoints load with ``torch.load(weights_only=True)``.
ParticleState = dict[str, Any]


def where_particles(mask: torch.Tensor, new: Any, old: Any) -> Any:
    """Per particle, ``new`` where ``mask`` else ``old`` (leaves of ``new`` may lack the particle axis)."""
    if isinstance(old, dict):
        return {k: where_particles(mask, new[k], v) for k, v in old.items()}
    if isinstance(old, (list, tuple)):
        return type(old)(where_particles(mask, n, o) for n, o in zip(new, old))
    shape = (-1,) + (1,) * (old.dim() - 1)
    return torch.where(mask.reshape(shape), new.to(old.dtype), old)


class UnrolledProblem(ABC):
    """An inner problem of horizon ``T``, dynamics ``s_{t+1} = f(s_t, x_t; θ)``, unrolled in truncations.

    Subclasses define ``dim`` (the size of θ), ``horizon`` (``T``; ``None`` for a problem that never
    resets), ``initial_theta()``, ``init_state`` and ``_unroll``. ``unroll`` advances every particle
    ``num_steps`` steps under its own row of ``theta`` (N, dim) and returns the per-step losses and
    which particles reached the end of their horizon at each step; a particle that does is reset to
    ``s_0`` (step 0) right after that step, and continues from there with the same ``theta`` row.

    Data: the estimators pass ``streams`` (N,), the index of the data stream each particle reads, and
    ``num_streams``. At every step the problem draws data for *all* streams from ``generator`` and each
    particle reads its own, so antithetic partners (same stream) see the same data, and a process that
    holds only some of the particles (``torch.distributed``) sees the same data as a single process.

    Everything runs under ``torch.no_grad`` for ES; TBPTT calls ``unroll`` with a ``theta`` that
    requires grad, so the dynamics must be differentiable with respect to θ.
    """

    dim: int
    horizon: int | None
    device: torch.device = torch.device("cpu")

    @property
    def theta_names(self) -> list[str]:
        """A name for each coordinate of θ (for logs)."""
        return [f"theta[{i}]" for i in range(self.dim)]

    @abstractmethod
    def initial_theta(self) -> torch.Tensor:
        """The starting outer parameters, a 1-D tensor of size ``dim``."""

    @abstractmethod
    def init_state(self, num_particles: int, steps: torch.Tensor | None = None) -> ParticleState:
        """``num_particles`` copies of ``s_0``; ``steps`` (N,) sets their inner-step counters (staggering)."""

    @abstractmethod
    def _unroll(self, state: ParticleState, theta: torch.Tensor, num_steps: int, generator: torch.Generator,
                streams: torch.Tensor, num_streams: int) -> tuple[ParticleState, torch.Tensor, torch.Tensor]:
        """Advance ``num_steps``; return ``(state, losses (num_steps, N), resets (num_steps, N) bool)``."""

    def unroll(self, state: ParticleState, theta: torch.Tensor, num_steps: int, generator: torch.Generator,
               streams: torch.Tensor | None = None,
               num_streams: int | None = None) -> tuple[ParticleState, torch.Tensor, torch.Tensor]:
        """Advance every particle ``num_steps`` steps under its own row of ``theta`` (N, dim)."""
        num_particles = state["step"].shape[0]
        require("theta", tuple(theta.shape), theta.dim() == 2 and theta.shape == (num_particles, self.dim),
                f"a tensor of shape ({num_particles}, {self.dim}): one row of outer parameters per particle")
        if streams is None:
            streams = torch.arange(num_particles, device=self.device)
            num_streams = num_particles
        return self._unroll(state, theta, num_steps, generator, streams, int(num_streams))

    def reset(self, state: ParticleState, mask: torch.Tensor) -> ParticleState:
        """The particles in ``mask`` back at ``s_0`` with step 0 (the others unchanged)."""
        fresh = self.init_state(1)
        return where_particles(mask, {k: _squeeze_first(v) for k, v in fresh.items()}, state)

    def evaluate(self, theta: torch.Tensor) -> dict[str, float]:
        """Metrics of the whole inner problem run with the unperturbed θ (for logs); none by default."""
        return {}

    def describe(self, theta: torch.Tensor) -> dict[str, float]:
        """Human-readable values of θ (e.g. the constrained hyperparameters), for logs."""
        return {name: float(v) for name, v in zip(self.theta_names, theta)}


def _squeeze_first(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _squeeze_first(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_squeeze_first(v) for v in value)
    return value[0]
