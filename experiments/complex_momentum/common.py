"""Shared pieces of the complex-momentum experiments: playing a quadratic game, writing tables."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from metaopt.games import measured_rate
from metaopt.optim import ComplexMomentum
from metaopt.runner import report
from metaopt.tasks import QuadraticGame, game_step

FOLDER = Path(__file__).resolve().parent


def play(game: QuadraticGame, lr: float, momentum: float, angle: float, steps: int, seed: int = 0,
         updates: str = "simultaneous") -> list[float]:
    """Distances to the equilibrium after each round of complex momentum (stopping outside 1e±100)."""
    torch.manual_seed(seed)
    players = game.build_players()
    optimizers = {name: ComplexMomentum(p.parameters(), lr=lr, momentum=momentum, angle=angle,
                                        maximize=game.maximize[name]) for name, p in players.items()}
    distances = [game.evaluate(players)["distance"]]
    for _ in range(steps):
        game_step(game, players, optimizers, torch.Generator(), updates)
        distances.append(game.evaluate(players)["distance"])
        if not 1e-100 < distances[-1] < 1e100:
            break
    return distances


def rate_of(distances: list[float]) -> float:
    """The measured linear rate of a run (over its second half)."""
    return measured_rate(distances) if all(d > 0 and math.isfinite(d) for d in distances) else math.inf


# Four decimals: spectral radii on either side of 1 differ by about 1e-4.
markdown_table = functools.partial(report.markdown_table, float_format="{:.4f}")
