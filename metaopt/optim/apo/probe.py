"""Reading the base optimizer's direction ``d`` off one of its steps: ``d = (θ − θ_after)/lr``.

APO needs a base whose update is ``lr·d`` with ``d`` and the state independent of ``lr`` (SGD,
momentum, Adam(W), RMSprop, Adagrad, ...). That is checked once, on the first probe, by stepping at
two learning rates; optimizers whose step is not of that form (Rprop's step sizes, LBFGS's line
search over a closure) are refused with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.optim.optimizer as _optim

__all__ = ["PROBE_LR", "check_base_factory", "base_directions", "check_linear_in_lr", "unhooked_step"]

# The base's direction is read off as (θ − θ_after)/lr. A large power of two keeps the difference
# well above the rounding of θ, so that d is exact to the params' precision even in bfloat16.
PROBE_LR = 1024.0
# Relative gap between the directions read at PROBE_LR and PROBE_LR/2 above which the base's step is
# not linear in its lr (bfloat16 reads d to about 2⁻⁸; Rprop's steps differ by a factor of two).
LINEARITY_TOLERANCE = 0.05

_CLOSURE_BASED = (torch.optim.LBFGS,)


def _refuse_closure_based(cls: Any) -> None:
    if isinstance(cls, type) and issubclass(cls, _CLOSURE_BASED):
        raise ValueError(f"invalid base: {cls.__name__!r} (allowed: an optimizer whose step is lr·d without a "
                         "closure; APO reads d off a step with no closure to call, and LBFGS's step is a line "
                         "search over its closure, not lr·d)")


def check_base_factory(base: Callable[..., torch.optim.Optimizer] | torch.optim.Optimizer) -> None:
    """Refuse a closure-based base (LBFGS) before anything is built."""
    if isinstance(base, torch.optim.Optimizer):
        _refuse_closure_based(type(base))
    else:
        _refuse_closure_based(getattr(base, "func", base))


def unhooked_step(optimizer: torch.optim.Optimizer) -> Callable[..., Any]:
    """``optimizer.step``, or its body without torch's per-call wrapper (a profiler range and the step
    hooks) where nothing is hooked to it: no step hooks of its own or global ones, no per-instance
    ``step`` (an LR scheduler's). APO calls its base's and its meta-optimizer's steps inside its own
    wrapped step, and a second wrapper costs a few percent of a small model's step."""
    step = type(optimizer).step
    if (getattr(step, "hooked", False) and hasattr(step, "__wrapped__") and "step" not in vars(optimizer)
            and not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks
            and not _optim._global_optimizer_pre_hooks and not _optim._global_optimizer_post_hooks):
        return step.__wrapped__.__get__(optimizer)
    return optimizer.step


def _clone_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


@torch.no_grad()
def base_directions(base: torch.optim.Optimizer, keep_state: bool, lr: float = PROBE_LR,
                    state_after: dict | None = None) -> list[torch.Tensor | None]:
    """The base's direction ``d`` (its step at ``lr = 1``) per tensor of its groups; params left untouched.

    ``keep_state=False`` also restores the base's state (a pure probe); ``state_after``, if given,
    receives a copy of the state the step made. ``keep_state=True`` keeps that state, so that a caller
    applying ``−η·d`` itself advances the base exactly once per step.
    """
    params = [p for group in base.param_groups for p in group["params"]]
    with_grad = [p for p in params if p.grad is not None]
    saved_params = [p.clone() for p in with_grad]  # (a foreach op with a scalar costs twice as much)
    saved_state = {} if keep_state else {
        p: _clone_state(base.state[p]) if p in base.state else None for p in with_grad}
    saved_lrs = [group["lr"] for group in base.param_groups]
    for group in base.param_groups:
        group["lr"] = lr
    try:
        unhooked_step(base)()
        steps = torch._foreach_sub(saved_params, with_grad)
        torch._foreach_div_(steps, lr)
        if state_after is not None:
            state_after.update({p: _clone_state(base.state[p]) for p in with_grad if p in base.state})
    finally:
        torch._foreach_copy_(with_grad, saved_params)
        for p in saved_state:
            if saved_state[p] is None:
                base.state.pop(p, None)
            else:
                base.state[p] = saved_state[p]
        for group, saved_lr in zip(base.param_groups, saved_lrs):
            group["lr"] = saved_lr
    directions = dict(zip(with_grad, steps))
    return [directions.get(p) for p in params]


def _relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def check_linear_in_lr(base: torch.optim.Optimizer) -> bool:
    """Whether one step of ``base`` (at the current gradients) is ``lr·d`` with ``d`` and the new state
    independent of ``lr``; raise a ``ValueError`` naming the base where it is not. Returns False when
    the probe could not tell (non-finite directions), so that the caller asks again later."""
    states: list[dict] = [{}, {}]
    low = base_directions(base, keep_state=False, lr=PROBE_LR / 2, state_after=states[0])
    high = base_directions(base, keep_state=False, lr=PROBE_LR, state_after=states[1])
    pairs = [(a, b) for a, b in zip(low, high) if a is not None]
    if not all(bool(torch.isfinite(a).all() and torch.isfinite(b).all()) for a, b in pairs):
        return False
    problem = None
    if any(_relative_gap(a, b) > LINEARITY_TOLERANCE for a, b in pairs if b.abs().max() > 0):
        problem = "its step at lr is not lr times a direction independent of lr"
    else:
        for p, state in states[1].items():
            for key, value in state.items():
                other = states[0].get(p, {}).get(key)
                if (isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor) and value.is_floating_point()
                        and value.numel()):
                    if _relative_gap(other, value) > LINEARITY_TOLERANCE and value.abs().max() > 0:
                        problem = f"its state {key!r} depends on lr"
                        break
            if problem:
                break
    if problem:
        raise ValueError(f"invalid base: {type(base).__name__!r} (allowed: an optimizer whose update is lr·d "
                         f"with d and its state independent of lr, such as SGD, Adam(W), RMSprop or Adagrad; "
                         f"{problem}, so APO's learned η (or P) would not scale its step)")
    return True
