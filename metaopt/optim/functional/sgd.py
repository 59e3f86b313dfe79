"""Pure SGD and SGD-with-momentum updates.

Same arithmetic as ``torch.optim.SGD`` (``dampening`` and ``nesterov`` included), written without
in-place mutation so that the update can run under ``torch.func.vmap`` with per-particle
hyperparameters and be differentiated with respect to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from metaopt.optim.functional._utils import Hyper, Tensors, apply_weight_decay, per_tensor, step_count

__all__ = ["SGDState", "sgd_init", "sgd"]


class SGDState(NamedTuple):
    """Momentum buffers (one per parameter) and the number of steps taken (a 0-d tensor)."""

    momentum_buffer: Tensors
    step: torch.Tensor


def sgd_init(params: Sequence[torch.Tensor]) -> SGDState:
    return SGDState(tuple(torch.zeros_like(p) for p in params), step_count(params))


def sgd(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    state: SGDState,
    *,
    lr: Hyper,
    momentum: Hyper = 0.0,
    dampening: Hyper = 0.0,
    weight_decay: Hyper = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
) -> tuple[Tensors, SGDState]:
    """One step of SGD: ``b ← μb + (1−τ)g`` (``b ← g`` on the first step), ``p ← p − lr·b``.

    With ``nesterov`` the step direction is ``g + μb``. Returns new parameters and state.
    """
    grads = apply_weight_decay(params, grads, weight_decay, maximize)
    first = state.step == 0
    new_params, new_bufs = [], []
    for i, (p, g, buf) in enumerate(zip(params, grads, state.momentum_buffer)):
        mu = per_tensor(momentum, i)
        if isinstance(mu, (int, float)) and mu == 0:
            direction, buf = g, buf
        else:
            # torch.optim.SGD seeds the buffer with the first gradient (no dampening on step 1).
            buf = torch.where(first, g, mu * buf + (1 - per_tensor(dampening, i)) * g)
            direction = g + mu * buf if nesterov else buf
        new_params.append(p - per_tensor(lr, i) * direction)
        new_bufs.append(buf)
    return tuple(new_params), SGDState(tuple(new_bufs), state.step + 1)
