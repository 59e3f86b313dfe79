"""Pure complex-Adam update: Adam whose first-moment decay is complex (Lorraine et al., 2022,
"Complex Momentum for Optimization in Games", Section 4.3), in real arithmetic with two buffers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from metaopt.optim.functional._utils import Hyper, Tensors, apply_weight_decay, per_tensor, sqrt, step_count
from metaopt.optim.functional.complex_momentum import polar

__all__ = ["ComplexAdamState", "complex_adam_init", "complex_adam", "bias_correction"]


class ComplexAdamState(NamedTuple):
    """Real and imaginary parts of the first moment m, the (real) second moment v, the step count, and
    (``amsgrad``) the running maximum of v: ``()`` until the first amsgrad step unless
    ``complex_adam_init(params, amsgrad=True)`` made it (then the state keeps one structure, for scans)."""

    exp_avg_real: Tensors
    exp_avg_imag: Tensors
    exp_avg_sq: Tensors
    step: torch.Tensor
    max_exp_avg_sq: Tensors = ()


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


def complex_adam_init(params: Sequence[torch.Tensor], amsgrad: bool = False) -> ComplexAdamState:
    def zeros():
        return tuple(torch.zeros_like(p) for p in params)
    return ComplexAdamState(zeros(), zeros(), zeros(), step_count(params, torch.float32),
                            zeros() if amsgrad else ())


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
    amsgrad: bool = False,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
) -> tuple[Tensors, ComplexAdamState]:
    """One step of Adam with complex ``β₁ = beta1·e^{i·angle}`` (real ``v``, step on ``Re m̂``):

    ``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``, ``m̂ = m/(1−β₁ᵗ)`` (complex power),
    ``v̂ = v/(1−β₂ᵗ)``, ``p ← p − lr·Re(m̂)/(√v̂ + ε)``.

    The complex weights ``(1−β₁)β₁^{t−s}`` of ``m̂`` sum to one, so a constant gradient gives
    exactly Adam's step; ``angle=0`` is ``torch.optim.Adam``. ``amsgrad``: ``v̂`` from the running
    maximum of ``v``; ``decoupled_weight_decay``: ``p ← (1 − lr·wd)·p`` before the step instead of
    ``g ← g + wd·p`` (AdamW), as in torch.
    """
    grads = apply_weight_decay(params, grads, 0.0 if decoupled_weight_decay else weight_decay, maximize)
    step = state.step + 1
    maxima = (state.max_exp_avg_sq or tuple(torch.zeros_like(v) for v in state.exp_avg_sq)) if amsgrad else state[2]
    new_params, new_real, new_imag, new_sq, new_max = [], [], [], [], []
    for i, (p, g, m_r, m_i, v, v_max) in enumerate(zip(params, grads, *state[:3], maxima)):
        b1, b2 = per_tensor(beta1, i), per_tensor(beta2, i)
        beta_r, beta_i = polar(b1, per_tensor(angle, i))
        wd = per_tensor(weight_decay, i)
        if decoupled_weight_decay and not (isinstance(wd, (int, float)) and wd == 0):
            p = p * (1 - per_tensor(lr, i) * wd)
        # m + (1−β₁)(g − m) split into real and imaginary parts.
        real = m_r + (1 - beta_r) * (g - m_r) - beta_i * m_i
        imag = beta_r * m_i + beta_i * (m_r - g)
        v = b2 * v + (1 - b2) * g * g
        second = torch.maximum(v_max, v) if amsgrad else v
        # Bias corrections in float64 (torch.optim.Adam computes them in Python floats): in float32,
        # 1 − β₂ᵗ drifts the trajectory by 1e-6 over 100 steps.
        t = step.to(torch.float64)
        scale, ratio = bias_correction(b1, per_tensor(angle, i), t)
        denom = sqrt(second) / (1 - b2**t) ** 0.5 + per_tensor(eps, i)
        new_params.append(p - (per_tensor(lr, i) / scale) * (real + ratio * imag) / denom)
        new_real.append(real)
        new_imag.append(imag)
        new_sq.append(v)
        new_max.append(second)
    maxima = tuple(new_max) if amsgrad else state.max_exp_avg_sq
    return tuple(new_params), ComplexAdamState(tuple(new_real), tuple(new_imag), tuple(new_sq), step, maxima)
