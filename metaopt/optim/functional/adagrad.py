"""Pure Adagrad update (Duchi, Hazan & Singer, 2011), with torch.optim.Adagrad's conventions
(learning-rate decay ``lr/(1 + (t−1)·lr_decay)``, ε outside the square root)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from metaopt.optim.functional._utils import Hyper, Tensors, apply_weight_decay, per_tensor, sqrt, step_count

__all__ = ["AdagradState", "adagrad_init", "adagrad"]


class AdagradState(NamedTuple):
    sum: Tensors
    step: torch.Tensor


def adagrad_init(params: Sequence[torch.Tensor], initial_accumulator_value: float = 0.0) -> AdagradState:
    return AdagradState(tuple(torch.full_like(p, initial_accumulator_value) for p in params), step_count(params))


def adagrad(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    state: AdagradState,
    *,
    lr: Hyper,
    lr_decay: Hyper = 0.0,
    weight_decay: Hyper = 0.0,
    eps: Hyper = 1e-10,
    maximize: bool = False,
) -> tuple[Tensors, AdagradState]:
    """``s ← s + g²``, ``p ← p − lr_t·g/(√s + ε)`` with ``lr_t = lr/(1 + (t−1)·lr_decay)``."""
    grads = apply_weight_decay(params, grads, weight_decay, maximize)
    step = state.step + 1
    new_params, new_sum = [], []
    for i, (p, g, s) in enumerate(zip(params, grads, state.sum)):
        s = s + g * g
        clr = per_tensor(lr, i) / (1 + (step - 1) * per_tensor(lr_decay, i))
        new_params.append(p - clr * g / (sqrt(s) + per_tensor(eps, i)))
        new_sum.append(s)
    return tuple(new_params), AdagradState(tuple(new_sum), step)
