"""Complex Adam (Lorraine, Acuna, Vicol & Duvenaud, 2022, "Complex Momentum for Optimization in
Games", Section 4.3): Adam whose first-moment decay is complex, as a drop-in ``torch.optim.Optimizer``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from metaopt.optim._compiled import FusedStep, write_back
from metaopt.optim.complex_momentum import _check_flags
from metaopt.optim.functional.complex_adam import bias_correction
from metaopt.optim.functional.complex_momentum import polar
from metaopt.optim.optimizer import Optimizer, hyper_value

__all__ = ["ComplexAdam"]


class ComplexAdam(Optimizer):
    r"""Adam with a complex first-moment decay ``β₁·e^{i·angle}`` and a real second moment.

    With ``b = β₁e^{iφ}`` and step count t, one step is

    .. math::
        m ← b\,m + (1−b)\,g,\quad v ← β₂v + (1−β₂)g^2,\quad
        p ← p − \mathrm{lr}·\frac{\mathrm{Re}\big(m/(1−b^t)\big)}{\sqrt{v/(1−β₂^t)} + ε}.

    The paper states complex Adam as Adam with a complex β₁ whose update uses the real part of the
    first moment; we keep the moment complex (two real buffers, ``exp_avg_real`` and
    ``exp_avg_imag``) and bias-correct it by the complex power ``1 − bᵗ``: the complex weights
    ``(1−b)b^{t−s}`` then sum to one, so a constant gradient gives exactly Adam's step, the first
    step is ``lr·g/(|g|+ε)`` for any angle, and ``angle=0`` reproduces ``torch.optim.Adam`` step for
    step. The second moment is the real EMA of g², as in Adam; ``amsgrad`` divides by the running
    maximum of ``v`` instead (Reddi et al., 2018), and ``decoupled_weight_decay`` decays the
    parameters by ``1 − lr·weight_decay`` before the step instead of adding ``weight_decay·p`` to the
    gradient (AdamW, Loshchilov & Hutter, 2019), both as in ``torch.optim.Adam``.

    A complex parameter is optimized as its real and imaginary parts (``torch.view_as_real``, as
    torch.optim does): the second moment of each part is the square of that part's gradient, so
    ``angle=0`` equals ``torch.optim.Adam`` on complex parameters too.

    Args:
        params: parameters or param groups (each may set its own hyperparameters).
        lr: step size ≥ 0 (a float or a 0-d tensor, see :class:`metaopt.optim.ComplexMomentum`).
        betas: ``(|β₁|, β₂)``, both in [0, 1).
        eps: ε > 0 added to the denominator.
        weight_decay: L2 penalty (coupled, or decoupled with ``decoupled_weight_decay``).
        angle: argument φ of the first-moment decay, radians (finite).
        amsgrad: use the running maximum of the second moment.
        decoupled_weight_decay: AdamW's weight decay.
        maximize, foreach, fused: as in :class:`metaopt.optim.ComplexMomentum` (the C kernel covers
            ``amsgrad=False``; with ``amsgrad`` a group takes the multi-tensor path).
    """

    def __init__(self, params: Iterable, lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0, *,
                 angle: float = math.pi / 8, amsgrad: bool = False, decoupled_weight_decay: bool = False,
                 maximize: bool = False, foreach: bool | None = None, fused: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, angle=angle, amsgrad=amsgrad,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, foreach=foreach,
                        fused=fused)
        super().__init__(params, defaults)

    def _setup(self) -> None:
        if not hasattr(self, "_fused_update"):
            self._fused_update = FusedStep("complex_adam_step", _fused_complex_adam)

    def _validate(self, group: dict[str, Any]) -> None:
        super()._validate(group)
        _check_flags(group)

    def _init_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        def zeros():
            return torch.zeros_like(param, memory_format=torch.preserve_format)
        state = {"step": torch.tensor(0.0, dtype=torch.float32), "exp_avg_real": zeros(),
                 "exp_avg_imag": zeros(), "exp_avg_sq": zeros()}
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = zeros()
        return state

    def _upgrade_state(self, param_state: dict[str, Any], group: dict[str, Any]) -> None:
        # A checkpoint may hold a plain-number step (as torch.optim.Adam converts it in __setstate__).
        if "step" in param_state and not isinstance(param_state["step"], torch.Tensor):
            param_state["step"] = torch.tensor(float(param_state["step"]), dtype=torch.float32)

    def _update(self, group, params, grads, states, foreach):
        beta1, beta2 = (float(b) for b in group["betas"])
        angle = float(group["angle"])
        step_counts = [s["step"] for s in states]
        torch._foreach_add_(step_counts, 1)
        buffers = [[s["exp_avg_real"] for s in states], [s["exp_avg_imag"] for s in states],
                   [s["exp_avg_sq"] for s in states]]
        maxima = None
        if group["amsgrad"]:
            for s in states:
                if "max_exp_avg_sq" not in s:  # amsgrad switched on after the state was made
                    s["max_exp_avg_sq"] = s["exp_avg_sq"].clone()
            maxima = [s["max_exp_avg_sq"] for s in states]
        hyper = dict(beta1=beta1, angle=angle, beta2=beta2, eps=float(group["eps"]),
                     weight_decay=float(group["weight_decay"]), decoupled=group["decoupled_weight_decay"])
        if group["fused"] and maxima is None:
            self._fused(params, grads, buffers, step_counts, group["lr"], hyper, foreach)
            return
        compiling = torch.compiler.is_compiling()
        steps = step_counts if compiling else [t.item() for t in step_counts]
        lr = hyper_value(group["lr"])
        if foreach and not compiling:
            _multi_tensor(params, grads, *buffers, maxima, steps, lr=lr, **hyper)
        else:  # (inside torch.compile the per-tensor loop with tensor steps; inductor fuses it)
            _single_tensor(params, grads, *buffers, maxima, steps, lr=lr, **hyper)

    @torch._disable_dynamo
    def _fused(self, params, grads, buffers, step_counts, lr, hyper, foreach):
        # A C kernel through ctypes: dynamo runs it as it is (one graph break, no recompiles). One step
        # count for the whole group (parameters added later take the eager path until then).
        steps = [t.item() for t in step_counts]
        lr = float(lr)
        if len(set(steps)) != 1:
            path = _multi_tensor if foreach else _single_tensor
            path(params, grads, *buffers, None, steps, lr=lr, **hyper)
            return
        beta1, beta2, weight_decay = hyper["beta1"], hyper["beta2"], hyper["weight_decay"]
        if hyper["decoupled"] and weight_decay != 0:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
            weight_decay = 0.0
        beta_r, beta_i = polar(beta1, hyper["angle"])
        scale, ratio = bias_correction(beta1, hyper["angle"], steps[0])
        values = [beta_r, beta_i, beta2, hyper["eps"], weight_decay, -lr / scale, (1 - beta2 ** steps[0]) ** 0.5,
                  ratio]
        self._fused_update([params, grads, *buffers], values)


# The paths compute, with b = β₁e^{iφ} = beta_r + i·beta_i and c = 1 − bᵗ:
#   m_r ← lerp(m_r, g, 1 − beta_r) − beta_i·m_i,   m_i ← beta_r·m_i + beta_i·(m_r − g)
#   v ← β₂v + (1 − β₂)g²,   p ← p − (lr / scale)·(m_r + ratio·m_i) / (√v/√(1−β₂ᵗ) + ε)
# where Re(m/c) = (m_r + ratio·m_i)/scale (see functional.complex_adam.bias_correction). With beta_i = 0
# (angle 0) the imaginary terms are skipped and the arithmetic is torch.optim.Adam's, operation for operation.
# Steps are floats eagerly and 0-d tensors inside torch.compile (then so are scale, ratio and lr).

def _single_tensor(params, grads, reals, imags, squares, maxima, steps, *, lr, beta1, angle, beta2, eps,
                   weight_decay, decoupled):
    beta_r, beta_i = polar(beta1, angle)
    corrections: dict[Any, tuple] = {}
    for i, (p, g, real, imag, square, t) in enumerate(zip(params, grads, reals, imags, squares, steps)):
        if weight_decay != 0:
            if decoupled:
                p.mul_(1 - lr * weight_decay)
            else:
                g = g.add(p, alpha=weight_decay)
        if beta_i != 0:
            difference = real - g
            real.lerp_(g, 1 - beta_r).sub_(imag, alpha=beta_i)
            imag.mul_(beta_r).add_(difference, alpha=beta_i)
        else:
            real.lerp_(g, 1 - beta_r)
            imag.mul_(beta_r)
        square.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        if maxima is not None:
            torch.maximum(maxima[i], square, out=maxima[i])
            square = maxima[i]
        if isinstance(t, torch.Tensor):
            scale, ratio = bias_correction(beta1, angle, t)
        else:
            if t not in corrections:
                corrections[t] = bias_correction(beta1, angle, t)
            scale, ratio = corrections[t]
        denom = (square.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
        if isinstance(ratio, torch.Tensor):
            direction = real + ratio * imag
        else:
            direction = real.add(imag, alpha=ratio) if ratio != 0 else real
        step_size = -(lr / scale)
        if isinstance(step_size, torch.Tensor):
            p.add_(direction / denom * step_size)
        else:
            p.addcdiv_(direction, denom, value=step_size)


def _multi_tensor(params, grads, reals, imags, squares, maxima, steps, *, lr, beta1, angle, beta2, eps,
                  weight_decay, decoupled):
    beta_r, beta_i = polar(beta1, angle)
    unique = {t: bias_correction(beta1, angle, t) for t in set(steps)}
    corrections = [unique[t] for t in steps]
    if weight_decay != 0:
        if decoupled:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if beta_i != 0:
        difference = torch._foreach_sub(reals, grads)
        torch._foreach_lerp_(reals, grads, 1 - beta_r)
        torch._foreach_add_(reals, imags, alpha=-beta_i)
        torch._foreach_mul_(imags, beta_r)
        torch._foreach_add_(imags, difference, alpha=beta_i)
    else:
        torch._foreach_lerp_(reals, grads, 1 - beta_r)
        torch._foreach_mul_(imags, beta_r)
    torch._foreach_mul_(squares, beta2)
    torch._foreach_addcmul_(squares, grads, grads, 1 - beta2)
    if maxima is not None:
        torch._foreach_maximum_(maxima, squares)
        squares = maxima
    denom = torch._foreach_sqrt(squares)
    torch._foreach_div_(denom, [(1 - beta2**t) ** 0.5 for t in steps])
    torch._foreach_add_(denom, eps)
    ratios = [ratio for _, ratio in corrections]
    directions = torch._foreach_add(reals, torch._foreach_mul(imags, ratios)) if any(ratios) else reals
    torch._foreach_addcdiv_(params, directions, denom, [-(lr / scale) for scale, _ in corrections])


def _fused_complex_adam(params, grads, reals, imags, squares, scalars):
    # Multi-tensor ops, fused by inductor (see complex_momentum._fused_complex_momentum).
    beta_r, beta_i, beta2, eps, weight_decay, step_size, correction2, ratio = scalars.unbind()
    grads = torch._foreach_add(grads, torch._foreach_mul(params, weight_decay))
    difference = torch._foreach_sub(grads, reals)
    new_real = torch._foreach_add(reals, torch._foreach_mul(difference, 1 - beta_r))
    new_real = torch._foreach_sub(new_real, torch._foreach_mul(imags, beta_i))
    new_imag = torch._foreach_sub(torch._foreach_mul(imags, beta_r), torch._foreach_mul(difference, beta_i))
    new_square = torch._foreach_add(torch._foreach_mul(squares, beta2),
                                    torch._foreach_mul(torch._foreach_mul(grads, grads), 1 - beta2))
    denom = torch._foreach_add(torch._foreach_div(torch._foreach_sqrt(new_square), correction2), eps)
    direction = torch._foreach_add(new_real, torch._foreach_mul(new_imag, ratio))
    torch._foreach_add_(params, torch._foreach_mul(torch._foreach_div(direction, denom), step_size))
    write_back(reals, new_real)
    write_back(imags, new_imag)
    write_back(squares, new_square)
