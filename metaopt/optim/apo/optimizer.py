"""The APO optimizer: a ``torch.optim.Optimizer`` that wraps a base optimizer and meta-learns, online,
the parameters φ of its update (a learning rate, :mod:`.lr`, or a preconditioner, :mod:`.precond`)
on the proximal meta-objective of :mod:`.objective`."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from metaopt.checks import require
from metaopt.optim.apo import divergence as divergences
from metaopt.optim.apo import probe
from metaopt.optim.apo.lr import LearnedLR
from metaopt.optim.apo.objective import Layout, model_layout, proximal_objective
from metaopt.optim.apo.precond import KroneckerPrecond

__all__ = ["APO"]

_MODES = ("lr", "precond")
# state_dict layout: 2 since φ of mode="lr" is a log-factor of the group's lr (1: log η, η in the group).
_FORMAT = 2
# Attributes a copy or a pickle does not take: caches rebuilt on demand, the model layout (a weak
# reference), torch's hooks (dropped by torch.optim's own __getstate__ too) and the per-instance step
# wrapper an LR scheduler installs (it calls the original optimizer through a weak reference).
_NOT_COPIED = ("_layout", "step", "_opt_called", "_optimizer_step_pre_hooks", "_optimizer_step_post_hooks",
               "_optimizer_state_dict_pre_hooks", "_optimizer_state_dict_post_hooks",
               "_optimizer_load_state_dict_pre_hooks", "_optimizer_load_state_dict_post_hooks")


def _finite_nonnegative(value: Any) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and value >= 0


def _meta_adam(params: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """The default meta-optimizer: Adam, fused where torch has that kernel (φ is a handful of small
    tensors, so a meta-update costs mostly per-call overhead, which the fused step cuts by a third)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:  # no fused kernel for this device or dtype
        return torch.optim.Adam(params, lr=lr)


def _default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(inputs)`` for a batch ``(inputs, targets)`` (B), or for a batch that is the inputs (B')."""
    return model(batch[0] if isinstance(batch, (tuple, list)) else batch)


def _default_inputs(batch: Any) -> Any:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class APO(torch.optim.Optimizer):
    """Wrap ``base``; meta-learn its learning rate (``mode="lr"``) or a preconditioner (``mode="precond"``).

    Args:
        params: the parameters to train (an iterable of tensors or of param-group dicts).
        base: the base optimizer: a factory ``params -> torch.optim.Optimizer`` (a class such as
            ``torch.optim.SGD``, a ``functools.partial``), or an optimizer already built on ``params``.
            Its update must be ``lr·d`` with ``d`` and its state independent of ``lr`` (SGD, momentum,
            Adam(W), RMSprop, Adagrad, ...): its direction ``d`` is read off a step at a probe lr, and
            the first probe checks that form (a base such as Rprop is refused then; LBFGS, whose step
            is a line search over a closure, at construction).
        mode: ``"lr"``: ``θ' = θ − η·d`` with ``d`` the base's direction (its step at ``lr = 1``: the
            gradient, the momentum buffer, Adam's normalised step) and ``η = exp(a)·lr`` learned
            (:mod:`metaopt.optim.apo.lr`). ``"precond"``: ``θ' = θ − lr·P·d`` with ``P`` block-diagonal
            per tensor, Kronecker-factored for matrices (:mod:`metaopt.optim.apo.precond`).
            In both, ``lr`` is the param group's ``"lr"`` (the base's): an LR scheduler attached to
            APO changes it, and so multiplies what APO learned; ``apo.lrs`` (``mode="lr"``) is the η
            of every group, ``precond_scales()`` the mean eigenvalue of every ``lr·P``.
        lambda_fsd: ``λ_FSD``, weight of the function-space proximity term (``0``: none).
        lambda_wsd: ``λ_WSD``, weight of the weight-space proximity term (``0``: none).
            ``λ_FSD = λ_WSD = 0`` is greedy one-step tuning, which is short-horizon biased.
        meta_interval: ``K_meta``, steps between meta-updates of φ (the first step is one).
        meta_lr: the meta-optimizer's learning rate.
        meta_optimizer: a factory ``(params, lr=meta_lr) -> torch.optim.Optimizer`` for φ
            (default ``torch.optim.Adam``, ``fused=True`` where torch has that kernel).
        divergence: ``D``: ``"mse"`` (regression outputs), ``"kl"`` (class logits), a callable
            ``(outputs, targets) -> scalar`` with ``targets`` the detached outputs at θ, or ``None``
            (default): ``"kl"`` for class logits against integer labels, ``"mse"`` for outputs against
            float targets of their shape, and a ``ValueError`` asking for it otherwise.
        lr_per_group: ``mode="lr"``: one η per param group (``True``) or one learned factor for all
            groups, which keeps the ratios of their lrs (``False``).
        max_factor_size: ``mode="precond"``: the largest side that gets a full Kronecker factor.

    Use it in an ordinary loop; only the ``meta_step`` line is new (it is a no-op except every
    ``meta_interval`` steps, and ``fresh_batch`` may be a callable that is only called then)::

        opt = APO(model.parameters(), functools.partial(torch.optim.SGD, lr=1e-3), lambda_fsd=0.1)
        for inputs, targets in loader:
            opt.zero_grad()
            loss_fn(model(inputs), targets).backward()
            opt.meta_step(model, (inputs, targets), lambda: next(fresh_loader)[0], loss_fn)
            opt.step()
            print(opt.lrs[0])  # the η APO currently uses

    Batches of another form (dicts, several inputs) take ``forward(model, batch) -> outputs`` and
    ``loss(outputs, batch) -> scalar`` instead of ``loss_fn``. ``state_dict()`` holds the base's state,
    φ and the meta-optimizer's state, and runs torch's state-dict hooks.

    References:
        J. Bae, P. Vicol, J. Z. HaoChen, R. Grosse. "Amortized Proximal Optimization", NeurIPS 2022
        (arXiv:2203.00089): the meta-objective Q(φ) at a one-step lookahead (Fig. 2), learning-rate
        adaptation, and Kronecker-factored preconditioner adaptation without inverses.
    """

    def __init__(self, params: Iterable, base: Callable[..., torch.optim.Optimizer] | torch.optim.Optimizer,
                 mode: str = "lr", *, lambda_fsd: float = 0.1, lambda_wsd: float = 0.0,
                 meta_interval: int = 10, meta_lr: float = 0.1,
                 meta_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
                 divergence: str | divergences.Divergence | None = None, lr_per_group: bool = True,
                 max_factor_size: int = 1024):
        require("mode", mode, mode in _MODES, f"one of {_MODES}")
        require("lambda_fsd", lambda_fsd, _finite_nonnegative(lambda_fsd), "a finite number >= 0")
        require("lambda_wsd", lambda_wsd, _finite_nonnegative(lambda_wsd), "a finite number >= 0")
        require("meta_interval", meta_interval,
                isinstance(meta_interval, int) and not isinstance(meta_interval, bool) and meta_interval >= 1,
                "an integer >= 1")
        require("meta_lr", meta_lr, _finite_nonnegative(meta_lr), "a finite number >= 0")
        require("divergence", divergence,
                divergence is None or callable(divergence) or divergence in divergences.DIVERGENCES,
                f"one of {tuple(divergences.DIVERGENCES)}, None (inferred) or a callable "
                "(outputs, targets) -> scalar tensor")
        require("max_factor_size", max_factor_size, isinstance(max_factor_size, int) and max_factor_size >= 1,
                "an integer >= 1")
        probe.check_base_factory(base)
        params = list(params)
        if isinstance(base, torch.optim.Optimizer):
            groups = params if params and isinstance(params[0], dict) else [{"params": params}]
            given = {id(p) for group in groups for p in group["params"]}
            owned = {id(p) for group in base.param_groups for p in group["params"]}
            require("base", type(base).__name__, given == owned, "an optimizer built on the same params as APO")
            self.base = base
        else:
            require("base", base, callable(base), "a torch.optim.Optimizer or a factory params -> Optimizer")
            self.base = base(params)
            probe.check_base_factory(self.base)
        self.mode = mode
        self.rule = LearnedLR(lr_per_group) if mode == "lr" else KroneckerPrecond(max_factor_size)
        self.lambda_fsd = float(lambda_fsd)
        self.lambda_wsd = float(lambda_wsd)
        self.meta_interval = meta_interval
        self.meta_lr = float(meta_lr)
        self.divergence = divergence
        self._num_steps = 0
        self._num_meta_steps = 0
        self._last_q = float("nan")
        self._warned_no_meta_step = False
        self._checked_linear = False
        self._inferred_divergence: str | None = None
        self._pending_directions: list[torch.Tensor | None] | None = None
        self._layout: Layout | None = None
        # The param-group dicts are the base's own, so that hyperparameters set through APO (and a
        # scheduler's lr) are the ones the base uses.
        super().__init__(self.base.param_groups, self.base.defaults)
        self._share_base_groups()
        for group in self.param_groups:
            self._add_meta_params(group)
        flat = [t for group in self.rule.meta_params for t in group]
        self.meta_optimizer = (meta_optimizer or _meta_adam)(self.rule.meta_param_groups(flat, self.meta_lr),
                                                             lr=self.meta_lr)
        self.rule.refresh(self.param_groups)

    def _share_base_groups(self) -> None:
        # The base's ``load_state_dict`` builds new group dicts and a new state: share them again.
        self.param_groups = self.base.param_groups
        self.state = self.base.state

    def _add_meta_params(self, group: dict[str, Any]) -> list[torch.Tensor]:
        lr = group.get("lr")
        require("base lr", lr, isinstance(lr, (int, float, torch.Tensor)) and math.isfinite(float(lr))
                and float(lr) > 0, "a number > 0 (APO learns a factor of the base optimizer's lr)")
        first = group["params"][0]
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        return self.rule.add_group(group, dtype, first.device)

    @property
    def _meta_params(self) -> list[list[torch.Tensor]]:
        """φ, per param group."""
        return self.rule.meta_params

    # -- reading the schedule ------------------------------------------------------------------------
    @property
    def meta_due(self) -> bool:
        """Whether ``meta_step`` updates φ before the next ``step`` (every ``meta_interval`` steps)."""
        return self._num_steps % self.meta_interval == 0

    @property
    def lrs(self) -> list[float]:
        """``mode="lr"``: the current η of every param group (the learned factor times the group's lr)."""
        require("mode", self.mode, self.mode == "lr", "'lr' for apo.lrs (precond_scales() in 'precond')")
        return self.rule.step_lrs(self.param_groups)

    def precond_scales(self) -> list[float]:
        """``mode="precond"``: per tensor, the mean eigenvalue ``lr·exp(c)·tr(LLᵀ)/m·tr(RRᵀ)/n`` of its ``P``."""
        require("mode", self.mode, self.mode == "precond", "'precond' for precond_scales() (apo.lrs in 'lr')")
        return self.rule.scales(self.param_groups)

    def schedule(self) -> dict[str, float]:
        """What to log each step: ``lr`` (group 0's η, plus ``lr_<i>`` for other groups) or ``precond_scale``
        (geometric mean over tensors), and ``apo_q``, the meta-objective at the last meta-step."""
        out = self.rule.schedule(self.param_groups)
        out["apo_q"] = self._last_q
        return out

    # -- the meta-step -------------------------------------------------------------------------------
    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _check_ready(self, model: nn.Module) -> Layout:
        """The clear errors, raised before the probe touches the base; the model's layout."""
        self._layout = model_layout(model, self._params(), self._layout)
        if all(p.grad is None for p in self._params()):
            raise RuntimeError("APO needs the gradients of the loss on `batch`: call loss.backward() before "
                               "meta_step()")
        return self._layout

    def _directions(self, keep_state: bool) -> list[torch.Tensor | None]:
        if not self._checked_linear:
            self._checked_linear = probe.check_linear_in_lr(self.base)
        return probe.base_directions(self.base, keep_state)

    def _callables(self, batch: Any, loss_fn: Callable | None, forward: Callable | None, loss: Callable | None):
        """``(forward, loss, inputs_of, targets)`` for the simple form ``batch = (inputs, targets)`` with
        ``loss_fn(outputs, targets)``, or for the user's ``forward(model, batch)``/``loss(outputs, batch)``."""
        require("loss", "both loss_fn and loss", loss_fn is None or loss is None,
                "one of loss_fn(outputs, targets) and loss(outputs, batch)")
        if loss is not None:
            return forward or _default_forward, loss, None if forward else _default_inputs, None
        simple = isinstance(batch, (tuple, list)) and len(batch) == 2
        if not simple or loss_fn is None:
            raise ValueError(
                f"APO's simple form takes batch=(inputs, targets) and loss_fn(outputs, targets); got a batch of "
                f"type {type(batch).__name__} and {'no loss_fn' if loss_fn is None else 'a loss_fn'}: for other "
                "batches pass forward=lambda model, batch: ... and loss=lambda outputs, batch: ... (and a fresh "
                "batch of the same kind)")
        return (forward or _default_forward, lambda outputs, b: loss_fn(outputs, b[1]),
                None if forward else _default_inputs, batch[1])

    def _divergence_for(self, targets: Any) -> Callable[[Any], str | divergences.Divergence]:
        def choose(target_outputs: Any) -> str | divergences.Divergence:
            if self.divergence is not None:
                return self.divergence
            if self._inferred_divergence is None:
                if targets is None:
                    raise ValueError("APO cannot infer the output divergence with a custom loss: pass "
                                     "divergence='kl', 'mse' or a callable (outputs, targets) -> scalar")
                self._inferred_divergence = divergences.infer_divergence(target_outputs, targets)
            return self._inferred_divergence
        return choose

    def _objective(self, model: nn.Module, layout: Layout, batch: Any, fresh_batch: Any, callables: tuple,
                   directions: list[torch.Tensor | None]) -> torch.Tensor:
        forward, loss, inputs_of, targets = callables
        with torch.enable_grad():
            steps = self.rule.lookahead_steps(self.param_groups, directions)
        return proximal_objective(model, layout, self._params(), steps, batch, fresh_batch, forward=forward,
                                  loss=loss, divergence=self._divergence_for(targets), lambda_fsd=self.lambda_fsd,
                                  lambda_wsd=self.lambda_wsd, inputs_of=inputs_of)

    def meta_objective(self, model: nn.Module, batch: Any, fresh_batch: Any, loss_fn: Callable | None = None, *,
                       forward: Callable[[nn.Module, Any], Any] | None = None,
                       loss: Callable[[Any, Any], torch.Tensor] | None = None) -> torch.Tensor:
        """``Q(φ)`` at the current parameters (the paper's meta-objective), differentiable in φ only.

        Needs ``.grad`` to hold ``∇J_B(θ)`` for ``batch``; ``fresh_batch`` is ``B'`` (in the simple form,
        the inputs of a fresh batch). The lookahead runs ``model`` with detached parameters swapped in
        (``torch.func.functional_call`` on cloned buffers with BatchNorm): neither the model, its
        buffers, nor the base optimizer's state change.
        """
        callables = self._callables(batch, loss_fn, forward, loss)
        layout = self._check_ready(model)
        return self._objective(model, layout, batch, fresh_batch, callables, self._directions(keep_state=False))

    def meta_step(self, model: nn.Module, batch: Any, fresh_batch: Any | Callable[[], Any],
                  loss_fn: Callable | None = None, *, forward: Callable[[nn.Module, Any], Any] | None = None,
                  loss: Callable[[Any, Any], torch.Tensor] | None = None) -> float | None:
        """If ``meta_due``: a meta-optimizer step on ``Q(φ)`` (``meta_objective``); return ``Q`` or ``None``.

        Call it after ``loss.backward()`` and right before ``step()``. ``fresh_batch`` may be a callable
        returning ``B'``, called only when a meta-step is due. The base's update of this step is computed
        here (at ``lr = 1``, the params restored) and ``step()`` applies it scaled by the new η (or
        preconditioned by the new ``P``): one base update per step, as without APO.
        """
        if not self.meta_due:
            return None
        self._warned_no_meta_step = True
        if callable(fresh_batch):
            fresh_batch = fresh_batch()
        callables = self._callables(batch, loss_fn, forward, loss)  # (the clear errors before the probe)
        layout = self._check_ready(model)
        self._pending_directions = self._directions(keep_state=True)
        q = self._objective(model, layout, batch, fresh_batch, callables, self._pending_directions)
        for group in self.rule.meta_params:  # the meta-optimizer's zero_grad(set_to_none=True), minus its wrapper
            for t in group:
                t.grad = None
        self._last_q = float(q.detach())
        if math.isfinite(self._last_q):  # a lookahead that overflowed says nothing about φ: keep it
            q.backward()
            probe.unhooked_step(self.meta_optimizer)()
            self.rule.refresh(self.param_groups)
        self._num_meta_steps += 1
        return self._last_q

    # -- torch.optim.Optimizer interface -------------------------------------------------------------
    def step(self, closure: Callable[[], torch.Tensor] | None = None):  # type: ignore[override]
        """One step: the base's update at the current η (``mode="lr"``), or preconditioned by ``P``.

        Runs eagerly inside ``torch.compile`` (dynamo skips it: the probe and the meta-step mutate
        the base), so that a compiled training step does not recompile at every meta-step."""
        if torch.compiler.is_compiling():  # (dynamo's skip wrapper costs microseconds at every eager step)
            return self._eager_step(closure)
        return self._step(closure)

    def _step(self, closure: Callable[[], torch.Tensor] | None):
        if self._num_steps >= self.meta_interval and not self._warned_no_meta_step:
            warnings.warn("APO.step() has run a full meta_interval without meta_step(): φ is not being "
                          "adapted; call apo.meta_step(model, batch, fresh_batch, loss_fn) before step()")
            self._warned_no_meta_step = True
        self._num_steps += 1
        if self.mode == "lr" and self._pending_directions is None:
            return self._base_step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        directions = self._pending_directions
        self._pending_directions = None
        if directions is None:
            directions = self._directions(keep_state=True)
        self.rule.apply(self.param_groups, directions)
        return loss

    _eager_step = torch._disable_dynamo(_step)

    def _base_step(self, closure: Callable[[], torch.Tensor] | None):
        """``self.base.step(closure)`` at the learned η, without torch's per-call profiling and hook wrapper
        where nothing is hooked to the base (``probe.unhooked_step``): ``APO.step`` already runs inside
        that wrapper (profiler range, step hooks)."""
        groups = self.param_groups
        if len(groups) == 1:  # (the common case, without the lists)
            group = groups[0]
            scheduled = group["lr"]
            group["lr"] = self.rule.step_lrs(groups)[0]
            try:
                return probe.unhooked_step(self.base)(closure)
            finally:
                group["lr"] = scheduled
        scheduled = [group["lr"] for group in groups]
        for group, eta in zip(groups, self.rule.step_lrs(groups)):
            group["lr"] = eta
        try:
            return probe.unhooked_step(self.base)(closure)
        finally:
            for group, lr in zip(groups, scheduled):
                group["lr"] = lr

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not hasattr(self, "rule") or not hasattr(self, "meta_optimizer"):
            super().add_param_group(param_group)  # torch.optim.Optimizer.__init__ adding the base's groups
            return
        self.base.add_param_group(param_group)
        meta = self._add_meta_params(self.base.param_groups[-1])
        for meta_group in self.rule.meta_param_groups(meta, self.meta_lr):
            self.meta_optimizer.add_param_group(meta_group)
        self.rule.refresh(self.param_groups)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base's state dict, φ, the meta-optimizer's state dict and APO's counters; torch's
        ``register_state_dict_pre_hook``/``post_hook`` hooks run as for any optimizer."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state = {
            "base": self.base.state_dict(),
            "meta_params": [[t.detach().clone() for t in group] for group in self.rule.meta_params],
            "meta_optimizer": self.meta_optimizer.state_dict(),
            "num_steps": self._num_steps,
            "num_meta_steps": self._num_meta_steps,
            "last_q": self._last_q,
            "format": _FORMAT,
        }
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state)
            if result is not None:
                state = result
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Restore ``state_dict()``; torch's ``register_load_state_dict_pre_hook``/``post_hook`` hooks run."""
        state_dict = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        shapes = [[tuple(t.shape) for t in group] for group in self.rule.meta_params]
        saved = [[tuple(t.shape) for t in group] for group in state_dict["meta_params"]]
        require("state_dict['meta_params']", saved, saved == shapes, f"shapes {shapes} (the same mode and params)")
        self.base.load_state_dict(state_dict["base"])
        self._share_base_groups()
        with torch.no_grad():
            for group, values in zip(self.rule.meta_params, state_dict["meta_params"]):
                for t, value in zip(group, values):
                    t.copy_(value)
            if self.mode == "lr" and state_dict.get("format", 1) < 2:
                # Format 1 learned log η and wrote η into the groups' lr: as a factor of that lr, it is 0.
                for group, meta in zip(self.param_groups, self.rule.meta_params):
                    for t in meta:
                        t.sub_(math.log(float(group["lr"])))
        self.meta_optimizer.load_state_dict(state_dict["meta_optimizer"])
        self._num_steps = int(state_dict["num_steps"])
        self._num_meta_steps = int(state_dict["num_meta_steps"])
        self._last_q = float(state_dict["last_q"])
        self._warned_no_meta_step = self._num_meta_steps > 0
        self._pending_directions = None
        self.rule.refresh(self.param_groups)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in _NOT_COPIED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # torch.optim: empty hook dicts, the patched step
        self._layout = None
        self._share_base_groups()
