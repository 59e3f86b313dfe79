"""Pure RMSprop update (Hinton's lecture 6e; Graves, 2013, for ``centered``), with torch.optim.RMSprop's
conventions (ε outside the square root, momentum on the normalised gradient)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from metaopt.optim.functional._utils import Hyper, Tensors, apply_weight_decay, per_tensor, sqrt, step_count

__all__ = ["RMSpropState", "rmsprop_init", "rmsprop"]


class RMSpropState(NamedTuple):
    square_avg: Tensors
    grad_avg: Tensors
    """The running mean of the gradient (``centered``; zeros and unused otherwise)."""
    momentum_buffer: Tensors
    step: torch.Tensor


def rmsprop_init(params: Sequence[torch.Tensor]) -> RMSpropState:
    def zeros():
        return tuple(torch.zeros_like(p) for p in params)
    return RMSpropState(zeros(), zeros(), zeros(), step_count(params))


def rmsprop(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    state: RMSpropState,
    *,
    lr: Hyper,
    alpha: Hyper = 0.99,
    eps: Hyper = 1e-8,
    weight_decay: Hyper = 0.0,
    momentum: Hyper = 0.0,
    centered: bool = False,
    maximize: bool = False,
) -> tuple[Tensors, RMSpropState]:
    """``v ← αv + (1−α)g²``, ``d = g/(√(v − ḡ²) + ε)`` (``ḡ``: the running mean of g when ``centered``,
    else 0), ``b ← μb + d``, ``p ← p − lr·b`` (``p ← p − lr·d`` without momentum)."""
    grads = apply_weight_decay(params, grads, weight_decay, maximize)
    new_params, new_sq, new_avg, new_buf = [], [], [], []
    for i, (p, g, v, g_avg, buf) in enumerate(zip(params, grads, *state[:3])):
        a = per_tensor(alpha, i)
        v = a * v + (1 - a) * g * g
        if centered:
            g_avg = a * g_avg + (1 - a) * g
            avg = sqrt(v - g_avg * g_avg) + per_tensor(eps, i)
        else:
            avg = sqrt(v) + per_tensor(eps, i)
        mu = per_tensor(momentum, i)
        if isinstance(mu, (int, float)) and mu == 0:
            direction = g / avg
        else:
            buf = mu * buf + g / avg
            direction = buf
        new_params.append(p - per_tensor(lr, i) * direction)
        new_sq.append(v)
        new_avg.append(g_avg)
        new_buf.append(buf)
    return tuple(new_params), RMSpropState(tuple(new_sq), tuple(new_avg), tuple(new_buf), state.step + 1)
