"""The outer parameters θ of an unrolled problem that tunes an optimizer: which hyperparameters, their
unconstrained parameterisation (from the optimizer's spec), schedules and per-layer values."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from metaopt.checks import require
from metaopt.optim.specs import SPECS, OptimizerSpec, factory_kwargs, spec_for
from metaopt.tasks.unrolled.problem import ParticleState, UnrolledProblem, where_particles

__all__ = ["TunedHyperparameters", "TunedRun", "optimizer_spec", "SCHEDULES"]

SCHEDULES = ("constant", "linear")


def optimizer_spec(optimizer: Any, use: str) -> tuple[OptimizerSpec, dict[str, Any]]:
    """The spec of ``optimizer`` (a factory such as ``instantiate(cfg.optimizer)``, a class or a spec name)
    and the functional keyword arguments its factory carries; a clear error when it has no functional core."""
    spec = spec_for(optimizer)
    target = getattr(optimizer, "func", optimizer)
    shown = target if isinstance(target, str) else getattr(target, "__name__", repr(target))
    if spec is None:
        known = ", ".join(s.optimizer.__name__ for s in SPECS.values())
        raise ValueError(f"invalid optimizer: {shown!r} ({use} needs an optimizer with a functional core, one "
                         f"of {known}; declare yours with metaopt.optim.specs.register)")
    return spec, spec.functional_kwargs(factory_kwargs(optimizer))


def _default(spec: OptimizerSpec, key: str) -> Any:
    """The value of ``key`` when the optimizer config gives none: the class's default (torch's SGD: lr
    1e-3; Adam's betas (0.9, 0.999) → beta1 0.9), else the functional core's."""
    if key in spec.class_defaults:
        return spec.class_defaults[key]
    try:
        defaults = {k: p.default for k, p in inspect.signature(spec.optimizer).parameters.items()
                    if p.default is not inspect.Parameter.empty}
    except (TypeError, ValueError):
        defaults = {}
    for pair, names in spec.pairs.items():
        if pair in defaults and key in names:
            return defaults[pair][names.index(key)]
    if key in defaults:
        return defaults[key]
    parameter = inspect.signature(spec.functional.update).parameters.get(key)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


class TunedHyperparameters:
    """θ for the hyperparameters ``tuned`` of an optimizer, one coordinate per (name, layer, phase).

    ``tuned``: ``None`` (the optimizer's natural knobs, ``spec.natural``: lr, plus momentum for SGD,
    beta1 for Adam/AdamW, momentum and angle for complex momentum, …), a list of names, or a mapping
    from names to initial values (``None``: from the optimizer's arguments). Initial values come from
    ``optimizer_kwargs`` (the optimizer config) unless given, else from the functional core's default; a
    value on the boundary of its parameterisation starts just inside it (``Hyperparameter.interior``).
    Every other argument of the optimizer stays fixed; a key both tuned and in ``fixed`` is an error.

    ``schedule="linear"``: ``lr_t = e^{θ_start}(T−t)/T + e^{θ_end}t/T`` (the PES paper's schedule), two
    coordinates for lr. Names in ``per_layer`` get one coordinate per layer: ``layers`` names the
    groups of tensors, ``layer_of_tensor`` gives each tensor's group. θ has ``dtype`` (the inner
    problem's: a float64 game is tuned in float64).
    """

    def __init__(self, spec: OptimizerSpec, optimizer_kwargs: Mapping[str, Any],
                 tuned: Sequence[str] | Mapping[str, float | None] | None, schedule: str = "constant",
                 per_layer: Sequence[str] = (), layers: Sequence[str] = ("all",),
                 layer_of_tensor: Sequence[int] = (), horizon: int = 1, fixed: Mapping[str, Any] | None = None,
                 prefix: str = "outer.problem", dtype: torch.dtype = torch.float32):
        if tuned is None:
            tuned = list(spec.natural)
        if isinstance(tuned, str):
            tuned = [tuned]
        if not isinstance(tuned, Mapping):
            tuned = {name: None for name in tuned}
        tuned = dict(tuned)
        require(f"{prefix}.tuned", sorted(tuned), len(tuned) > 0 and all(k in spec.tunable for k in tuned),
                f"names among the hyperparameters {spec.optimizer.__name__} lets an outer loop tune: "
                f"{spec.tunable}")
        fixed = dict(fixed or {})
        both = sorted(set(tuned) & set(fixed))
        require(f"{prefix}.fixed", both, not both,
                "keys that are not also tuned (a hyperparameter is either tuned or fixed, not both)")
        spec.check(fixed, f"{prefix}.fixed")
        unknown = sorted(set(fixed) - {*spec.hyperparameters, *spec.flags, *spec.constants})
        require(f"{prefix}.fixed", unknown, not unknown,
                f"arguments of {spec.optimizer.__name__}: {sorted([*spec.hyperparameters, *spec.flags])}")
        require(f"{prefix}.schedule", schedule, schedule in SCHEDULES, f"one of {SCHEDULES}")
        require(f"{prefix}.per_layer", list(per_layer), all(k in tuned for k in per_layer),
                f"names among the tuned ones, {sorted(tuned)}")
        initial = {}
        for key, value in tuned.items():
            if value is None:
                value = optimizer_kwargs.get(key, _default(spec, key))
            require(f"{prefix}.tuned.{key}", value, value is not None,
                    f"an initial value (the optimizer config sets none and {spec.name} has no default)")
            spec.hyperparameters[key].check(f"{prefix}.tuned.{key}", value)
            initial[key] = float(value)

        self.spec = spec
        self.fixed = {**{k: v for k, v in optimizer_kwargs.items() if k not in tuned}, **fixed}
        self.schedule = schedule
        self.horizon = horizon
        self.layer_of_tensor = list(layer_of_tensor)
        self.entries: list[tuple[str, int | None, str | None]] = []
        theta0, names, labels = [], [], []
        for key, value in initial.items():
            hyper = spec.hyperparameters[key]
            phases = ("start", "end") if key == "lr" and schedule == "linear" else (None,)
            for layer in (range(len(layers)) if key in per_layer else (None,)):
                for phase in phases:
                    self.entries.append((key, layer, phase))
                    theta0.append(hyper.to_unconstrained(value))
                    label = key + (f"_{phase}" if phase else "") + (f".{layers[layer]}" if layer is not None else "")
                    labels.append(label)
                    names.append(f"{hyper.transform}_{label}" if hyper.transform != "identity" else label)
        self.theta0 = torch.tensor(theta0, dtype=dtype)
        self.names = names
        self.labels = labels

    @property
    def dim(self) -> int:
        return len(self.entries)

    def hyperparameters(self, theta: torch.Tensor, step: torch.Tensor) -> dict[str, Any]:
        """Constrained hyperparameters for rows ``theta`` (N, dim) at inner steps ``step`` (N,).

        Each value is an (N,) tensor, or a list with one (N,) tensor per parameter tensor (per layer).
        """
        frac = step.to(theta.dtype) / self.horizon
        values: dict[str, dict[int | None, torch.Tensor]] = {}
        for column, (key, layer, phase) in enumerate(self.entries):
            value = self.spec.hyperparameters[key].from_unconstrained(theta[:, column])
            if phase == "start":
                value = value * (1 - frac)
            elif phase == "end":
                value = value * frac
            per = values.setdefault(key, {})
            per[layer] = per[layer] + value if layer in per else value
        out: dict[str, Any] = {}
        for key, per in values.items():
            out[key] = per[None] if None in per else [per[layer] for layer in self.layer_of_tensor]
        return out

    def describe(self, theta: torch.Tensor) -> dict[str, float]:
        """The constrained value of every coordinate of θ (``lr_start``, ``momentum``, ``angle``, …)."""
        return {label: float(self.spec.hyperparameters[key].from_unconstrained(theta[column]))
                for column, (label, (key, _, _)) in enumerate(zip(self.labels, self.entries))}

    def theta_for(self, start: torch.Tensor, **values: float) -> torch.Tensor:
        """``start`` with every coordinate of each named hyperparameter set to a constrained value, e.g.
        ``lr=0.1, momentum=0.0``: a constant schedule, the same for every layer (a value on the
        boundary of a logit parameterisation moves 1e-6 inside it)."""
        tuned = {key for key, _, _ in self.entries}
        require("values", sorted(values), all(k in tuned for k in values), f"names among {sorted(tuned)}")
        theta = start.clone()
        for column, (key, _, _) in enumerate(self.entries):
            if key in values:
                theta[column] = self.spec.hyperparameters[key].to_unconstrained(float(values[key]), margin=1e-6)
        return theta


class TunedRun(UnrolledProblem):
    """An unrolled problem whose θ are an optimizer's hyperparameters (``self.tuning``): a whole training
    run (``TrainingRun``) or a whole game run (``GameRun``). Subclasses set ``tuning``, ``dim``,
    ``horizon``, ``device`` and define ``evaluate_many``."""

    tuning: TunedHyperparameters
    initial_params: tuple[torch.Tensor, ...]
    initial_opt: tuple[torch.Tensor, ...]
    """The inner optimizer's state at ``s_0``, flattened into tensors."""

    @property
    def dim(self) -> int:
        return self.tuning.dim

    @property
    def fixed(self) -> dict[str, Any]:
        """The optimizer's arguments that are not tuned."""
        return self.tuning.fixed

    def init_state(self, num_particles: int, steps: torch.Tensor | None = None) -> ParticleState:
        if steps is None:
            steps = torch.zeros(num_particles, dtype=torch.long, device=self.device)

        def stack(tensors):
            return [t.expand(num_particles, *t.shape).clone() for t in tensors]

        return {"step": steps.clone(), "params": stack(self.initial_params), "opt": stack(self.initial_opt)}

    def _advance(self, state: ParticleState, theta: torch.Tensor, num_steps: int,
                 step_function: Callable, reset: bool) -> tuple[ParticleState, torch.Tensor, torch.Tensor]:
        """``num_steps`` inner steps ``params, opt, meta_loss = step_function(params, opt, hyperparameters)``
        of every particle; with ``reset``, a particle at the end of its horizon restarts from ``s_0``."""
        step, params, opt = state["step"], tuple(state["params"]), tuple(state["opt"])
        fresh = {"params": list(self.initial_params), "opt": list(self.initial_opt)}
        losses, resets = [], []
        for _ in range(num_steps):
            params, opt, meta = step_function(params, opt, self.hyperparameters(theta, step))
            losses.append(meta)
            step = step + 1
            done = step >= self.horizon
            resets.append(done)
            if reset and bool(done.any()):
                restarted = where_particles(done, fresh, {"params": list(params), "opt": list(opt)})
                params, opt = tuple(restarted["params"]), tuple(restarted["opt"])
                step = torch.where(done, torch.zeros_like(step), step)
        state = {"step": step, "params": list(params), "opt": list(opt)}
        return state, torch.stack(losses), torch.stack(resets)

    @property
    def theta_names(self) -> list[str]:
        return list(self.tuning.names)

    def initial_theta(self) -> torch.Tensor:
        return self.tuning.theta0.to(self.device).clone()

    def hyperparameters(self, theta: torch.Tensor, step: torch.Tensor) -> dict[str, Any]:
        """Constrained hyperparameters for rows ``theta`` (N, dim) at inner steps ``step`` (N,)."""
        return self.tuning.hyperparameters(theta, step)

    def describe(self, theta: torch.Tensor) -> dict[str, float]:
        """The constrained value of every coordinate of θ (``lr_start``, ``momentum``, ``angle``, …)."""
        return self.tuning.describe(theta)

    def theta_for(self, **values: float) -> torch.Tensor:
        """θ with every coordinate of each named hyperparameter set to a constrained value (others from the
        start), e.g. ``theta_for(lr=0.1, momentum=0.0)``: a constant schedule, the same for every layer."""
        return self.tuning.theta_for(self.initial_theta(), **values)

    def evaluate_many(self, thetas: torch.Tensor, seed: int = 0) -> list[dict[str, float]]:
        """Run one inner problem per row of ``thetas`` (M, dim) from start to end; each one's metrics,
        ``meta_objective`` (the mean meta-loss over the run) first."""
        raise NotImplementedError

    def evaluate(self, theta: torch.Tensor) -> dict[str, float]:
        return self.evaluate_many(theta[None])[0]
