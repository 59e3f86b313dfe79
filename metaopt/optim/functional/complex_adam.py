"""Pure complex-Adam update: Adam whose first-moment decay is complex (Lorraine et al., 2022,
"Complex Momentum for Optimization in Games", Section 4.3), in real arithmetic with two buffers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from metaopt.optim.functional._utils import Hyper, Tensors, apply_weight_decay, per_tensor, step_count
from metaopt.optim.functional.complex_momentum import polar

__all__ = ["ComplexAdamState", "complex_adam_init", "complex_adam", "bias_correction"]


class ComplexAdamState(NamedTuple):
    """Real and imaginary parts of the first moment m, the (real) second moment v, and the step count."""

    exp_avg_real: Tensors
    exp_avg_imag: Tensors
    exp_avg_sq: Tensors
    step: torch.Tensor


def bias_correction(beta1: float | torch.Tensor, angle: float | torch.Tensor, step: float | torch.Tensor):
    """``(scale, ratio)`` with ``Re(m / c) = (Re m + ratio·Im m) / scale`` for ``c = 1 − β₁ᵗ``,
    ``β₁ = beta1·e^{i·angle}`` (complex power): ``ratio = Im c / Re c``, ``scale = |c|² / Re c``.

    ``Re c ≥ 1 − |β₁|ᵗ > 0``. With ``angle == 0`` this is exactly ``(1 − beta1**step, 0)``, the
    numbers of torch.optim.Adam.
    """
    power_r, power_i = polar(beta1**step, step * angle)
    c_r, c_i = 1 - power_r, -power_i
    ratio = c_i / c_r
    return c_r + c_i * ratio, ratio


def complex_adam_init(params: Sequence[torch.Tensor]) -> ComplexAdamState:
    def zeros():
        return tuple(torch.zeros_like(p) for p in params)
    return ComplexAdamState(zeros(), zeros(), zeros(), step_count(params, torch.float32))


def complex_adam(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    state: ComplexAdamState,
    *,
    lr: Hyper,
    beta1: Hyper = 0.9,
    beta2: Hyper = 0.999,
    angle: Hyper = math.pi / 8,
    eps: Hyper = 1e-8,
    weight_decay: Hyper = 0.0,
    maximize: bool = False,
) -> tuple[Tensors, ComplexAdamState]:
    """One step of Adam with complex ``β₁ = beta1·e^{i·angle}`` (real ``v``, step on ``Re m̂``):

    ``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``, ``m̂ = m/(1−β₁ᵗ)`` (complex power),
    ``v̂ = v/(1−β₂ᵗ)``, ``p ← p − lr·Re(m̂)/(√v̂ + ε)``.

    The complex weights ``(1−β₁)β₁^{t−s}`` of ``m̂`` sum to one, so a constant gradient gives
    exactly Adam's step; ``angle=0`` is ``torch.optim.Adam``.
    """
    grads = apply_weight_decay(params, grads, weight_decay, maximize)
    step = state.step + 1
    new_params, new_real, new_imag, new_sq = [], [], [], []
    for i, (p, g, m_r, m_i, v) in enumerate(zip(params, grads, *state[:3])):
        b1, b2 = per_tensor(beta1, i), per_tensor(beta2, i)
        beta_r, beta_i = polar(b1, per_tensor(angle, i))
        # m + (1−β₁)(g − m) split into real and imaginary parts.
        real = m_r + (1 - beta_r) * (g - m_r) - beta_i * m_i
        imag = beta_r * m_i + beta_i * (m_r - g)
        v = b2 * v + (1 - b2) * g * g
        # Bias corrections in the parameters' precision (at least float32), not the counter's.
        t = step.to(torch.promote_types(p.dtype, torch.float32))
        scale, ratio = bias_correction(b1, per_tensor(angle, i), t)
        denom = v.sqrt() / (1 - b2**t) ** 0.5 + per_tensor(eps, i)
        new_params.append(p - (per_tensor(lr, i) / scale) * (real + ratio * imag) / denom)
        new_real.append(real)
        new_imag.append(imag)
        new_sq.append(v)
    return tuple(new_params), ComplexAdamState(tuple(new_real), tuple(new_imag), tuple(new_sq), step)
