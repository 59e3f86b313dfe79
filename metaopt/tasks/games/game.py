"""Differentiable games: several players, each minimizing (or maximizing) its own objective."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.func import vjp
from torch.nn.utils.stateless import _reparametrize_module

from metaopt.checks import require

__all__ = ["Game", "Vector", "game_step", "UPDATES", "players_at", "mover_gradients"]

UPDATES = ("simultaneous", "alternating")


class Vector(nn.Module):
    """A player whose strategy is one parameter vector ``weight``."""

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(init.clone())


class Game:
    """A game between named players (``nn.Module``s).

    Subclasses set ``maximize`` (player name → whether that player ascends its objective; the
    optimizer of such a player is built with ``maximize=True``, so the optimizers follow the joint
    vector field ĝ = (∇_x L_x, −∇_y f, …) of Lorraine et al., 2022, Section 2) and define
    ``build_players``, ``objectives`` and ``evaluate``; ``plots`` is optional.
    """

    maximize: dict[str, bool]

    def build_players(self) -> dict[str, nn.Module]:
        """New players (initialised from torch's global RNG)."""
        raise NotImplementedError

    def objectives(self, players: Mapping[str, nn.Module],
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Every player's objective at the current strategies (stochastic games draw from ``generator``)."""
        raise NotImplementedError

    def evaluate(self, players: Mapping[str, nn.Module]) -> dict[str, float]:
        raise NotImplementedError

    def meta_loss(self, players: Mapping[str, nn.Module]) -> torch.Tensor:
        """A scalar tensor, how far the players are from where an outer loop wants them (lower is better),
        for tuning the players' optimizers over whole game runs (``GameRun``). Differentiable and free of
        Python-side data-dependent control flow, so that it runs under ``torch.func.vmap``."""
        raise NotImplementedError(f"{type(self).__name__} defines no meta_loss, so no outer loop can tune the "
                                  "optimizers that play it (define Game.meta_loss)")

    def strategy(self, players: Mapping[str, nn.Module]) -> torch.Tensor:
        """A flat description of the players' strategies in which two solutions are compared (GRR
        deduplicates solutions by their distance here). Default: every parameter, player after player;
        games override it with something closer to behaviour (the IPD: cooperation probabilities)."""
        return torch.cat([p.detach().reshape(-1) for player in players.values() for p in player.parameters()])

    def plots(self, players: Mapping[str, nn.Module], folder: Path) -> list[Path]:
        return []


def game_step(game: Game, players: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer],
              generator: torch.Generator, updates: str = "simultaneous") -> dict[str, float]:
    """One round of play; returns ``{"<player>_objective": value}`` as seen by each player before it moved.

    ``simultaneous``: every gradient is taken at the same strategies, then all players move.
    ``alternating``: players move one after another in the order of ``players``, each gradient being
    recomputed after the previous players moved (Gidel et al., 2019; Lorraine et al., 2022, Section 2).
    """
    require("updates", updates, updates in UPDATES, " or ".join(UPDATES))
    rounds = [list(players)] if updates == "simultaneous" else [[name] for name in players]
    values = {}
    for movers in rounds:
        objectives = game.objectives(players, generator)
        for name in movers:
            params = [p for p in players[name].parameters() if p.requires_grad]
            grads = torch.autograd.grad(objectives[name], params, retain_graph=True, allow_unused=True)
            for p, g in zip(params, grads):
                p.grad = torch.zeros_like(p) if g is None else g
            values[f"{name}_objective"] = objectives[name].item()
        for name in movers:
            optimizers[name].step()
    return values


@contextlib.contextmanager
def players_at(players: Mapping[str, nn.Module], names: Mapping[str, Sequence[str]], slices: Mapping[str, slice],
               params: Sequence[torch.Tensor]) -> Iterator[Mapping[str, nn.Module]]:
    """The players with their parameters replaced by ``params`` (all players' tensors in order; player
    ``name`` holds ``params[slices[name]]`` under its parameter ``names[name]``), restored afterwards."""
    with contextlib.ExitStack() as stack:
        for name, player in players.items():
            stack.enter_context(_reparametrize_module(player, dict(zip(names[name], params[slices[name]]))))
        yield players


def mover_gradients(game: Game, players: Mapping[str, nn.Module], names: Mapping[str, Sequence[str]],
                    slices: Mapping[str, slice], params: Sequence[torch.Tensor], movers: Sequence[str],
                    generator: torch.Generator) -> dict[str, tuple]:
    """Every mover's gradient of its own objective at ``params``, as ``game_step`` takes them: one evaluation
    of the objectives (one draw of a stochastic game's data), one backward pass per mover (``torch.func.vjp``,
    so that it composes with ``vmap`` and higher-order derivatives)."""
    def objectives(*own):
        full = list(params)
        for name, values in zip(movers, own):
            full[slices[name]] = values
        with players_at(players, names, slices, full) as playing:
            values = game.objectives(playing, generator)
        return tuple(values[name] for name in movers)

    outputs, pullback = vjp(objectives, *(tuple(params[slices[name]]) for name in movers))
    grads = {}
    for i, name in enumerate(movers):
        cotangents = tuple(torch.ones_like(o) if j == i else torch.zeros_like(o) for j, o in enumerate(outputs))
        grads[name] = pullback(cotangents)[i]
    return grads
