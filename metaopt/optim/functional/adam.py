"""Pure Adam and AdamW updates (Kingma & Ba, 2015, Algorithm 1; Loshchilov & Hutter, 2019), with
torch.optim.Adam's conventions (``amsgrad``, coupled or decoupled weight decay, ``maximize``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from metaopt.optim.functional._utils import Hyper, Tensors, apply_weight_decay, per_tensor, sqrt, step_count

__all__ = ["AdamState", "adam_init", "adam"]


class AdamState(NamedTuple):
    exp_avg: Tensors
    exp_avg_sq: Tensors
    max_exp_avg_sq: Tensors
    """The running maximum of ``exp_avg_sq`` (AMSGrad; zeros and unused otherwise)."""
    step: torch.Tensor


def adam_init(params: Sequence[torch.Tensor]) -> AdamState:
    # The step count is float64 so that bias corrections are as exact as torch's Python floats.
    def zeros():
        return tuple(torch.zeros_like(p) for p in params)
    return AdamState(zeros(), zeros(), zeros(), step_count(params))


def adam(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    state: AdamState,
    *,
    lr: Hyper,
    beta1: Hyper = 0.9,
    beta2: Hyper = 0.999,
    eps: Hyper = 1e-8,
    weight_decay: Hyper = 0.0,
    amsgrad: bool = False,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
) -> tuple[Tensors, AdamState]:
    """``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``, ``p ← p − lr·m̂/(√v̂ + ε)`` with bias correction.

    ``amsgrad`` divides by the running maximum of ``v`` (Reddi et al., 2018); ``decoupled_weight_decay``
    is AdamW's ``p ← p(1 − lr·wd)`` before the step instead of adding ``wd·p`` to the gradient.
    """
    if decoupled_weight_decay:
        grads = apply_weight_decay(params, grads, 0.0, maximize)
        params = [_decay(p, per_tensor(lr, i), per_tensor(weight_decay, i)) for i, p in enumerate(params)]
    else:
        grads = apply_weight_decay(params, grads, weight_decay, maximize)
    step = state.step + 1
    new_params, new_m, new_v, new_max = [], [], [], []
    for i, (p, g, m, v, v_max) in enumerate(zip(params, grads, *state[:3])):
        b1, b2 = per_tensor(beta1, i), per_tensor(beta2, i)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        # Same order of operations as torch.optim.Adam, so trajectories agree to rounding.
        bias1 = 1 - b1**step
        bias2_sqrt = (1 - b2**step) ** 0.5
        if amsgrad:
            v_max = torch.maximum(v_max, v)
        denom = sqrt(v_max if amsgrad else v) / bias2_sqrt + per_tensor(eps, i)
        new_params.append(p - (per_tensor(lr, i) / bias1) * m / denom)
        new_m.append(m)
        new_v.append(v)
        new_max.append(v_max)
    return tuple(new_params), AdamState(tuple(new_m), tuple(new_v), tuple(new_max), step)


def _decay(param: torch.Tensor, lr: float | torch.Tensor, weight_decay: float | torch.Tensor) -> torch.Tensor:
    if isinstance(weight_decay, (int, float)) and weight_decay == 0:
        return param
    return param * (1 - lr * weight_decay)
