"""The iterated prisoner's dilemma between memory-one policies, with its exact discounted value
(Foerster et al., 2018, "Learning with Opponent-Learning Awareness", Section 4.1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from metaopt.checks import is_finite_number, require
from metaopt.tasks.games.game import Game, Vector

__all__ = ["IteratedPrisonersDilemma", "ipd_values", "STATES"]

# Joint states (player 1's move, player 2's move); a policy's logits are (first move, CC, CD, DC, DD),
# each the logit of cooperating, the state seen from the player's own side (own move first).
STATES = ("CC", "CD", "DC", "DD")
_SWAP = [0, 2, 1, 3]  # player 2 sees CD as DC


def ipd_values(logits1: torch.Tensor, logits2: torch.Tensor, gamma: float,
               payoffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The exact discounted values of two memory-one policies in the iterated prisoner's dilemma.

    ``logitsᵢ`` (5): the logit of cooperating on the first move and after each joint state CC, CD, DC,
    DD as player i sees it (own move first). With p the cooperation probabilities, the joint state
    follows a Markov chain with initial distribution p₀ and transition matrix P (4 × 4), and the value is

    .. math:: V_i = p_0^\top (I − γP)^{-1} r_i = \sum_{t≥0} γ^t \, \mathbb{E}[r_i(s_t)]

    (Foerster et al., 2018, Section 4.1). ``payoffs`` (4 × 2): the rewards (r₁, r₂) in CC, CD, DC, DD.
    Differentiable, batched over leading dimensions of the logits, free of data-dependent control flow.
    """
    p1 = torch.sigmoid(logits1)
    p2 = torch.sigmoid(logits2)
    first1, first2 = p1[..., 0], p2[..., 0]
    # player 2's probability of cooperating in each joint state (CC, CD, DC, DD as player 1 names it)
    q1, q2 = p1[..., 1:], p2[..., 1:][..., _SWAP]

    def joint(a, b):
        return torch.stack([a * b, a * (1 - b), (1 - a) * b, (1 - a) * (1 - b)], -1)

    start = joint(first1, first2)                       # (..., 4)
    transition = joint(q1, q2)                          # (..., 4, 4): row = current state
    eye = torch.eye(4, dtype=start.dtype, device=start.device)
    # p₀ᵀ (I − γP)⁻¹ = xᵀ with (I − γP)ᵀ x = p₀
    occupancy = torch.linalg.solve((eye - gamma * transition).transpose(-1, -2), start.unsqueeze(-1)).squeeze(-1)
    rewards = occupancy @ payoffs.to(start.dtype)       # (..., 2)
    return rewards[..., 0], rewards[..., 1]


class IteratedPrisonersDilemma(Game):
    """Two memory-one players (5 logits each, ``Vector`` players ``player1``, ``player2``) that each
    maximize their exact discounted value (``ipd_values``) with discount ``gamma``.

    Default payoffs (rewards, player 1's first): CC (−1, −1), CD (−3, 0), DC (0, −3), DD (−2, −2).
    Always defecting against itself is worth −2/(1−γ), tit-for-tat against itself −1/(1−γ). Naive
    simultaneous gradient ascent from random policies mostly ends in mutual defection; reciprocity (a
    tit-for-tat-like equilibrium) is the other outcome (Foerster et al., 2018). Logits start from
    ``init_scale · N(0, 1)``. ``evaluate`` reports each value per step, (1−γ)·V (−1: mutual cooperation,
    −2: mutual defection), and the cooperation probabilities of each player in each state.

    A game of your own is as short: players, objectives, and which players maximize::

        class MatchingPennies(Game):
            maximize = {"x": False, "y": True}
            def build_players(self):
                return {"x": Vector(torch.randn(1)), "y": Vector(torch.randn(1))}
            def objectives(self, players, generator):
                p, q = torch.sigmoid(players["x"].weight), torch.sigmoid(players["y"].weight)
                value = ((2 * p - 1) * (2 * q - 1)).sum()
                return {"x": value, "y": value}
            def evaluate(self, players):
                return {"p_heads": torch.sigmoid(players["x"].weight).item()}
    """

    maximize = {"player1": True, "player2": True}

    def __init__(self, gamma: float = 0.96, payoffs: Sequence[Sequence[float]] = ((-1, -1), (-3, 0), (0, -3), (-2, -2)),
                 init_scale: float = 1.0, dtype: str = "float64"):
        require("task.gamma", gamma, is_finite_number(gamma) and 0 <= gamma < 1, "a number in [0, 1)")
        require("task.init_scale", init_scale, is_finite_number(init_scale) and init_scale >= 0, "a number >= 0")
        require("task.dtype", dtype, dtype in ("float32", "float64"), "float32 or float64")
        shape_ok = len(payoffs) == 4 and all(len(row) == 2 and all(is_finite_number(v) for v in row) for row in payoffs)
        require("task.payoffs", [list(row) for row in payoffs], shape_ok,
                "four pairs of finite rewards (player 1, player 2) for CC, CD, DC, DD")
        self.gamma, self.init_scale = float(gamma), float(init_scale)
        self.dtype = getattr(torch, dtype)
        self.payoffs = torch.tensor([list(row) for row in payoffs], dtype=self.dtype)

    def build_players(self) -> dict[str, nn.Module]:
        return {name: Vector(self.init_scale * torch.randn(5, dtype=self.dtype)) for name in ("player1", "player2")}

    def values(self, players: Mapping[str, nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
        """(V₁, V₂), the players' exact discounted values."""
        return ipd_values(players["player1"].weight, players["player2"].weight, self.gamma, self.payoffs)

    def objectives(self, players, generator):
        first, second = self.values(players)
        return {"player1": first, "player2": second}

    def meta_loss(self, players) -> torch.Tensor:
        """Minus the players' mean reward per step, −(1−γ)(V₁ + V₂)/2 (1: mutual cooperation)."""
        first, second = self.values(players)
        return -(1 - self.gamma) * (first + second) / 2

    def strategy(self, players) -> torch.Tensor:
        """Both players' cooperation probabilities (first move, CC, CD, DC, DD), 10 numbers in [0, 1]."""
        return torch.cat([torch.sigmoid(players[name].weight) for name in ("player1", "player2")])

    @torch.no_grad()
    def evaluate(self, players) -> dict[str, float]:
        first, second = self.values(players)
        metrics = {"player1_value": (1 - self.gamma) * first.item(), "player2_value": (1 - self.gamma) * second.item()}
        for name in ("player1", "player2"):
            probabilities = torch.sigmoid(players[name].weight)
            for label, p in zip(("start", *STATES), probabilities):
                metrics[f"{name}_p_cooperate_{label}"] = p.item()
        return metrics

    def plots(self, players, folder: Path) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        metrics = self.evaluate(players)
        fig, ax = plt.subplots(figsize=(5, 3))
        labels = ["start", *STATES]
        for offset, name in ((-0.2, "player1"), (0.2, "player2")):
            ax.bar([i + offset for i in range(5)], [metrics[f"{name}_p_cooperate_{s}"] for s in labels], 0.4,
                   label=f"{name} ({metrics[f'{name}_value']:.2f}/step)")
        ax.set_xticks(range(5), labels)
        ax.set_ylabel("P(cooperate)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(folder) / "ipd_policies.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return [path]
