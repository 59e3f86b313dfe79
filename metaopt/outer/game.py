"""``outer=game``: training the players of a game, the loop that ``metaopt.run`` drives for game tasks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from metaopt.checks import require
from metaopt.optim.apo.step import meta_learns
from metaopt.tasks.games.game import UPDATES, Game, game_step

__all__ = ["GameLoop"]


class GameLoop:
    """Play ``steps`` rounds of ``task`` (a :class:`~metaopt.games.Game`), each player with its optimizer.

    ``optimizer`` is the factory every player uses (a Hydra ``_partial_`` config, e.g. any
    ``torch.optim`` optimizer or :class:`~metaopt.optim.ComplexMomentum`); ``player_optimizers``
    overrides it per player name. Each is called as ``factory(params, maximize=game.maximize[name])``.
    """

    accepts = ("game",)

    @staticmethod
    def optimizer_refusal(optimizer: type, kind: str | None, outer: Any = None) -> str | None:
        if meta_learns(optimizer):
            return (f"outer=game with {optimizer.__name__}: its meta-step needs a supervised model and batches, "
                    "which a game has none of (play a game with complex_momentum, complex_adam, sgd, adam, …)")
        return None

    def __init__(self, task: Game, optimizer: Callable, steps: int = 1000, eval_every: int = 100,
                 updates: str = "simultaneous", player_optimizers: Mapping[str, Callable] | None = None,
                 generator: torch.Generator | None = None):
        require("outer.steps", steps, isinstance(steps, int) and steps > 0, "a positive integer")
        require("outer.eval_every", eval_every, isinstance(eval_every, int) and eval_every >= 0,
                "a non-negative integer (0: only at the end)")
        require("outer.updates", updates, updates in UPDATES, " or ".join(UPDATES))
        self.game = task
        self.num_steps = steps
        self.eval_every = eval_every
        self.updates = updates
        self.generator = generator if generator is not None else torch.Generator()
        self.players = task.build_players()
        factories = {name: optimizer for name in self.players}
        for name, factory in (player_optimizers or {}).items():
            require("outer.player_optimizers", name, name in self.players,
                    f"player names {list(self.players)}")
            factories[name] = factory
        self.optimizers = {name: factories[name](player.parameters(), maximize=task.maximize[name])
                           for name, player in self.players.items()}

    def step(self) -> dict[str, float]:
        return game_step(self.game, self.players, self.optimizers, self.generator, self.updates)

    def evaluate(self) -> dict[str, float]:
        return self.game.evaluate(self.players)

    def summary(self) -> dict[str, Any]:
        return self.evaluate()

    def state_dict(self) -> dict[str, Any]:
        return {
            "players": {name: player.state_dict() for name, player in self.players.items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, player in self.players.items():
            player.load_state_dict(state["players"][name])
            self.optimizers[name].load_state_dict(state["optimizers"][name])
        self.generator.set_state(state["generator"])

    def plots(self, folder: Path) -> list[Path]:
        return self.game.plots(self.players, folder)
