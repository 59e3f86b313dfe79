"""The learning dynamics of a game as one map on a flat vector: the players' parameters and their
optimizer's state under the optimizer's functional core (``metaopt.optim.specs``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import jacfwd

from metaopt.checks import require
from metaopt.tasks.games.game import UPDATES, Game, mover_gradients, players_at
from metaopt.tasks.unrolled.tuning import optimizer_spec

__all__ = ["GameDynamics"]

# The state field of every metaopt functional core that counts steps (frozen in the map, see GameDynamics).
_COUNTER = "step"


class GameDynamics:
    r"""One round of play of ``game`` by its players, each with ``optimizer``'s functional core, as a map
    ``F: ω ↦ ω'`` on a flat tensor (the update map whose Lyapunov exponents
    :func:`~metaopt.games.lyapunov_exponents` measures, and whose start GRR optimises).

    **What ω is.** The state of the dynamics is whatever the next round depends on: ω = (θ, s), the
    players' parameters θ (every parameter that requires a gradient, player after player, in
    ``named_parameters`` order) followed by the optimizer's buffers s (for momentum the buffer μ, for
    complex momentum Re μ and Im μ, for Adam both moments): for an optimizer with state, F over θ alone
    is not a map at all. ω holds only the buffers the step updates: a buffer the core hands back
    untouched (the very tensor it was given: SGD's buffer
    without momentum, Adam's AMSGrad maximum without ``amsgrad``) is held fixed outside ω, so plain
    simultaneous GDA is the map on ω = θ alone.

    **Step counters** are not coordinates of ω: they are frozen at ``step`` (so that F is one fixed map).
    With a frozen counter past the first step, SGD's first-step buffer seeding and the dampening rule
    never apply, and Adam's bias corrections are those of step ``step + 1`` (the default, a large
    number, makes them 1: the map of Adam's long-run regime).

    **Stochastic games** (``game.objectives`` draws from its generator): ``update`` draws from a generator
    seeded with ``seed`` at every call, so F is one deterministic map (the game on one fixed draw);
    :meth:`play` takes a generator and draws fresh data, as training does.

    ``optimizer`` is an optimizer factory (``functools.partial(torch.optim.SGD, lr=0.1)``, a Hydra
    ``_partial_`` config), a class, or a spec name; it needs a functional core (every optimizer of
    ``metaopt.optim.specs``). A maximizing player (``game.maximize``) steps with ``maximize=True``.
    ``updates`` is ``simultaneous`` or ``alternating`` as in ``game_step``.
    """

    def __init__(self, game: Game, optimizer: Any = "sgd", players: Mapping[str, nn.Module] | None = None,
                 updates: str = "simultaneous", step: int = 1_000_000, seed: int = 0):
        require("game", type(game).__name__, isinstance(game, Game), "a metaopt.tasks.games.Game")
        self.spec, kwargs = optimizer_spec(optimizer, "the learning dynamics of a game (Lyapunov exponents, GRR)")
        kwargs.pop("maximize", None)  # set per player by the game
        require("updates", updates, updates in UPDATES, " or ".join(UPDATES))
        require("step", step, isinstance(step, int) and not isinstance(step, bool) and step >= 1,
                "an integer >= 1 (the frozen step counter: past the first step)")
        self.game, self.updates, self.frozen_step, self.seed = game, updates, step, seed
        self.hyperparameters = kwargs
        self.players = dict(players) if players is not None else game.build_players()
        self.player_names = list(self.players)
        missing = [name for name in game.maximize if name not in self.players]
        require("players", self.player_names, not missing, f"the game's players {list(game.maximize)}")
        self._names: dict[str, list[str]] = {}
        self._shapes: list[torch.Size] = []
        self._slices: dict[str, slice] = {}
        initial: list[torch.Tensor] = []
        for name, player in self.players.items():
            named = [(k, p) for k, p in player.named_parameters() if p.requires_grad]
            self._names[name] = [k for k, _ in named]
            self._slices[name] = slice(len(initial), len(initial) + len(named))
            initial += [p.detach().clone() for _, p in named]
        require("game", type(game).__name__, len(initial) > 0,
                "a game whose players have parameters that require gradients (the dynamics differentiate "
                "each player's objective with respect to them)")
        self._shapes = [p.shape for p in initial]
        self.dtype, self.device = initial[0].dtype, initial[0].device
        self.num_params = sum(p.numel() for p in initial)
        self.initial_params = self.flatten_params(initial)
        # The layout of the optimizer's state: per player, the fields the step reads or writes (a field
        # returned as the very tensors it was given is a constant the step passes through).
        self._state_types = {}
        self._buffer_shapes: list[torch.Size] = []
        for name in self.player_names:
            own = initial[self._slices[name]]
            state = self.spec.init(own, self.hyperparameters)
            state = state._replace(**{_COUNTER: torch.ones_like(getattr(state, _COUNTER))})
            _, stepped = self.spec.update(own, own, state, **self.hyperparameters)
            self._constant_fields = {f for f in state._fields if f != _COUNTER and all(
                a is b for a, b in zip(getattr(state, f), getattr(stepped, f)))}
            self._state_types[name] = self.spec.init(own, self.hyperparameters)
            for tensors in self._buffer_fields(state):
                self._buffer_shapes += [t.shape for t in tensors]
        self.size = self.num_params + sum(s.numel() for s in self._buffer_shapes)

    # -- layout -------------------------------------------------------------------------------------
    def _buffer_fields(self, state) -> list[Sequence[torch.Tensor]]:
        return [getattr(state, f) for f in state._fields if f != _COUNTER and f not in self._constant_fields]

    def flatten_params(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """The players' parameter tensors as one flat θ."""
        return torch.cat([p.reshape(-1) for p in params])

    def unflatten_params(self, theta: torch.Tensor) -> list[torch.Tensor]:
        """θ as the players' parameter tensors (views of ``theta``)."""
        sizes = [s.numel() for s in self._shapes]
        return [chunk.view(shape) for chunk, shape in zip(torch.split(theta, sizes), self._shapes)]

    def initial_state(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """ω = (θ, fresh optimizer buffers): ``theta`` (default: the players' current parameters)."""
        theta = self.initial_params if theta is None else theta
        params = self.unflatten_params(theta)
        states = [self.spec.init(params[self._slices[n]], self.hyperparameters) for n in self.player_names]
        return self.join(params, states)

    def params(self, omega: torch.Tensor) -> torch.Tensor:
        """θ, the parameters part of ω."""
        return omega[: self.num_params]

    def join(self, params: Sequence[torch.Tensor], states: Sequence[Any]) -> torch.Tensor:
        """ω from parameter tensors and one optimizer state per player (counters left out)."""
        buffers = [t.reshape(-1) for state in states for tensors in self._buffer_fields(state) for t in tensors]
        return torch.cat([self.flatten_params(params), *buffers])

    def split(self, omega: torch.Tensor, step: torch.Tensor | int | None = None) -> tuple[list, list]:
        """ω as parameter tensors and one optimizer state per player, whose counter is ``step`` (default:
        the frozen one)."""
        require("omega", tuple(omega.shape), tuple(omega.shape) == (self.size,),
                f"a flat tensor of {self.size} numbers ({self.num_params} parameters and their optimizer state)")
        params = self.unflatten_params(omega[: self.num_params])
        sizes = [s.numel() for s in self._buffer_shapes]
        chunks = [c.view(s) for c, s in zip(torch.split(omega[self.num_params:], sizes), self._buffer_shapes)]
        step = self.frozen_step if step is None else step
        states, at = [], 0
        for name in self.player_names:
            template = self._state_types[name]
            fields = {}
            for field in template._fields:
                value = getattr(template, field)
                if field == _COUNTER:
                    fields[field] = torch.as_tensor(step, dtype=value.dtype, device=value.device)
                elif field in self._constant_fields:
                    fields[field] = value
                else:
                    fields[field] = tuple(chunks[at: at + len(value)])
                    at += len(value)
            states.append(type(template)(**fields))
        return params, states

    # -- the game -----------------------------------------------------------------------------------
    def players_at(self, theta: torch.Tensor | Sequence[torch.Tensor]) -> contextlib.AbstractContextManager:
        """The players with their parameters replaced by θ (a flat tensor or the parameter tensors)."""
        params = self.unflatten_params(theta) if isinstance(theta, torch.Tensor) else list(theta)
        return players_at(self.players, self._names, self._slices, params)

    def _gradients(self, params: Sequence[torch.Tensor], movers: list[str], generator) -> dict[str, tuple]:
        """Each mover's gradient of its own objective, all at ``params`` on one draw of the game's data."""
        return mover_gradients(self.game, self.players, self._names, self._slices, params, movers, generator)

    def play(self, params: Sequence[torch.Tensor], states: Sequence[Any],
             generator: torch.Generator) -> tuple[list, list]:
        """One round: every player steps with the functional core (``updates`` order); returns the new
        parameter tensors and optimizer states (counters advanced)."""
        params, states = list(params), list(states)
        rounds = [self.player_names] if self.updates == "simultaneous" else [[n] for n in self.player_names]
        for movers in rounds:
            grads = self._gradients(params, movers, generator)
            for name in movers:
                where, index = self._slices[name], self.player_names.index(name)
                new, states[index] = self.spec.update(params[where], grads[name], states[index],
                                                      maximize=self.game.maximize[name], **self.hyperparameters)
                params[where] = list(new)
        return params, states

    def update(self, omega: torch.Tensor) -> torch.Tensor:
        """F(ω): one round from ω with the counters frozen and the fixed draw ``seed``."""
        params, states = self.split(omega)
        params, states = self.play(params, states, torch.Generator(self.device).manual_seed(self.seed))
        return self.join(params, states)

    def vector_field(self, theta: torch.Tensor) -> torch.Tensor:
        """The joint vector field ĝ(θ) = (±∇_{θ_i} L_i)_i of the players (a maximizing player's gradient
        negated: gradient play steps along −ĝ), on the fixed draw ``seed``, flat."""
        params = self.unflatten_params(theta)
        grads = self._gradients(params, self.player_names, torch.Generator(self.device).manual_seed(self.seed))
        flat = [(-g if self.game.maximize[name] else g).reshape(-1)
                for name in self.player_names for g in grads[name]]
        return torch.cat(flat)

    def jacobian(self, theta: torch.Tensor) -> torch.Tensor:
        """The game Jacobian ∂ĝ/∂θ (dense, num_params × num_params: for small games)."""
        return jacfwd(self.vector_field, randomness="same")(theta)

    @torch.no_grad()
    def objectives(self, theta: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """Every player's objective at θ (one draw from ``generator``)."""
        with self.players_at(theta) as players:
            return {name: float(value) for name, value in self.game.objectives(players, generator).items()}

    def evaluate(self, theta: torch.Tensor, metric: Callable | None = None) -> Any:
        """``game.evaluate`` (or ``metric(game, players)``) with the players at θ."""
        with torch.no_grad(), self.players_at(theta) as players:
            return self.game.evaluate(players) if metric is None else metric(self.game, players)
