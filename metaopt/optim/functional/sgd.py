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
        mu, tau = per_tensor(momentum, i), per_tensor(dampening, i)
        if isinstance(mu, (int, float)) and mu == 0:
            direction, buf = g, buf
        else:
            # torch.optim.SGD seeds the buffer with the first gradient (no dampening on step 1). The buffer
            # is finite there (zero from sgd_init), so zeroing μ and τ on the first step does the same with
            # two scalar ``where``s instead of one over every element: ``b ← μ'b + (1−τ')g``, one fused pass.
            keep = torch.where(first, 0.0, _as_tensor(mu, buf))
            if isinstance(tau, (int, float)) and tau == 0:
                fresh = g
            else:
                fresh = torch.where(first, 1.0, 1 - _as_tensor(tau, buf)) * g
            buf = _add_scaled(fresh, keep, buf)
            direction = _add_scaled(g, mu, buf) if nesterov else buf
        new_params.append(_add_scaled(p, -per_tensor(lr, i), direction))
        new_bufs.append(buf)
    return tuple(new_params), SGDState(tuple(new_bufs), state.step + 1)


def _as_tensor(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A number as a 0-d tensor of ``like``'s dtype and device (a tensor, batched or not, as it is)."""
    return value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=like.dtype, device=like.device)


def _add_scaled(x: torch.Tensor, scale: float | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + scale·y`` in one pass over the elements: ``add(alpha=)`` for a number (torch.optim's own
    arithmetic), ``addcmul`` for a 0-d tensor (one that carries a gradient or is batched by vmap)."""
    if isinstance(scale, torch.Tensor):
        return torch.addcmul(x, scale, y)
    return x.add(y, alpha=scale)
