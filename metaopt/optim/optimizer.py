"""The base class every metaopt optimizer derives from.

It follows the shape of ``torch.optim``: a subclass validates its hyperparameters, creates its
per-parameter state lazily, and hands lists of tensors of one param group to a functional core
that dispatches between a per-tensor loop and a multi-tensor (``torch._foreach_*``) path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from metaopt.checks import is_finite_number
from metaopt.checks import require as check_hyperparameter

__all__ = ["Optimizer", "check_hyperparameter"]


class Optimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` whose subclasses only describe their hyperparameters and update.

    Subclasses define:

    * ``_validate(group)``: raise ``ValueError`` for a bad hyperparameter of a param group (called on
      the defaults and on every group added later, before any state exists);
    * ``_init_state(param, group) -> dict``: the per-parameter state created on the first step;
    * ``_update(group, params, grads, states, foreach)``: apply one step in place to the tensors of
      one param group, ``states`` being the state dicts of those parameters in the same order.

    and may define:

    * ``_setup()``: build caches that are not state (compiled kernels); called by ``__init__`` and
      again after ``copy.deepcopy``, unpickling and ``load_state_dict``, which keep only ``defaults``,
      ``state`` and ``param_groups`` (as torch.optim does), so it creates only what is missing;
    * ``_upgrade_state(param_state, group)``: convert one parameter's state loaded from an older
      checkpoint (a plain-number ``step``, a missing buffer) in place.

    The base class gathers the parameters that have gradients, rejects sparse gradients, negates the
    gradients for ``maximize=True`` groups, evaluates the closure, and chooses the multi-tensor path
    when ``foreach`` is ``None`` and every tensor is on CUDA. A complex parameter is optimized as its
    real and imaginary parts, independently (``torch.view_as_real``, as torch.optim does): the update
    sees real views of the parameter, its gradient and its state. A param group loaded without a key
    of ``defaults`` (a checkpoint written before that option existed) gets the default.
    """

    def __init__(self, params: Iterable, defaults: dict[str, Any]):
        defaults.setdefault("maximize", False)
        defaults.setdefault("foreach", None)
        self._validate(defaults)
        super().__init__(params, defaults)
        self._setup()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                if key != "params":
                    group.setdefault(key, value)
            for p in group["params"]:
                if self.state.get(p):
                    self._upgrade_state(self.state[p], group)
        self._setup()

    # -- hooks for subclasses ------------------------------------------------------------------
    def _validate(self, group: dict[str, Any]) -> None:
        from metaopt.optim.specs import spec_for  # the specs name the subclasses: imported when one is built

        spec = spec_for(type(self))
        if spec is not None:  # the domains declared once, in metaopt.optim.specs
            spec.check_group(group)
        else:
            lr = group.get("lr")
            if lr is not None:
                check_hyperparameter("lr", lr, is_finite_number(lr) and float(lr) >= 0.0, "a finite number >= 0")
            wd = group.get("weight_decay", 0.0)
            check_hyperparameter("weight_decay", wd, is_finite_number(wd) and float(wd) >= 0.0,
                                 "a finite number >= 0")
        foreach = group.get("foreach")
        check_hyperparameter("foreach", foreach, foreach in (None, True, False), "None, True or False")

    def _init_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _setup(self) -> None:
        pass

    def _upgrade_state(self, param_state: dict[str, Any], group: dict[str, Any]) -> None:
        pass

    def _update(
        self,
        group: dict[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        states: list[dict[str, Any]],
        foreach: bool,
    ) -> None:
        raise NotImplementedError

    # -- torch.optim.Optimizer interface ---------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._validate(merged)
        super().add_param_group(param_group)

    @staticmethod
    def _use_foreach(foreach: bool | None, params: list[torch.Tensor]) -> bool:
        """``foreach=None`` picks the multi-tensor path on CUDA only, as torch.optim does: on CPU the
        ``_foreach_*`` ops are a loop over tensors, and the in-place per-tensor loop allocates less."""
        if foreach is not None:
            return foreach
        return len(params) > 1 and all(p.device.type == "cuda" for p in params)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):  # type: ignore[override]
        """Take one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, states, complex_states = [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients; "
                        "use torch.optim.SparseAdam or densify the gradient"
                    )
                state = self.state[p]
                if not state:
                    state.update(self._init_state(p, group))
                if torch.is_complex(p):
                    params.append(torch.view_as_real(p))
                    grads.append(torch.view_as_real(p.grad))
                    states.append(_real_views(state))
                    complex_states.append((state, states[-1], params[-1].shape))
                else:
                    params.append(p)
                    grads.append(p.grad)
                    states.append(state)
            if not params:
                continue
            foreach = self._use_foreach(group["foreach"], params)
            if group["maximize"]:
                grads = torch._foreach_neg(grads) if foreach else [-g for g in grads]
            self._update(group, params, grads, states, foreach)
            for state, views, shape in complex_states:  # state the update created (one an older state lacked)
                for key in views.keys() - state.keys():
                    value = views[key]
                    is_view = isinstance(value, torch.Tensor) and value.shape == shape
                    state[key] = torch.view_as_complex(value) if is_view else value
        return loss


def _real_views(state: dict[str, Any]) -> dict[str, Any]:
    """The state of a complex parameter with its complex tensors viewed as real (same storage)."""
    return {k: torch.view_as_real(v) if isinstance(v, torch.Tensor) and torch.is_complex(v) else v
            for k, v in state.items()}


def hyper_value(value: float | torch.Tensor) -> float | torch.Tensor:
    """A hyperparameter as the update should read it: a Python float eagerly (the arithmetic of
    torch.optim, bit for bit), the 0-d tensor itself inside ``torch.compile`` (so that a tensor lr
    changed by a scheduler is a graph input, not a constant that recompiles the step)."""
    if isinstance(value, torch.Tensor):
        return value if torch.compiler.is_compiling() else value.item()
    return value
