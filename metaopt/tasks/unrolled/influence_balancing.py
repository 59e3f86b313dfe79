"""Influence balancing (Tallec & Ollivier, 2017; the PES paper): a linear system with long memory."""

from __future__ import annotations

import torch

from metaopt.checks import require
from metaopt.tasks.unrolled.problem import ParticleState, UnrolledProblem

__all__ = ["InfluenceBalancing"]


class InfluenceBalancing(UnrolledProblem):
    """``s_{t+1} = A s_t + θ·b`` with ``A = ½I + ½(first superdiagonal)`` and ``b`` = +1 (first
    ``num_positive`` entries), −1 (the rest); ``s_0`` = ones; no reset.

    The loss of an unroll is ``½(s[0] − 1)²`` at its last step (zero at the other steps). The long-run
    fixed point has ``s[0] = −6θ`` for the default ``dim=23, num_positive=10``, so the optimum is
    ``θ* = −1/6`` (``optimum``); short truncations see only the immediate, opposite-signed influence of θ
    and push it the wrong way (Vicol et al., 2021).
    """

    horizon = None

    def __init__(self, dim: int = 23, num_positive: int = 10, theta0: float = 0.5, device: str = "cpu"):
        require("dim", dim, isinstance(dim, int) and dim >= 2, "an integer >= 2")
        require("num_positive", num_positive, isinstance(num_positive, int) and 0 < num_positive < dim,
                f"an integer in (0, {dim})")
        self.dim = 1
        self.state_dim = dim
        self.theta0 = float(theta0)
        self.device = torch.device(device)
        shift = torch.diag(torch.ones(dim - 1, device=self.device), 1)
        self.A = 0.5 * torch.eye(dim, device=self.device) + 0.5 * shift
        self.signs = torch.cat([torch.ones(num_positive), -torch.ones(dim - num_positive)]).to(self.device)
        # Fixed point: s = (I − A)⁻¹ b θ, so the loss ½(s[0] − 1)² is minimal at θ = 1 / ((I − A)⁻¹ b)[0].
        identity = torch.eye(dim, device=self.device, dtype=torch.float64)
        response = torch.linalg.solve(identity - self.A.double(), self.signs.double())
        self.optimum = float(1.0 / response[0])

    @property
    def theta_names(self) -> list[str]:
        return ["theta"]

    def initial_theta(self) -> torch.Tensor:
        return torch.tensor([self.theta0], device=self.device)

    def init_state(self, num_particles: int, steps: torch.Tensor | None = None) -> ParticleState:
        if steps is None:
            steps = torch.zeros(num_particles, dtype=torch.long, device=self.device)
        return {"step": steps.clone(), "s": torch.ones(num_particles, self.state_dim, device=self.device)}

    def _unroll(self, state, theta, num_steps, generator, streams, num_streams):
        s = state["s"]
        for _ in range(num_steps):
            s = s @ self.A.T + theta * self.signs
        losses = torch.zeros(num_steps, s.shape[0], dtype=s.dtype, device=s.device)
        losses[-1] = 0.5 * (s[:, 0] - 1) ** 2
        resets = torch.zeros(num_steps, s.shape[0], dtype=torch.bool, device=s.device)
        return {"step": state["step"] + num_steps, "s": s}, losses, resets

    def evaluate(self, theta: torch.Tensor) -> dict[str, float]:
        return {"distance_to_optimum": abs(float(theta[0]) - self.optimum)}
