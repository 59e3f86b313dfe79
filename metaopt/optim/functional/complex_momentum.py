"""Pure complex-momentum update (Lorraine, Acuna, Vicol & Duvenaud, 2022, "Complex Momentum for
Optimization in Games", Algorithm 1), in real arithmetic with two buffers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from metaopt.optim.functional._utils import Hyper, Tensors, apply_weight_decay, per_tensor, step_count

__all__ = ["ComplexMomentumState", "complex_momentum_init", "complex_momentum", "polar"]


class ComplexMomentumState(NamedTuple):
    """The real and imaginary parts of the momentum buffer μ, and the number of steps taken."""

    momentum_real: Tensors
    momentum_imag: Tensors
    step: torch.Tensor


def polar(modulus: float | torch.Tensor, angle: float | torch.Tensor) -> tuple:
    """``(Re β, Im β)`` of ``β = modulus·e^{i·angle}``; differentiable when either is a tensor.

    With ``angle == 0`` (a float) this is exactly ``(modulus, 0.0)``, so real momentum is reproduced
    bit for bit.
    """
    if isinstance(angle, torch.Tensor):
        return modulus * torch.cos(angle), modulus * torch.sin(angle)
    return modulus * math.cos(angle), modulus * math.sin(angle)


def complex_momentum_init(params: Sequence[torch.Tensor]) -> ComplexMomentumState:
    return ComplexMomentumState(tuple(torch.zeros_like(p) for p in params),
                                tuple(torch.zeros_like(p) for p in params),
                                step_count(params, torch.float32))


def complex_momentum(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    state: ComplexMomentumState,
    *,
    lr: Hyper,
    momentum: Hyper = 0.9,
    angle: Hyper = math.pi / 8,
    weight_decay: Hyper = 0.0,
    dampening: Hyper = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
) -> tuple[Tensors, ComplexMomentumState]:
    """One step of complex momentum with ``β = momentum·e^{i·angle}`` (paper, Eq. 4 / Algorithm 1):

    ``μ ← βμ − (1−τ)g`` and ``p ← p + lr·Re(μ)``, that is, with ``μ = μr + i·μi``,
    ``μr ← Re β·μr − Im β·μi − (1−τ)g``, ``μi ← Im β·μr + Re β·μi``, ``p ← p + lr·μr``.

    ``dampening`` τ is not applied on the first step (``state.step == 0``), where μ becomes ``−g`` as
    torch's SGD seeds its buffer with ``g``. ``nesterov`` steps ``p ← p + lr·Re(βμ − g)`` with the
    updated μ (torch's ``g + momentum·buf`` at ``angle=0``). ``angle=0`` is
    ``torch.optim.SGD(momentum, dampening, nesterov)`` (whose buffer is ``−μr``), ``angle=π``
    negative momentum, ``momentum=0`` gradient descent.
    """
    grads = apply_weight_decay(params, grads, weight_decay, maximize)
    first = state.step == 0
    new_params, new_real, new_imag = [], [], []
    for i, (p, g, mu_r, mu_i) in enumerate(zip(params, grads, state.momentum_real, state.momentum_imag)):
        beta_r, beta_i = polar(per_tensor(momentum, i), per_tensor(angle, i))
        tau = per_tensor(dampening, i)
        if isinstance(tau, (int, float)) and tau == 0:
            fresh = g
        else:  # (a number τ as a tensor of g's dtype: torch.where would make a float32 one)
            undamped = 1 - tau if isinstance(tau, torch.Tensor) else torch.tensor(1 - tau, dtype=g.dtype,
                                                                                   device=g.device)
            fresh = torch.where(first, 1.0, undamped) * g
        real = beta_r * mu_r - beta_i * mu_i - fresh
        imag = beta_i * mu_r + beta_r * mu_i
        direction = beta_r * real - beta_i * imag - g if nesterov else real
        new_params.append(p + per_tensor(lr, i) * direction)
        new_real.append(real)
        new_imag.append(imag)
    return tuple(new_params), ComplexMomentumState(tuple(new_real), tuple(new_imag), state.step + 1)
