"""Pure, differentiable, vmap-able optimizer updates: ``new_params, new_state = rule(params, grads, state, ...)``.

Inputs are never mutated, hyperparameters may be floats, 0-d tensors (with gradients, or batched by
``torch.func.vmap`` for per-particle values) or per-tensor sequences. Outer loops (ES, bilevel) train
inner models with these, looked up by name in ``FUNCTIONAL``; the stateful optimizers of
``metaopt.optim`` are tested against them.
"""

import re
from collections.abc import Callable
from typing import Any, NamedTuple

from metaopt.checks import require
from metaopt.optim.functional.adam import AdamState, adam, adam_init
from metaopt.optim.functional.complex_adam import ComplexAdamState, complex_adam, complex_adam_init
from metaopt.optim.functional.complex_momentum import (
    ComplexMomentumState,
    complex_momentum,
    complex_momentum_init,
)
from metaopt.optim.functional.sgd import SGDState, sgd, sgd_init


class FunctionalOptimizer(NamedTuple):
    """``init(params) -> state`` and ``update(params, grads, state, **hyperparameters) -> (params, state)``."""

    init: Callable[..., Any]
    update: Callable[..., Any]


FUNCTIONAL: dict[str, FunctionalOptimizer] = {
    "sgd": FunctionalOptimizer(sgd_init, sgd),
    "adam": FunctionalOptimizer(adam_init, adam),
    "complex_momentum": FunctionalOptimizer(complex_momentum_init, complex_momentum),
    "complex_adam": FunctionalOptimizer(complex_adam_init, complex_adam),
}

# Keyword arguments of the stateful optimizers that choose an implementation, not the arithmetic.
_IMPLEMENTATION_FLAGS = ("foreach", "fused", "capturable", "differentiable")


def resolve(optimizer: str | Callable, name: str | None = None) -> tuple[str, dict[str, Any]]:
    """The ``FUNCTIONAL`` entry and fixed hyperparameters of an optimizer given by name or factory.

    A factory is what ``cfg.optimizer`` instantiates to (``functools.partial(torch.optim.SGD, lr=…)``,
    or a metaopt optimizer): its class name in snake case selects the functional core
    (``torch.optim.SGD`` → ``"sgd"``, ``torch.optim.Adam`` → ``"adam"``, ``ComplexMomentum`` →
    ``"complex_momentum"``) unless ``name`` is given; its keyword arguments become fixed
    hyperparameters (``betas`` is split into ``beta1``/``beta2``; implementation flags such as
    ``foreach`` and ``fused`` are dropped).
    """
    if isinstance(optimizer, str):
        name, keywords = name or optimizer, {}
    else:
        target = getattr(optimizer, "func", optimizer)
        if name is None:
            class_name = getattr(target, "__name__", str(target))
            name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", class_name).lower()
        keywords = dict(getattr(optimizer, "keywords", {}) or {})
    require("optimizer", name, name in FUNCTIONAL,
            f"an optimizer with a functional core, one of {sorted(FUNCTIONAL)} (metaopt.optim.functional)")
    fixed: dict[str, Any] = {}
    for key, value in keywords.items():
        if key in _IMPLEMENTATION_FLAGS:
            continue
        if key == "betas":
            fixed["beta1"], fixed["beta2"] = float(value[0]), float(value[1])
        else:
            fixed[key] = value
    return name, fixed


__all__ = ["FUNCTIONAL", "FunctionalOptimizer", "resolve", "SGDState", "sgd", "sgd_init", "AdamState", "adam",
           "adam_init", "ComplexMomentumState", "complex_momentum", "complex_momentum_init",
           "ComplexAdamState", "complex_adam", "complex_adam_init"]
