"""Pure Adam update (Kingma & Ba, 2015, Algorithm 1), with torch.optim.Adam's conventions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from metaopt.optim.functional._utils import Hyper, Tensors, apply_weight_decay, per_tensor, step_count

__all__ = ["AdamState", "adam_init", "adam"]


class AdamState(NamedTuple):
    exp_avg: Tensors
    exp_avg_sq: Tensors
    step: torch.Tensor


def adam_init(params: Sequence[torch.Tensor]) -> AdamState:
    # The step count is float64 so that bias corrections are as exact as torch's Python floats.
    zeros = tuple(torch.zeros_like(p) for p in params)
    return AdamState(zeros, tuple(torch.zeros_like(p) for p in params), step_count(params))


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
    maximize: bool = False,
) -> tuple[Tensors, AdamState]:
    """``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``, ``p ← p − lr·m̂/(√v̂ + ε)`` with bias correction."""
    grads = apply_weight_decay(params, grads, weight_decay, maximize)
    step = state.step + 1
    new_params, new_m, new_v = [], [], []
    for i, (p, g, m, v) in enumerate(zip(params, grads, state.exp_avg, state.exp_avg_sq)):
        b1, b2 = per_tensor(beta1, i), per_tensor(beta2, i)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        # Same order of operations as torch.optim.Adam, so trajectories agree to rounding.
        bias1 = 1 - b1**step
        bias2_sqrt = (1 - b2**step) ** 0.5
        denom = v.sqrt() / bias2_sqrt + per_tensor(eps, i)
        new_params.append(p - (per_tensor(lr, i) / bias1) * m / denom)
        new_m.append(m)
        new_v.append(v)
    return tuple(new_params), AdamState(tuple(new_m), tuple(new_v), step)
