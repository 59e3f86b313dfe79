"""Two-player games whose joint vector field is linear, ĝ(ω) = Jω: the bilinear game and the
cooperative-to-adversarial family of Lorraine et al., 2022 (Sections 4.1-4.2)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from metaopt.checks import require
from metaopt.tasks.games.game import Game, Vector

__all__ = ["QuadraticGame", "BilinearGame", "MixedGame", "conditioned_matrix"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def conditioned_matrix(dim: int, condition_number: float, generator: torch.Generator, dtype: torch.dtype,
                       symmetric: bool = False) -> torch.Tensor:
    """``U diag(s) Vᵀ`` with random orthogonal U, V (``V = U`` if symmetric) and s geometric from 1 to 1/κ."""
    values = condition_number ** -torch.linspace(0, 1, dim, dtype=torch.float64)

    def orthogonal():
        return torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))[0]
    left = orthogonal()
    right = left if symmetric else orthogonal()
    return (left * values @ right.T).to(dtype)


class QuadraticGame(Game):
    """Players ``x, y ∈ R^dim`` with a linear joint vector field ``ĝ(ω) = J ω``, ω = (x, y); equilibrium 0."""

    def __init__(self, dim: int, init_scale: float, dtype: str):
        require("task.dim", dim, isinstance(dim, int) and dim > 0, "a positive integer")
        require("task.init_scale", init_scale, init_scale > 0, "a number > 0")
        require("task.dtype", dtype, dtype in _DTYPES, " or ".join(_DTYPES))
        self.dim, self.init_scale, self.dtype = dim, init_scale, _DTYPES[dtype]

    def jacobian(self) -> torch.Tensor:
        """``J = ∂ĝ/∂ω`` (2·dim × 2·dim), the maximizing player's gradient negated."""
        raise NotImplementedError

    def build_players(self) -> dict[str, nn.Module]:
        return {name: Vector(self.init_scale * torch.randn(self.dim, dtype=self.dtype))
                for name in ("x", "y")}

    def meta_loss(self, players: Mapping[str, nn.Module]) -> torch.Tensor:
        """``log ‖ω − ω*‖``: its mean over a run of linear convergence at rate ρ is ``log ‖ω₀‖ + (T+1)/2·log ρ``,
        so tuning it tunes the rate (the distance itself would weigh only the first rounds)."""
        x, y = players["x"].weight, players["y"].weight
        return 0.5 * torch.log(x.square().sum() + y.square().sum())

    @torch.no_grad()
    def evaluate(self, players: Mapping[str, nn.Module]) -> dict[str, float]:
        """``distance``: ‖ω − ω*‖ to the equilibrium ω* = 0."""
        x, y = players["x"].weight, players["y"].weight
        return {"distance": torch.sqrt(x.square().sum() + y.square().sum()).item()}


class BilinearGame(QuadraticGame):
    """``min_x max_y xᵀAy`` with A of condition number ``condition_number`` (A = I·1 when dim = 1).

    Gradient descent-ascent and real momentum spiral out; complex momentum converges
    (Lorraine et al., 2022, Section 4.1).
    """

    maximize = {"x": False, "y": True}

    def __init__(self, dim: int = 10, condition_number: float = 1.0, init_scale: float = 1.0,
                 data_seed: int = 0, dtype: str = "float64"):
        super().__init__(dim, init_scale, dtype)
        require("task.condition_number", condition_number, condition_number >= 1, "a number >= 1")
        gen = torch.Generator().manual_seed(data_seed)
        self.matrix = conditioned_matrix(dim, condition_number, gen, self.dtype)

    def objectives(self, players, generator):
        value = players["x"].weight @ self.matrix @ players["y"].weight
        return {"x": value, "y": value}

    def jacobian(self) -> torch.Tensor:
        zeros = torch.zeros_like(self.matrix)
        return torch.cat([torch.cat([zeros, self.matrix], 1), torch.cat([-self.matrix.T, zeros], 1)])

    @torch.no_grad()
    def evaluate(self, players):
        value = (players["x"].weight @ self.matrix @ players["y"].weight).item()
        return {**super().evaluate(players), "objective": value}


class MixedGame(QuadraticGame):
    """A family from cooperative to adversarial: with ω = (x, y), adversarial = γ ∈ [0, 1],

    ``L_x = (1−γ)·½ωᵀHω + γ·xᵀAy``, ``L_y = (1−γ)·½ωᵀHω − γ·xᵀAy``, both minimized, so that
    ``J = (1−γ)·H + γ·[[0, A], [−Aᵀ, 0]]`` mixes a symmetric (H, positive definite) and an
    antisymmetric Jacobian (Lorraine et al., 2022, Section 4.2). γ = 0: one shared quadratic;
    γ = 1: the bilinear game.
    """

    maximize = {"x": False, "y": False}

    def __init__(self, dim: int = 5, adversarial: float = 0.5, condition_number: float = 4.0,
                 init_scale: float = 1.0, data_seed: int = 0, dtype: str = "float64"):
        super().__init__(dim, init_scale, dtype)
        require("task.adversarial", adversarial, 0 <= adversarial <= 1, "a number in [0, 1]")
        require("task.condition_number", condition_number, condition_number >= 1, "a number >= 1")
        gen = torch.Generator().manual_seed(data_seed)
        self.adversarial = float(adversarial)
        self.hessian = conditioned_matrix(2 * dim, condition_number, gen, self.dtype, symmetric=True)
        self.matrix = conditioned_matrix(dim, condition_number, gen, self.dtype)

    def objectives(self, players, generator):
        x, y = players["x"].weight, players["y"].weight
        omega = torch.cat([x, y])
        shared = 0.5 * (1 - self.adversarial) * omega @ self.hessian @ omega
        coupling = self.adversarial * (x @ self.matrix @ y)
        return {"x": shared + coupling, "y": shared - coupling}

    def jacobian(self) -> torch.Tensor:
        zeros = torch.zeros_like(self.matrix)
        antisymmetric = torch.cat([torch.cat([zeros, self.matrix], 1), torch.cat([-self.matrix.T, zeros], 1)])
        return (1 - self.adversarial) * self.hessian + self.adversarial * antisymmetric
