"""What every estimator of ``metaopt.unrolled`` shares: validation, noise, data streams, sharding, reduction.

Particles come in antithetic pairs ``(θ+ε, θ−ε)``: particle ``i`` and ``i + P`` of the ``2P`` particles
share ``ε`` (with opposite signs) and a data stream. Under ``torch.distributed`` each rank holds a
contiguous block of the pairs; every rank draws the noise and data of *all* pairs from the same
generators and keeps its block, then the per-rank sums are all-reduced, so the estimate equals the
single-process one (up to the order of float additions) and θ stays identical on every rank.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from metaopt.checks import require
from metaopt.tasks.unrolled.problem import ParticleState, UnrolledProblem

__all__ = ["GradientEstimator", "world"]


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if world()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


class GradientEstimator:
    """Base of the estimators: ``estimate(theta) -> (gradient, info)`` advances the particles one truncation.

    ``info`` holds ``loss`` (the mean unroll loss ``L^(τ)`` over the particles kept, all ranks; NaN,
    with a NaN gradient, when none is kept),
    ``losses`` and ``resets`` (this rank's particles), ``diverged`` (this rank's particles whose loss
    was NaN/Inf: they and their antithetic partners are dropped from the estimate and reset),
    ``num_diverged`` (all ranks) and ``particle_estimates`` (this rank's per-particle terms whose
    mean over kept particles is the estimate; zero rows where dropped), for variance diagnostics.

    ``steps_spent`` counts the inner steps the estimator has run, over all particles of all ranks (one
    particle advancing one step is one step; an unperturbed trajectory such as truncated ES's shared one
    counts too): the compute a search spends, comparable with a hyperparameter search's training runs
    (``trials × horizon``). It is checkpointed with the estimator.
    """

    uses_noise = True
    differentiates = False
    """Whether it backpropagates through the inner steps (TBPTT), which a problem must then allow."""

    def __init__(self, problem: UnrolledProblem, num_particles: int, sigma: float = 0.01,
                 truncation_length: int = 10, antithetic: bool = True, seed: int = 0):
        require("num_particles", num_particles, isinstance(num_particles, int) and num_particles > 0,
                "a positive integer")
        if self.uses_noise:
            require("sigma", sigma, isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0,
                    "a finite number > 0 (the standard deviation of the perturbations)")
            require("num_particles", num_particles, not antithetic or num_particles % 2 == 0,
                    "an even number with antithetic=True (particles come in ±ε pairs)")
        require("truncation_length", truncation_length,
                isinstance(truncation_length, int) and truncation_length > 0, "a positive integer")
        if problem.horizon is not None:
            require("truncation_length", truncation_length, truncation_length <= problem.horizon,
                    f"at most the horizon T={problem.horizon} of the inner problem")
        self.problem = problem
        self.num_particles = num_particles
        self.sigma = float(sigma)
        self.truncation_length = truncation_length
        self.antithetic = bool(antithetic) and self.uses_noise
        self.seed = seed
        self.num_streams = num_particles // 2 if self.antithetic else num_particles
        self.rank, self.world_size = world()
        require("num_particles", num_particles, self.num_streams % self.world_size == 0,
                f"a number whose {'pairs' if self.antithetic else 'particles'} split evenly across the "
                f"{self.world_size} processes")
        per_rank = self.num_streams // self.world_size
        first = self.rank * per_rank
        self.local_streams = torch.arange(first, first + per_rank, device=problem.device)
        # Particle streams on this rank: the positive block, then (antithetic) the negative block.
        self.streams = torch.cat([self.local_streams] * (2 if self.antithetic else 1))
        self.noise_generator = torch.Generator().manual_seed(seed)
        self.data_generator = torch.Generator().manual_seed(seed + 1)
        self.steps_spent = 0

    @property
    def local_particles(self) -> int:
        return self.streams.numel()

    def _check_theta(self, theta: torch.Tensor) -> torch.Tensor:
        require("theta", tuple(theta.shape), theta.dim() == 1 and theta.numel() == self.problem.dim,
                f"a 1-D tensor of size {self.problem.dim} (the outer parameters of the problem)")
        return theta.detach().to(self.problem.device)

    def _sample_noise(self) -> torch.Tensor:
        """``ε ~ N(0, σ²I)`` for all streams (every rank draws all), this rank's rows, signed per particle."""
        noise = torch.randn(self.num_streams, self.problem.dim, generator=self.noise_generator)
        noise = (self.sigma * noise).to(self.problem.device)
        return self._local(noise)

    def _local(self, per_stream: torch.Tensor) -> torch.Tensor:
        """Rows of a per-stream tensor for this rank's particles (negated for the antithetic partners)."""
        rows = per_stream[self.local_streams]
        return torch.cat([rows, -rows]) if self.antithetic else rows

    def _staggered_steps(self, stagger: bool) -> torch.Tensor:
        """Initial inner steps: 0 (lockstep) or uniform per stream over the horizon (K-multiples if K|T)."""
        horizon = self.problem.horizon
        if not stagger or horizon is None:
            return torch.zeros(self.local_particles, dtype=torch.long, device=self.problem.device)
        K = self.truncation_length
        if horizon % K == 0:
            steps = K * torch.randint(horizon // K, (self.num_streams,), generator=self.data_generator)
        else:
            steps = torch.randint(horizon, (self.num_streams,), generator=self.data_generator)
        return steps.to(self.problem.device)[self.streams]

    def _unroll(self, state: ParticleState, theta: torch.Tensor, num_steps: int | None = None):
        num_steps = num_steps or self.truncation_length
        self.steps_spent += self.num_particles * num_steps
        return self.problem.unroll(state, theta, num_steps, self.data_generator, self.streams, self.num_streams)

    def _any_rank(self, mask: torch.Tensor) -> bool:
        """Whether ``mask`` is true for some particle on some rank."""
        return bool(_all_reduce(mask.any().to(torch.float32, copy=True).reshape(1)) > 0)

    def _kept(self, losses: torch.Tensor) -> torch.Tensor:
        """Particles whose unroll loss is finite and, with antithetic sampling, whose partner's is too."""
        finite = torch.isfinite(losses).all(0)
        if self.antithetic:
            half = finite.numel() // 2
            pair = finite[:half] & finite[half:]
            finite = torch.cat([pair, pair])
        return finite

    def _reduce(self, weighted: torch.Tensor, unroll_loss: torch.Tensor,
                kept: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """``ĝ = Σ_i w_i / (nσ²)`` over the ``n`` kept particles of all ranks (``w_i``: loss·perturbation).

        With no particle kept (all diverged) there is no estimate: the loss and every entry of the
        gradient are NaN, so that neither can pass for a perfect loss with a zero gradient.
        """
        weighted = torch.where(kept[:, None], weighted, torch.zeros_like(weighted))
        kept_loss = torch.where(kept, unroll_loss, torch.zeros_like(unroll_loss))
        totals = torch.cat([weighted.sum(0), kept_loss.sum()[None], kept.sum()[None].to(weighted.dtype),
                            (~kept).sum()[None].to(weighted.dtype)])
        totals = _all_reduce(totals)
        dim = self.problem.dim
        count = totals[dim + 1]
        # 0/0 where nothing was kept: NaN, not the 0 that an empty sum would suggest.
        gradient = totals[:dim] / (count * self.sigma**2)
        info = {"loss": float(totals[dim] / count), "num_diverged": int(totals[dim + 2]),
                "particle_estimates": weighted / self.sigma**2}
        return gradient, info

    def estimate(self, theta: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Generators and this rank's particle states and accumulators: enough to resume exactly."""
        return {"noise_generator": self.noise_generator.get_state(),
                "data_generator": self.data_generator.get_state(), "steps_spent": self.steps_spent,
                **self._extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.noise_generator.set_state(state["noise_generator"])
        self.data_generator.set_state(state["data_generator"])
        self.steps_spent = int(state.get("steps_spent", 0))  # 0 for a checkpoint from before the count
        self._load_extra_state(state)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` (tensors in dicts and lists, e.g. a checkpointed particle state) moved to ``device``."""
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value.to(device)


def split_at_reset(losses: torch.Tensor, resets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per particle, the summed losses of the steps up to and including its reset, and of those after it.

    A particle resets at most once per truncation (``K ≤ T``); without a reset everything is "before".
    """
    after = (torch.cumsum(resets.long(), 0) - resets.long()) > 0
    zero = torch.zeros_like(losses)
    return torch.where(after, zero, losses).sum(0), torch.where(after, losses, zero).sum(0)
