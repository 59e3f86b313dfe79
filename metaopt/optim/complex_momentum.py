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
from metaopt.optim.optimizer import Optimizer, check_hyperparameter, hyper_value

__all__ = ["ComplexMomentum"]


def _check_flags(group: dict[str, Any]) -> None:
    fused, foreach = group["fused"], group["foreach"]
    check_hyperparameter("fused", fused, isinstance(fused, bool), "True or False")
    check_hyperparameter("fused", fused, not (fused and foreach), "False when foreach=True")


def _axpy_(x: torch.Tensor, y: torch.Tensor, alpha: float | torch.Tensor) -> None:
    """``x += alpha·y`` in place: ``add_(alpha=)`` for a number (torch.optim's arithmetic), a product
    for a 0-d tensor (a tensor lr inside ``torch.compile``)."""
    if isinstance(alpha, torch.Tensor):
        x.add_(y * alpha)
    else:
        x.add_(y, alpha=alpha)


class ComplexMomentum(Optimizer):
    r"""Momentum with a complex coefficient ``β = momentum·e^{i·angle}``.

    Each parameter keeps a complex buffer μ as two real tensors (``momentum_real``,
    ``momentum_imag``); one step is (paper, Algorithm 1, with real step size ``lr``)

    .. math::
        μ ← βμ − (1−τ)g, \qquad p ← p + \mathrm{lr}·\mathrm{Re}(μ).

    The imaginary part carries the rotation that makes the method converge on adversarial games
    (where gradient descent-ascent and real momentum cycle or diverge); replacing μ by its real part
    would turn it into real momentum with ``Re β``. Special cases: ``angle=0`` reproduces
    ``torch.optim.SGD(lr, momentum, dampening, weight_decay, nesterov)`` step for step (its buffer
    is ``−Re μ``), ``angle=π`` is negative momentum ``−momentum``, ``momentum=0`` is gradient descent.
    In a game, give the maximizing player ``maximize=True`` (it then follows the negated gradient, the
    joint vector field of the paper).

    ``dampening`` τ scales the gradient entering the buffer, except on the first step (the buffer is
    then ``−g``, as torch's SGD seeds its buffer with the first gradient). ``nesterov`` steps along the
    buffer the *next* step would hold were the gradient unchanged: ``p ← p + lr·Re(βμ − g)`` with μ the
    updated buffer, which is torch's ``g + momentum·buf`` at ``angle=0`` and, for complex β, the
    one-step look-ahead of the same complex recursion (not a paper's rule: our extension). As in torch,
    it needs ``momentum > 0`` and ``dampening = 0``.

    A complex parameter is optimized as its real and imaginary parts, each with its own complex buffer
    (``torch.view_as_real``, as torch.optim treats complex parameters): β rotates the buffer of each
    real coordinate, it does not multiply the parameter in its own complex plane.

    Args:
        params: parameters or param groups; every group may set its own hyperparameters.
        lr: step size α ≥ 0 (a float or a 0-d tensor: a tensor lr changed by a scheduler does not
            recompile a ``torch.compile``-d step).
        momentum: modulus ``|β|`` in [0, 1).
        dampening: τ in [0, 1].
        weight_decay: coupled L2 penalty added to the gradient, as in ``torch.optim.SGD``.
        nesterov: the Nesterov variant above.
        angle: argument φ of β in radians (finite; the paper's default is π/8).
        maximize: ascend the objective instead.
        foreach: ``True`` multi-tensor ``torch._foreach_*`` path, ``False`` per-tensor loop, ``None``
            the multi-tensor path when all tensors are on CUDA (on CPU the loop is faster).
        fused: one kernel over all tensors of a group, which reads and writes each element once
            (7 memory passes against heavy ball's 5). On CPU (float32/float64) a C kernel, compiled
            on the first step of the process with the system C compiler (about 0.2 s); elsewhere, or
            without a compiler, a ``torch.compile``-d step (tens of seconds to compile on the first
            step; runs the multi-tensor update eagerly if compiling fails). Equal to the other paths
            to float round-off (fused multiply-adds), so ``angle=0`` is not bit-identical to SGD here.
            The kernel covers ``dampening=0`` without ``nesterov``; a group with either takes the
            multi-tensor path.
    """

    def __init__(self, params: Iterable, lr: float | torch.Tensor = 1e-3, momentum: float = 0.9,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
                 angle: float = math.pi / 8, maximize: bool = False, foreach: bool | None = None,
                 fused: bool = False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, angle=angle, maximize=maximize, foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    def _setup(self) -> None:
        if not hasattr(self, "_fused_update"):
            self._fused_update = FusedStep("complex_momentum_step", _fused_complex_momentum)

    def _validate(self, group: dict[str, Any]) -> None:
        super()._validate(group)
        momentum, dampening, nesterov = group["momentum"], group.get("dampening", 0.0), group.get("nesterov", False)
        check_hyperparameter("nesterov", nesterov, not nesterov or (float(momentum) > 0 and float(dampening) == 0),
                             "False unless momentum > 0 and dampening = 0 (as in torch.optim.SGD)")
        _check_flags(group)

    def _init_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = {"momentum_real": torch.zeros_like(param, memory_format=torch.preserve_format),
                 "momentum_imag": torch.zeros_like(param, memory_format=torch.preserve_format)}
        if group["dampening"] != 0:  # the first step is undampened: count steps only where that matters
            state["step"] = torch.tensor(0.0)
        return state

    def _upgrade_state(self, param_state: dict[str, Any], group: dict[str, Any]) -> None:
        if "step" in param_state and not isinstance(param_state["step"], torch.Tensor):
            param_state["step"] = torch.tensor(float(param_state["step"]))

    def _update(self, group, params, grads, states, foreach):
        lr, weight_decay = hyper_value(group["lr"]), float(group["weight_decay"])
        beta_r, beta_i = polar(float(group["momentum"]), float(group["angle"]))
        reals = [s["momentum_real"] for s in states]
        imags = [s["momentum_imag"] for s in states]
        dampening, nesterov = float(group["dampening"]), group["nesterov"]
        fresh = 1.0
        if dampening != 0:
            fresh = _gradient_weights(states, dampening)
        if group["fused"] and dampening == 0 and not nesterov:
            self._fused(params, grads, reals, imags, beta_r, beta_i, group["lr"], weight_decay)
        elif foreach:
            _multi_tensor(params, grads, reals, imags, beta_r, beta_i, lr, weight_decay, fresh, nesterov)
        else:
            _single_tensor(params, grads, reals, imags, beta_r, beta_i, lr, weight_decay, fresh, nesterov)

    @torch._disable_dynamo
    def _fused(self, params, grads, reals, imags, beta_r, beta_i, lr, weight_decay):
        # A C kernel through ctypes: dynamo runs it as it is (one graph break, no recompiles).
        self._fused_update([params, grads, reals, imags], [beta_r, beta_i, float(lr), weight_decay])


def _gradient_weights(states, dampening):
    """``1 − τ`` per tensor, ``1`` on a tensor's first step (torch's SGD seeds the buffer with ``g``)."""
    for s in states:
        if "step" not in s:  # dampening switched on after the buffers were made: not a first step
            s["step"] = torch.tensor(1.0)
    steps = [s["step"] for s in states]
    torch._foreach_add_(steps, 1)
    if torch.compiler.is_compiling():
        return [torch.where(t == 1, 1.0, 1.0 - dampening) for t in steps]
    return [1.0 if t.item() == 1 else 1.0 - dampening for t in steps]


# The paths compute  μr ← Re β·μr − Im β·μi − w·g,  μi ← Im β·μr + Re β·μi,  p ← p + lr·μr, with w = 1 − τ
# (1 on the first step); nesterov: p ← p − lr·(g − Re β·μr + Im β·μi). With Im β = 0 the imaginary terms are
# skipped and w = 1 uses no multiply, which keeps angle=0 bit-identical to torch's SGD.

def _single_tensor(params, grads, reals, imags, beta_r, beta_i, lr, weight_decay, fresh=1.0, nesterov=False):
    for i, (p, g, real, imag) in enumerate(zip(params, grads, reals, imags)):
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        if beta_i != 0:
            rotated = imag.mul(beta_i)
            imag.mul_(beta_r).add_(real, alpha=beta_i)
            real.mul_(beta_r).sub_(rotated)
        else:
            imag.mul_(beta_r)
            real.mul_(beta_r)
        weight = fresh if isinstance(fresh, float) else fresh[i]
        if isinstance(weight, torch.Tensor):
            real.sub_(g * weight)
        elif weight == 1.0:
            real.sub_(g)
        else:
            real.sub_(g, alpha=weight)
        if nesterov:
            direction = g.add(real, alpha=-beta_r)
            if beta_i != 0:
                direction.add_(imag, alpha=beta_i)
            _axpy_(p, direction, -lr)
        else:
            _axpy_(p, real, lr)


def _multi_tensor(params, grads, reals, imags, beta_r, beta_i, lr, weight_decay, fresh=1.0, nesterov=False):
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
    if isinstance(fresh, float) and fresh == 1.0:
        torch._foreach_sub_(reals, grads)
    elif isinstance(fresh, float):
        torch._foreach_sub_(reals, grads, alpha=fresh)
    elif all(isinstance(w, float) for w in fresh) and len(set(fresh)) == 1:
        torch._foreach_sub_(reals, grads, alpha=fresh[0])
    else:
        for real, g, weight in zip(reals, grads, fresh):  # tensors on their first step among older ones
            if isinstance(weight, torch.Tensor):
                real.sub_(g * weight)
            else:
                real.sub_(g, alpha=weight)
    if nesterov:
        directions = torch._foreach_add(grads, reals, alpha=-beta_r)
        if beta_i != 0:
            torch._foreach_add_(directions, imags, alpha=beta_i)
        steps, sign = directions, -1
    else:
        steps, sign = reals, 1
    if isinstance(lr, torch.Tensor):
        torch._foreach_add_(params, torch._foreach_mul(steps, sign * lr))
    else:
        torch._foreach_add_(params, steps, alpha=sign * lr)


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
