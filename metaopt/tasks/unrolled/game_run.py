"""A whole game run as an unrolled inner problem whose outer parameters are the players' optimizer
hyperparameters (learning rate, momentum, the angle of complex momentum, …)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.func import vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from metaopt.checks import require
from metaopt.tasks.games.game import UPDATES, Game, mover_gradients, players_at
from metaopt.tasks.unrolled.tuning import TunedHyperparameters, TunedRun, optimizer_spec

__all__ = ["GameRun"]


class GameRun(TunedRun):
    """The players of ``game`` play ``horizon`` rounds, every player with ``optimizer``'s functional core
    (a maximizing player with ``maximize=True``), under hyperparameters θ shared by the players (one per
    player for the names in ``per_layer``); see ``TunedHyperparameters`` for ``tuned``, ``schedule`` and
    ``fixed``. Every particle starts from the same players (initialised with ``init_seed``).

    The meta-loss of a round is ``game.meta_loss`` after the players moved (the bilinear game: the log
    distance to the equilibrium, whose mean over a run measures the convergence rate; the GAN: the
    generator's mixture fit). ``updates`` is ``simultaneous`` (every gradient at the same strategies) or
    ``alternating`` (each player's gradient recomputed after the previous ones moved), as ``game_step``.
    All particles play at once (``torch.func.vmap`` over the players' parameters); a stochastic game's
    draws (``game.objectives(players, generator)``) are the same for every particle at a round (common
    random numbers), so the estimators compare settings on the same data.
    """

    def __init__(self, game: Game, optimizer: str | Callable = "complex_momentum",
                 tuned: Sequence[str] | Mapping[str, float | None] | None = None, schedule: str = "constant",
                 per_layer: Sequence[str] = (), fixed: Mapping[str, Any] | None = None, horizon: int = 200,
                 updates: str = "simultaneous", init_seed: int = 0):
        require("task", type(game).__name__, isinstance(game, Game), "a metaopt.tasks.games.Game")
        spec, optimizer_kwargs = optimizer_spec(optimizer, "a GameRun (ES/TBPTT outer loops on a game)")
        require("horizon", horizon, isinstance(horizon, int) and horizon > 0, "a positive integer")
        require("outer.updates", updates, updates in UPDATES, " or ".join(UPDATES))
        optimizer_kwargs.pop("maximize", None)  # set per player by the game
        self.game = game
        self.spec = spec
        self.horizon = horizon
        self.updates = updates
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.players = game.build_players()
        for player in self.players.values():
            player.requires_grad_(False)
        self.player_names = list(self.players)
        self._names = {n: [k for k, _ in p.named_parameters()] for n, p in self.players.items()}
        self._slices: dict[str, slice] = {}
        params: list[torch.Tensor] = []
        for name, player in self.players.items():
            tensors = [p.detach().clone() for p in player.parameters()]
            self._slices[name] = slice(len(params), len(params) + len(tensors))
            params += tensors
        self.initial_params = tuple(params)
        self.device = params[0].device
        layer_of_tensor = [i for i, name in enumerate(self.player_names)
                           for _ in range(self._slices[name].stop - self._slices[name].start)]
        self.tuning = TunedHyperparameters(spec, optimizer_kwargs, tuned, schedule, per_layer, self.player_names,
                                           layer_of_tensor, horizon, fixed, dtype=self.initial_params[0].dtype)
        initial_opt = tuple(spec.init(self.initial_params[self._slices[n]], self.fixed) for n in self.player_names)
        leaves, self._opt_spec = tree_flatten(initial_opt)
        self.initial_opt = tuple(leaves)
        self._step = vmap(self._step_one, in_dims=(0, 0, 0, None), randomness="same")

    # -- dynamics --------------------------------------------------------------------------------
    def _playing(self, params: Sequence[torch.Tensor]):
        """The players with their parameters replaced by ``params`` (all players' tensors, in order)."""
        return players_at(self.players, self._names, self._slices, params)

    def _gradients(self, params: tuple, movers: list[str], generator) -> dict[str, tuple]:
        return mover_gradients(self.game, self.players, self._names, self._slices, params, movers, generator)

    def _step_one(self, params, opt_leaves, hyper, generator):
        states = list(tree_unflatten(list(opt_leaves), self._opt_spec))
        params = tuple(params)
        rounds = [self.player_names] if self.updates == "simultaneous" else [[n] for n in self.player_names]
        for movers in rounds:
            grads = self._gradients(params, movers, generator)
            params = list(params)
            for name in movers:
                where = self._slices[name]
                index = self.player_names.index(name)
                own_hyper = {k: (v[where] if isinstance(v, list) else v) for k, v in hyper.items()}
                new, states[index] = self.spec.update(params[where], grads[name], states[index],
                                                      maximize=self.game.maximize[name], **self.fixed, **own_hyper)
                params[where] = list(new)
            params = tuple(params)
        with self._playing(params) as players:
            meta = self.game.meta_loss(players)
        return params, tuple(tree_flatten(tuple(states))[0]), meta

    def _unroll(self, state, theta, num_steps, generator, streams, num_streams):
        return self._run(state, theta, num_steps, generator, reset=True)

    def _run(self, state, theta, num_steps, generator, reset):
        return self._advance(state, theta, num_steps,
                             lambda params, opt, hyper: self._step(params, opt, hyper, generator), reset)

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_many(self, thetas: torch.Tensor, seed: int = 0) -> list[dict[str, float]]:
        """Play one whole game per row of ``thetas`` (M, dim), all on the same draws; each one's
        ``meta_objective`` (mean meta-loss over the run) and the game's metrics at the end."""
        generator = torch.Generator().manual_seed(seed)
        num = thetas.shape[0]
        state, losses, _ = self._run(self.init_state(num), thetas.to(self.device), self.horizon, generator,
                                     reset=False)
        results = []
        for i in range(num):
            with self._playing([p[i] for p in state["params"]]) as players:
                metrics = self.game.evaluate(players)
            results.append({"meta_objective": float(losses[:, i].mean()), **metrics})
        return results
