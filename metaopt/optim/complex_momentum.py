"""Complex momentum (Lorraine, Acuna, Vicol & Duvenaud, 2022, "Complex Momentum for Optimization
in Games", Algorithm 1) as a drop-in ``torch.optim.Optimizer``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from metaopt.optim._compiled import FusedStep, write_back
from metaopt.optim.functional.complex_momentum import polar
from metaopt.optim.optimizer import Optimizer, _is_real, check_hyperparameter

__all__ = ["ComplexMomentum"]


def _check_flags(group: dict[str, Any]) -> None:
    maximize, fused, foreach = group["maximize"], group["fused"], group["foreach"]
    check_hyperparameter("maximize", maximize, isinstance(maximize, bool), "True or False")
    check_hyperparameter("fused", fused, isinstance(fused, bool), "True or False")
    check_hyperparameter("fused", fused, not (fused and foreach), "False when foreach=True")


class ComplexMomentum(Optimizer):
    r"""Momentum with a complex coefficient ``β = momentum·e^{i·angle}``.

    Each parameter keeps a complex buffer μ as two real tensors (``momentum_real``,
    ``momentum_imag``); one step is (paper, Algorithm 1, with real step size ``lr``)

    .. math::
        μ ← βμ − g, \qquad p ← p + \mathrm{lr}·\mathrm{Re}(μ).

    The imaginary part carries the rotation that makes the method converge on adversarial games
    (where gradient descent-ascent and real momentum cycle or diverge); replacing μ by its real part
    would turn it into real momentum with ``Re β``. Special cases: ``angle=0`` reproduces
    ``torch.optim.SGD(lr, momentum, dampening=0)`` step for step (its buffer is ``−Re μ``),
    ``angle=π`` is negative momentum ``−momentum``, ``momentum=0`` is gradient descent. In a game,
    give the maximizing player ``maximize=True`` (it then follows the negated gradient, the joint
    vector field of the paper).

    Args:
        params: parameters or param groups; every group may set its own ``lr``, ``momentum``,
            ``angle``, ``weight_decay`` and ``maximize``.
        lr: step size α ≥ 0.
        momentum: modulus ``|β|`` in [0, 1).
        angle: argument φ of β in radians (finite; the paper's default is π/8).
        weight_decay: coupled L2 penalty added to the gradient, as in ``torch.optim.SGD``.
        maximize: ascend the objective instead.
        foreach: ``True`` multi-tensor ``torch._foreach_*`` path, ``False`` per-tensor loop, ``None``
            the multi-tensor path when all tensors are on CUDA (on CPU the loop is faster).
        fused: one kernel over all tensors of a group, which reads and writes each element once
            (7 memory passes against heavy ball's 5). On CPU (float32/float64) a C kernel, compiled
            on the first step of the process with the system C compiler (about 0.2 s); elsewhere, or
            without a compiler, a ``torch.compile``-d step (tens of seconds to compile on the first
            step; runs the multi-tensor update eagerly if compiling fails). Equal to the other paths
            to float round-off (fused multiply-adds), so ``angle=0`` is not bit-identical to SGD here.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, angle: float = math.pi / 8,
                 weight_decay: float = 0.0, *, maximize: bool = False, foreach: bool | None = None,
                 fused: bool = False):
        defaults = dict(lr=lr, momentum=momentum, angle=angle, weight_decay=weight_decay, maximize=maximize,
                        foreach=foreach, fused=fused)
        super().__init__(params, defaults)
        self._fused_update = FusedStep("complex_momentum_step", _fused_complex_momentum)

    def _validate(self, group: dict[str, Any]) -> None:
        super()._validate(group)
        momentum, angle = group["momentum"], group["angle"]
        check_hyperparameter("momentum", momentum, _is_real(momentum) and 0.0 <= float(momentum) < 1.0,
                             "a number in [0, 1)")
        check_hyperparameter("angle", angle, _is_real(angle), "a finite number (radians)")
        _check_flags(group)

    def _init_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"momentum_real": torch.zeros_like(param, memory_format=torch.preserve_format),
                "momentum_imag": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def _update(self, group, params, grads, states, foreach):
        lr, weight_decay = float(group["lr"]), float(group["weight_decay"])
        beta_r, beta_i = polar(float(group["momentum"]), float(group["angle"]))
        reals = [s["momentum_real"] for s in states]
        imags = [s["momentum_imag"] for s in states]
        if group["fused"]:
            self._fused_update([params, grads, reals, imags], [beta_r, beta_i, lr, weight_decay])
        elif foreach:
            _multi_tensor(params, grads, reals, imags, beta_r, beta_i, lr, weight_decay)
        else:
            _single_tensor(params, grads, reals, imags, beta_r, beta_i, lr, weight_decay)


# The three paths compute  μr ← Re β·μr − Im β·μi − g,  μi ← Im β·μr + Re β·μi,  p ← p + lr·μr.
# With Im β = 0 the imaginary terms are skipped, which keeps angle=0 bit-identical to torch's SGD.

def _single_tensor(params, grads, reals, imags, beta_r, beta_i, lr, weight_decay):
    for p, g, real, imag in zip(params, grads, reals, imags):
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        if beta_i != 0:
            rotated = imag.mul(beta_i)
            imag.mul_(beta_r).add_(real, alpha=beta_i)
            real.mul_(beta_r).sub_(rotated)
        else:
            imag.mul_(beta_r)
            real.mul_(beta_r)
        real.sub_(g)
        p.add_(real, alpha=lr)


def _multi_tensor(params, grads, reals, imags, beta_r, beta_i, lr, weight_decay):
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if beta_i != 0:
        rotated = torch._foreach_mul(imags, beta_i)
        torch._foreach_mul_(imags, beta_r)
        torch._foreach_add_(imags, reals, alpha=beta_i)
        torch._foreach_mul_(reals, beta_r)
        torch._foreach_sub_(reals, rotated)
    else:
        torch._foreach_mul_(imags, beta_r)
        torch._foreach_mul_(reals, beta_r)
    torch._foreach_sub_(reals, grads)
    torch._foreach_add_(params, reals, alpha=lr)


def _fused_complex_momentum(params, grads, reals, imags, scalars):
    # Written with multi-tensor ops so that inductor fuses the passes vertically (one read and one
    # write per element) and, on CUDA, horizontally across tensors, as for torch's compiled optimizers.
    beta_r, beta_i, lr, weight_decay = scalars.unbind()
    grads = torch._foreach_add(grads, torch._foreach_mul(params, weight_decay))
    new_real = torch._foreach_sub(torch._foreach_mul(reals, beta_r), torch._foreach_mul(imags, beta_i))
    new_real = torch._foreach_sub(new_real, grads)
    new_imag = torch._foreach_add(torch._foreach_mul(reals, beta_i), torch._foreach_mul(imags, beta_r))
    torch._foreach_add_(params, torch._foreach_mul(new_real, lr))
    write_back(reals, new_real)
    write_back(imags, new_imag)
