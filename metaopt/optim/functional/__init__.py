"""Pure, differentiable, vmap-able optimizer updates: ``new_params, new_state = rule(params, grads, state, ...)``.

Inputs are never mutated, hyperparameters may be floats, 0-d tensors (with gradients, or batched by
``torch.func.vmap`` for per-particle values) or per-tensor sequences. Outer loops (ES, bilevel) train
inner models with these, found through the optimizer specs (``metaopt.optim.specs.spec_for``, by
class); ``FUNCTIONAL`` lists them by name. The stateful optimizers are tested against them.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

from metaopt.optim.functional.adagrad import AdagradState, adagrad, adagrad_init
from metaopt.optim.functional.adam import AdamState, adam, adam_init
from metaopt.optim.functional.complex_adam import ComplexAdamState, complex_adam, complex_adam_init
from metaopt.optim.functional.complex_momentum import (
    ComplexMomentumState,
    complex_momentum,
    complex_momentum_init,
)
from metaopt.optim.functional.learned import LearnedState, learned, learned_init
from metaopt.optim.functional.rmsprop import RMSpropState, rmsprop, rmsprop_init
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
    "rmsprop": FunctionalOptimizer(rmsprop_init, rmsprop),
    "adagrad": FunctionalOptimizer(adagrad_init, adagrad),
    "learned": FunctionalOptimizer(learned_init, learned),
}

__all__ = ["FUNCTIONAL", "FunctionalOptimizer", "SGDState", "sgd", "sgd_init", "AdamState", "adam",
           "adam_init", "ComplexMomentumState", "complex_momentum", "complex_momentum_init",
           "ComplexAdamState", "complex_adam", "complex_adam_init", "RMSpropState", "rmsprop", "rmsprop_init",
           "AdagradState", "adagrad", "adagrad_init", "LearnedState", "learned", "learned_init"]
