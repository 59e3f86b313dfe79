"""What metaopt knows about each optimizer, declared once: its ``torch.optim`` class, its functional core,
and each hyperparameter's domain and unconstrained parameterisation.

Argument checks of the runner, the θ layout of the ES/TBPTT outer loops (``TrainingRun``, ``GameRun``),
the bilevel inner optimizer and the differentiable optimizers all read these specs. A spec is found by
class (``spec_for(torch.optim.AdamW)``, a ``functools.partial`` of it, an instance, or the spec's name),
never by mangling a class name. Adding an optimizer is one ``register(OptimizerSpec(...))``.

Parameterisations (what an outer loop perturbs or differentiates): ``log`` for positive scales (lr, ε,
weight decay), ``logit`` for decay rates in (0, 1) (momentum, betas, RMSprop's α), ``identity`` for
``angle``, the phase of complex momentum, which is periodic: every real number is a valid angle.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from metaopt.checks import is_finite_number
from metaopt.optim.functional import FUNCTIONAL, FunctionalOptimizer

__all__ = ["Hyperparameter", "OptimizerSpec", "SPECS", "register", "spec_for", "IMPLEMENTATION_FLAGS"]

# Keyword arguments of the stateful optimizers that choose an implementation, not the arithmetic.
IMPLEMENTATION_FLAGS = ("foreach", "fused", "capturable", "differentiable")
_TRANSFORMS = ("log", "logit", "identity")


@dataclass(frozen=True)
class Hyperparameter:
    """A real hyperparameter in ``[low, high]`` (``open_low``/``open_high`` exclude an end).

    ``transform`` maps the constrained value to the unconstrained θ an outer loop moves; ``None`` marks
    a hyperparameter that no outer loop tunes (e.g. Adagrad's initial accumulator, part of the state).
    """

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    transform: str | None = None

    def __post_init__(self):
        assert self.transform in (*_TRANSFORMS, None), self.transform

    @property
    def domain(self) -> str:
        if self.low == -math.inf and self.high == math.inf:
            return "a finite number"
        if self.high == math.inf:
            return f"a finite number {'>' if self.open_low else '>='} {self.low:g}"
        left = "(" if self.open_low else "["
        right = ")" if self.open_high else "]"
        return f"a number in {left}{self.low:g}, {self.high:g}{right}"

    def contains(self, value: Any) -> bool:
        if not is_finite_number(value):
            return False
        value = float(value)
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def check(self, name: str, value: Any) -> None:
        if not self.contains(value):
            raise ValueError(f"invalid {name}: {value!r} (allowed: {self.domain})")

    @property
    def tunable(self) -> bool:
        return self.transform is not None

    def interior(self, value: float, margin: float = 0.01) -> float:
        """``value`` moved inside the open domain of the transform: by default a momentum of 0 starts at
        0.01 (``margin``), a weight decay of 0 at 1e-8 (the unconstrained θ is finite only inside)."""
        if self.transform == "logit":
            return min(max(value, margin), 1 - margin)
        if self.transform == "log":
            return max(value, 1e-8)
        return value

    def to_unconstrained(self, value: float, margin: float = 0.01) -> float:
        value = self.interior(float(value), margin)
        if self.transform == "log":
            return math.log(value)
        if self.transform == "logit":
            return math.log(value / (1 - value))
        return value

    def from_unconstrained(self, theta: torch.Tensor) -> torch.Tensor:
        if self.transform == "log":
            return torch.exp(theta)
        if self.transform == "logit":
            return torch.sigmoid(theta)
        return theta


LR = Hyperparameter(low=0.0, transform="log")
SCALE = Hyperparameter(low=0.0, transform="log")              # weight decay, lr decay
EPS = Hyperparameter(low=0.0, open_low=True, transform="log")
DECAY = Hyperparameter(low=0.0, high=1.0, open_high=True, transform="logit")   # momentum, betas, alpha
DAMPENING = Hyperparameter(low=0.0, high=1.0, transform="logit")
ANGLE = Hyperparameter(transform="identity")
ACCUMULATOR = Hyperparameter(low=0.0)


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer, declared once.

    ``hyperparameters``: the functional core's real keyword arguments and their domains; ``flags``: its
    boolean options; ``natural``: the knobs an outer loop tunes by default; ``class_defaults``: the core's
    arguments whose value the class sets differently from the core (AdamW: ``decoupled_weight_decay=True``,
    ``weight_decay=0.01``), given unless the class's arguments say otherwise; ``init_args``: hyperparameters
    the core's ``init`` takes (state set up from them). ``pairs`` maps a torch argument holding several
    hyperparameters to their names (``betas`` → ``beta1``, ``beta2``). ``constants``: arguments passed to the
    core as they are, neither checked nor tuned (a learned optimizer's ``weights``); ``prepare`` maps the
    core's keyword arguments once more before use (a pretrained name to its weights).
    """

    name: str
    optimizer: type
    functional: FunctionalOptimizer
    hyperparameters: Mapping[str, Hyperparameter]
    flags: tuple[str, ...] = ("maximize",)
    natural: tuple[str, ...] = ("lr",)
    class_defaults: Mapping[str, Any] = field(default_factory=dict)
    init_args: tuple[str, ...] = ()
    pairs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    constants: tuple[str, ...] = ()
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    @property
    def tunable(self) -> list[str]:
        return [k for k, h in self.hyperparameters.items() if h.tunable]

    def functional_kwargs(self, kwargs: Mapping[str, Any], prefix: str = "optimizer") -> dict[str, Any]:
        """The functional core's keyword arguments for the class's keyword arguments ``kwargs``: pairs
        split, implementation flags dropped, values checked against their domains."""
        out: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in IMPLEMENTATION_FLAGS:
                continue
            if key in self.pairs:
                names = self.pairs[key]
                domains = [self.hyperparameters[n] for n in names]
                ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == len(names)
                ok = ok and all(d.contains(v) for d, v in zip(domains, value))
                if not ok:
                    shown = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
                    within = {d.domain.removeprefix("a number ").removeprefix("a finite number ") for d in domains}
                    count = {2: "two", 3: "three"}.get(len(names), str(len(names)))
                    raise ValueError(f"invalid {prefix}.{key}: {shown!r} (allowed: {count} numbers "
                                     f"{' / '.join(sorted(within))}: {', '.join(names)})")
                out.update(zip(names, list(value)))
            elif key in self.hyperparameters or key in self.flags or key in self.constants:
                out[key] = value
            else:
                flags = [f for f in IMPLEMENTATION_FLAGS if f in _parameters(self.optimizer)]
                allowed = sorted([*self.hyperparameters, *self.flags, *self.pairs, *self.constants, *flags])
                raise ValueError(f"invalid {prefix}.{key}: {value!r} ({self.optimizer.__name__} has no such "
                                 f"argument; allowed: {', '.join(allowed)})")
        self.check(out, prefix)
        out = {**self.class_defaults, **out}
        return self.prepare(out) if self.prepare is not None else out

    def check(self, kwargs: Mapping[str, Any], prefix: str = "optimizer") -> None:
        """Raise ``ValueError`` naming the first hyperparameter outside its domain."""
        for key, value in kwargs.items():
            name = f"{prefix}.{key}"
            if key in self.flags:
                if not isinstance(value, bool):
                    raise ValueError(f"invalid {name}: {value!r} (allowed: true or false)")
            elif key in self.hyperparameters:
                self.hyperparameters[key].check(name, value)

    def check_group(self, group: Mapping[str, Any]) -> None:
        """The class's own argument check (``Optimizer._validate``): every hyperparameter of a param group in
        its domain, named as the class names it (``momentum``, ``betas[0]``), flags ``True`` or ``False``."""
        for key, value in group.items():
            if key in self.pairs:
                names = self.pairs[key]
                if not (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == len(names)):
                    shape = "a pair" if len(names) == 2 else f"{len(names)} numbers"
                    raise ValueError(f"invalid {key}: {value!r} (allowed: {shape} ({', '.join(names)}))")
                for i, (name, component) in enumerate(zip(names, value)):
                    self.hyperparameters[name].check(f"{key}[{i}]", component)
            elif key in self.hyperparameters:
                self.hyperparameters[key].check(key, value)
            elif key in self.flags and not isinstance(value, bool):
                raise ValueError(f"invalid {key}: {value!r} (allowed: True or False)")

    def init(self, params, hyperparameters: Mapping[str, Any] | None = None):
        """The core's initial state for ``params`` (with the ``init_args`` among ``hyperparameters``)."""
        hyperparameters = hyperparameters or {}
        args = {k: hyperparameters[k] for k in self.init_args if k in hyperparameters}
        return self.functional.init(params, **args)

    def update(self, params, grads, state, **hyperparameters):
        if self.init_args:
            accepted = _parameters(self.functional.update)
            hyperparameters = {k: v for k, v in hyperparameters.items() if k in accepted}
        return self.functional.update(params, grads, state, **hyperparameters)


@functools.cache
def _parameters(function: Callable) -> frozenset[str]:
    return frozenset(inspect.signature(function).parameters)


SPECS: dict[type, OptimizerSpec] = {}


def register(spec: OptimizerSpec) -> OptimizerSpec:
    """Declare an optimizer (a user's own too): ``spec_for`` finds it by its class from then on."""
    SPECS[spec.optimizer] = spec
    return spec


def spec_for(optimizer: Any) -> OptimizerSpec | None:
    """The spec of an optimizer class, a ``functools.partial`` of one, an instance, or a spec name;
    ``None`` when metaopt has none (an optimizer without a functional core)."""
    if isinstance(optimizer, OptimizerSpec):
        return optimizer
    if isinstance(optimizer, str):
        return next((s for s in SPECS.values() if s.name == optimizer), None)
    target = getattr(optimizer, "func", optimizer)
    if not isinstance(target, type):
        target = type(target)
    return SPECS.get(target)


def factory_kwargs(optimizer: Any) -> dict[str, Any]:
    """The keyword arguments a ``functools.partial`` factory (``instantiate(cfg.optimizer)``) carries."""
    return dict(getattr(optimizer, "keywords", {}) or {})


def _specs() -> None:
    from metaopt.optim.complex_adam import ComplexAdam
    from metaopt.optim.complex_momentum import ComplexMomentum
    from metaopt.optim.learned import LearnedOptimizer, core_kwargs

    adam_hyper = {"lr": LR, "beta1": DECAY, "beta2": DECAY, "eps": EPS, "weight_decay": SCALE}
    adam_flags = ("amsgrad", "maximize")
    for spec in (
        OptimizerSpec("sgd", torch.optim.SGD, FUNCTIONAL["sgd"],
                      {"lr": LR, "momentum": DECAY, "dampening": DAMPENING, "weight_decay": SCALE},
                      flags=("nesterov", "maximize"), natural=("lr", "momentum")),
        OptimizerSpec("adam", torch.optim.Adam, FUNCTIONAL["adam"], adam_hyper,
                      flags=(*adam_flags, "decoupled_weight_decay"), natural=("lr", "beta1"),
                      pairs={"betas": ("beta1", "beta2")}),
        OptimizerSpec("adamw", torch.optim.AdamW, FUNCTIONAL["adam"], adam_hyper, flags=adam_flags,
                      natural=("lr", "beta1"), class_defaults={"decoupled_weight_decay": True, "weight_decay": 0.01},
                      pairs={"betas": ("beta1", "beta2")}),
        OptimizerSpec("rmsprop", torch.optim.RMSprop, FUNCTIONAL["rmsprop"],
                      {"lr": LR, "alpha": DECAY, "eps": EPS, "weight_decay": SCALE, "momentum": DECAY},
                      flags=("centered", "maximize"), natural=("lr", "alpha")),
        OptimizerSpec("adagrad", torch.optim.Adagrad, FUNCTIONAL["adagrad"],
                      {"lr": LR, "lr_decay": SCALE, "weight_decay": SCALE, "eps": EPS,
                       "initial_accumulator_value": ACCUMULATOR},
                      natural=("lr",), init_args=("initial_accumulator_value",)),
        OptimizerSpec("complex_momentum", ComplexMomentum, FUNCTIONAL["complex_momentum"],
                      {"lr": LR, "momentum": DECAY, "angle": ANGLE, "dampening": DAMPENING, "weight_decay": SCALE},
                      flags=("nesterov", "maximize"), natural=("lr", "momentum", "angle")),
        OptimizerSpec("complex_adam", ComplexAdam, FUNCTIONAL["complex_adam"],
                      {**adam_hyper, "angle": ANGLE}, flags=(*adam_flags, "decoupled_weight_decay"),
                      natural=("lr", "beta1", "angle"), pairs={"betas": ("beta1", "beta2")},
                      init_args=("amsgrad",)),
        OptimizerSpec("learned", LearnedOptimizer, FUNCTIONAL["learned"], {"lr": LR}, natural=("lr",),
                      constants=("weights", "hidden", "form", "timescales"), prepare=core_kwargs),
    ):
        register(spec)


_specs()
