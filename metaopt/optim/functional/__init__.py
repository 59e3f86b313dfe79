"""Pure, differentiable, vmap-able optimizer updates: ``new_params, new_state = rule(params, grads, state, ...)``.

Inputs are never mutated, hyperparameters may be floats, 0-d tensors (with gradients, or batched by
``torch.func.vmap`` for per-particle values) or per-tensor sequences. Outer loops (ES, bilevel) train
inner models with these; the stateful optimizers of ``metaopt.optim`` are tested against them.
"""

from metaopt.optim.functional.adam import AdamState, adam, adam_init
from metaopt.optim.functional.sgd import SGDState, sgd, sgd_init

__all__ = ["SGDState", "sgd", "sgd_init", "AdamState", "adam", "adam_init"]
