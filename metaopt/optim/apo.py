"""APO: Amortized Proximal Optimization (Bae, Vicol, HaoChen and Grosse, NeurIPS 2022).

APO meta-learns, online and during ordinary training, the parameters φ of an update rule
``θ' = u_φ(θ, B)`` by taking, every ``meta_interval`` steps, one gradient step on the one-step
proximal-point objective at the lookahead ``θ'(φ)`` (the paper's meta-objective, its Fig. 2)::

    Q(φ) = J_B(θ') + λ_FSD·D(f(·, θ'), f(·, θ); B') + (λ_WSD/2)·‖θ' − θ‖²

where ``J_B`` is the loss on the batch ``B`` that produced the gradient, ``D`` an output-space
divergence measured on a *fresh* batch ``B'`` with ``f(·, θ)`` a constant target, and θ, the base
direction and the targets are detached, so that ``Q`` is differentiable in φ only.
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from metaopt.checks import require

__all__ = ["APO", "divergence_for"]

Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_MODES = ("lr", "precond")


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``½·mean((f' − f)²)``, the scale of a regression task's loss; its Hessian: the Gauss–Newton metric."""
    return 0.5 * (outputs - targets).square().mean()


def _kl(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(f) ‖ softmax(f'))`` averaged over the batch; its Hessian at ``f' = f`` is the Fisher."""
    log_p, log_q = F.log_softmax(targets, -1), F.log_softmax(outputs, -1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")


_DIVERGENCES: dict[str, Divergence] = {"mse": _mse, "kl": _kl}
_KIND_TO_DIVERGENCE = {"regression": "mse", "classification": "kl"}


class _Layout(NamedTuple):
    """Where a model holds APO's params (``slots``: module, attribute, index into APO's params) and its
    other params (``other_slots``: module, attribute, param); cached between meta-steps."""

    model: weakref.ref
    names: list[str]
    slots: list[tuple[nn.Module, str, int]]
    other_slots: list[tuple[nn.Module, str, torch.Tensor]]
    batch_norm: bool


def divergence_for(kind: str) -> str:
    """The paper's output divergence for a task ``kind``: ``"mse"`` (regression), ``"kl"`` (classifiers)."""
    require("kind", kind, kind in _KIND_TO_DIVERGENCE, f"one of {tuple(_KIND_TO_DIVERGENCE)}")
    return _KIND_TO_DIVERGENCE[kind]


# The base's direction is read off as (θ − θ_after)/lr. A large power of two keeps the difference
# well above the rounding of θ, so that d is exact to the params' precision even in bfloat16.
_PROBE_LR = 1024.0


def _finite_nonnegative(value: Any) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and value >= 0


def _square_norm(tensor: torch.Tensor) -> torch.Tensor:
    """``‖t‖²`` accumulated in at least float32 (low-precision steps would round it away)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32)).square().sum()


def _as_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor.to(dtype)`` without the call where it is a no-op (a meta-step makes a dozen of them)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _meta_adam(params: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """The default meta-optimizer: Adam, fused where torch has that kernel (φ is a handful of small
    tensors, so a meta-update costs mostly per-call overhead, which the fused step cuts by a third)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:  # no fused kernel for this device or dtype
        return torch.optim.Adam(params, lr=lr)


def _clone_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


class APO(torch.optim.Optimizer):
    """Wrap ``base``; meta-learn its learning rate (``mode="lr"``) or a preconditioner (``mode="precond"``).

    Args:
        params: the parameters to train (an iterable of tensors or of param-group dicts).
        base: the base optimizer: a factory ``params -> torch.optim.Optimizer`` (a class such as
            ``torch.optim.SGD``, a ``functools.partial``), or an optimizer already built on ``params``.
            Its update must be ``lr·d`` with ``d`` and its state independent of ``lr`` (SGD, momentum,
            Adam(W), RMSprop, Adagrad, ...): its direction ``d`` is read off a step at a probe lr.
        mode: ``"lr"``: ``θ' = θ − η·d`` with ``d`` the base's direction (its step at ``lr = 1``: the
            gradient, the momentum buffer, Adam's normalised step) and ``η = exp(a)`` learned, starting
            from the base's ``lr``; APO owns ``group["lr"]``, which always holds the current η (so
            do not also attach an lr scheduler: APO *is* the schedule).
            ``"precond"``: ``θ' = θ − P·d`` with ``P`` block-diagonal per tensor; with an SGD base
            ``d = ∇J`` (the paper's ``θ − P∇J``), with momentum or Adam ``P`` preconditions their step.
            A tensor with two or more dimensions (``nn.Linear`` weight ``m×n``, ``nn.Conv2d`` weight
            ``m×(c·k·k)``) gets ``ΔW = −exp(c)·L Lᵀ D R Rᵀ`` (Kronecker-factored as in K-FAC, PSD by
            construction, no inverse); a side longer than ``max_factor_size`` keeps the identity.
            Fallback for 1-d tensors (biases, norm scales): ``Δb = −exp(c)·d``, a learned per-tensor
            learning rate. ``P`` starts as ``lr·I`` (the base's ``lr``, which then stays 1).
        lambda_fsd: ``λ_FSD``, weight of the function-space proximity term (``0``: none).
        lambda_wsd: ``λ_WSD``, weight of the weight-space proximity term (``0``: none).
            ``λ_FSD = λ_WSD = 0`` is greedy one-step tuning, which is short-horizon biased.
        meta_interval: ``K_meta``, steps between meta-updates of φ (the first step is one).
        meta_lr: the meta-optimizer's learning rate.
        meta_optimizer: a factory ``(params, lr=meta_lr) -> torch.optim.Optimizer`` for φ
            (default ``torch.optim.Adam``, ``fused=True`` where torch has that kernel).
        divergence: ``D``: ``"mse"`` (regression outputs), ``"kl"`` (class logits), or a callable
            ``(outputs, targets) -> scalar`` with ``targets`` the detached outputs at θ.
        lr_per_group: ``mode="lr"``: one η per param group (``True``) or one global scale that keeps
            the groups' initial lr ratios (``False``).
        max_factor_size: ``mode="precond"``: the largest side that gets a full Kronecker factor.

    Use it in an ordinary loop; only the ``meta_step`` line is new (it is a no-op except every
    ``meta_interval`` steps, and ``fresh_inputs`` may be a callable that is only called then)::

        opt = APO(model.parameters(), functools.partial(torch.optim.SGD, lr=1e-3), lambda_fsd=0.1)
        for inputs, targets in loader:
            opt.zero_grad()
            loss_fn(model(inputs), targets).backward()
            opt.meta_step(model, (inputs, targets), lambda: next(fresh_iter)[0], loss_fn)
            opt.step()
            print(opt.param_groups[0]["lr"])  # the η APO currently uses

    ``state_dict()`` holds the base's state, φ and the meta-optimizer's state.

    References:
        J. Bae, P. Vicol, J. Z. HaoChen, R. Grosse. "Amortized Proximal Optimization", NeurIPS 2022
        (arXiv:2203.00089): the meta-objective Q(φ) at a one-step lookahead (Fig. 2), learning-rate
        adaptation, and Kronecker-factored preconditioner adaptation without inverses.
    """

    def __init__(self, params: Iterable, base: Callable[..., torch.optim.Optimizer] | torch.optim.Optimizer,
                 mode: str = "lr", *, lambda_fsd: float = 0.1, lambda_wsd: float = 0.0,
                 meta_interval: int = 10, meta_lr: float = 0.1,
                 meta_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
                 divergence: str | Divergence = "mse", lr_per_group: bool = True,
                 max_factor_size: int = 1024):
        require("mode", mode, mode in _MODES, f"one of {_MODES}")
        require("lambda_fsd", lambda_fsd, _finite_nonnegative(lambda_fsd), "a finite number >= 0")
        require("lambda_wsd", lambda_wsd, _finite_nonnegative(lambda_wsd), "a finite number >= 0")
        require("meta_interval", meta_interval,
                isinstance(meta_interval, int) and not isinstance(meta_interval, bool) and meta_interval >= 1,
                "an integer >= 1")
        require("meta_lr", meta_lr, _finite_nonnegative(meta_lr), "a finite number >= 0")
        require("divergence", divergence, callable(divergence) or divergence in _DIVERGENCES,
                f"one of {tuple(_DIVERGENCES)} or a callable (outputs, targets) -> scalar tensor")
        require("max_factor_size", max_factor_size, isinstance(max_factor_size, int) and max_factor_size >= 1,
                "an integer >= 1")
        params = list(params)
        if isinstance(base, torch.optim.Optimizer):
            groups = params if params and isinstance(params[0], dict) else [{"params": params}]
            given = {id(p) for group in groups for p in group["params"]}
            owned = {id(p) for group in base.param_groups for p in group["params"]}
            require("base", type(base).__name__, given == owned,
                    "an optimizer built on the same params as APO")
            self.base = base
        else:
            require("base", base, callable(base), "a torch.optim.Optimizer or a factory params -> Optimizer")
            self.base = base(params)
        self.mode = mode
        self.lambda_fsd = float(lambda_fsd)
        self.lambda_wsd = float(lambda_wsd)
        self.meta_interval = meta_interval
        self.meta_lr = float(meta_lr)
        self.divergence = divergence
        self.lr_per_group = lr_per_group
        self.max_factor_size = max_factor_size
        self._num_steps = 0
        self._num_meta_steps = 0
        self._last_q = float("nan")
        self._warned_no_meta_step = False
        self._lr_ratios: list[float] = []  # lr_per_group=False: each group's lr / the first group's
        self._lr_ratios_base = 1.0
        self._pending_directions: list[torch.Tensor | None] | None = None
        self._layout: _Layout | None = None
        self._precond_scale = float("nan")
        self._scales: list[float] = []
        self._precond_cache: list[tuple] = []
        # The param-group dicts are the base's own, so schedules written by APO (and read by loggers
        # through ``param_groups[i]["lr"]``) are the ones the base uses.
        super().__init__(self.base.param_groups, self.base.defaults)
        self._share_base_groups()
        self._meta_params: list[list[torch.Tensor]] = []
        for group in self.param_groups:
            self._meta_params.append(self._init_meta_params(group))
        flat = [t for group in self._meta_params for t in group]
        self.meta_optimizer = (meta_optimizer or _meta_adam)(self._meta_groups(flat), lr=self.meta_lr)
        self._apply_meta_params()

    def _share_base_groups(self) -> None:
        # The base's ``load_state_dict`` builds new group dicts and a new state: share them again.
        self.param_groups = self.base.param_groups
        self.state = self.base.state

    # -- φ -------------------------------------------------------------------------------------------
    def _group_lr(self, group: dict[str, Any]) -> float:
        lr = float(group.get("lr", float("nan")))
        require("base lr", group.get("lr"), math.isfinite(lr) and lr > 0,
                "a number > 0 (APO learns log η, starting from the base optimizer's lr)")
        return lr

    def _meta_dtype(self, group: dict[str, Any]) -> tuple[torch.dtype, torch.device]:
        first = group["params"][0]
        return (torch.float64 if first.dtype == torch.float64 else torch.float32), first.device

    def _init_meta_params(self, group: dict[str, Any]) -> list[torch.Tensor]:
        """``[a]`` for one group (``mode="lr"``), or ``[c, L, R, ...]`` per tensor (``mode="precond"``)."""
        lr = self._group_lr(group)
        dtype, device = self._meta_dtype(group)
        if self.mode == "lr":
            if not self.lr_per_group and self._meta_params:
                self._lr_ratios.append(lr / self._lr_ratios_base)
                return []
            self._lr_ratios.append(1.0)
            self._lr_ratios_base = lr
            return [torch.tensor(math.log(lr), dtype=dtype, device=device, requires_grad=True)]
        factors = []
        for p in group["params"]:
            factors.append(torch.tensor(math.log(lr), dtype=dtype, device=device, requires_grad=True))
            if p.dim() >= 2:
                for size in (p.shape[0], math.prod(p.shape[1:])):
                    if size <= self.max_factor_size:
                        factors.append(torch.eye(size, dtype=dtype, device=device, requires_grad=True))
        return factors

    def _meta_groups(self, tensors: list[torch.Tensor]) -> list[dict[str, Any]]:
        """Meta param groups: ``meta_lr`` for log-scales, ``meta_lr / n`` for an ``n×n`` factor.

        An element-wise (Adam-like) step of size ``meta_lr`` on every entry of ``L`` can move its
        spectral norm by ``n·meta_lr``; dividing by ``n`` keeps a meta-step's change of ``P`` of the
        same relative size for every layer width.
        """
        by_lr: dict[float, list[torch.Tensor]] = {}
        for t in tensors:
            by_lr.setdefault(self.meta_lr / (t.shape[0] if t.dim() else 1), []).append(t)
        return [{"params": params, "lr": lr} for lr, params in by_lr.items()]

    def _precond_factors(self, group_index: int):
        """Yield ``(param, log_scale, left or None, right or None)`` for every tensor of a group."""
        group, meta = self.param_groups[group_index], self._meta_params[group_index]
        i = 0
        for p in group["params"]:
            log_scale = meta[i]
            i += 1
            left = right = None
            if p.dim() >= 2:
                if p.shape[0] <= self.max_factor_size:
                    left, i = meta[i], i + 1
                if math.prod(p.shape[1:]) <= self.max_factor_size:
                    right, i = meta[i], i + 1
            yield p, log_scale, left, right

    @staticmethod
    def _precondition(grad: torch.Tensor, log_scale: torch.Tensor, left: torch.Tensor | None,
                      right: torch.Tensor | None) -> torch.Tensor:
        """``P∇ = exp(c)·L Lᵀ ∇ R Rᵀ`` for a matrix-shaped tensor (``exp(c)·∇`` otherwise), computed in
        the factors' precision (at least float32) and returned in the gradient's."""
        if left is None and right is None:
            return _as_dtype(log_scale.exp(), grad.dtype) * grad
        matrix = _as_dtype(grad.reshape(grad.shape[0], -1), log_scale.dtype)
        if left is not None:
            matrix = left @ (left.T @ matrix)
        if right is not None:
            matrix = (matrix @ right) @ right.T
        return _as_dtype(log_scale.exp() * matrix, grad.dtype).reshape(grad.shape)

    @torch.no_grad()
    def _apply_meta_params(self) -> None:
        """Write the current η into the param groups (one host sync per meta-step, none per step)."""
        if self.mode == "lr":
            global_log_lr = self._meta_params[0][0]
            for group, meta, ratio in zip(self.param_groups, self._meta_params, self._lr_ratios):
                log_lr = meta[0] if self.lr_per_group else global_log_lr
                group["lr"] = float(log_lr.exp()) * ratio
        else:
            for group in self.param_groups:
                group["lr"] = 1.0
            self._refresh_precond_cache()

    @torch.no_grad()
    def _refresh_precond_cache(self) -> None:
        """``P`` changes only at meta-steps: keep ``(p, exp(c), exp(c)·LLᵀ or None, RRᵀ or None)`` per tensor,
        so that a step costs two matmuls per matrix and no factor products."""
        self._precond_cache = []
        for index in range(len(self.param_groups)):
            for p, log_scale, left, right in self._precond_factors(index):
                scale = log_scale.exp()
                left_gram = None if left is None else scale * (left @ left.T)
                right_gram = None if right is None else right @ right.T
                if left_gram is None and right_gram is not None:
                    right_gram = scale * right_gram
                grams = [None if g is None else _as_dtype(g, p.dtype) for g in (left_gram, right_gram)]
                self._precond_cache.append((p, _as_dtype(scale, p.dtype), *grams))
        scales = []
        for _, scale, left_gram, right_gram in self._precond_cache:
            if left_gram is None and right_gram is None:
                scales.append(scale.float())
            else:
                trace = [1.0 if g is None else g.float().diagonal().mean() for g in (left_gram, right_gram)]
                scales.append(trace[0] * trace[1])
        self._scales = torch.stack(scales).tolist()  # one host sync per meta-step
        self._precond_scale = math.exp(sum(math.log(s) for s in self._scales) / len(self._scales))

    # -- reading the schedule ------------------------------------------------------------------------
    @property
    def meta_due(self) -> bool:
        """Whether ``meta_step`` updates φ before the next ``step`` (every ``meta_interval`` steps)."""
        return self._num_steps % self.meta_interval == 0

    @property
    def lrs(self) -> list[float]:
        """``mode="lr"``: the current η of every param group."""
        return [float(group["lr"]) for group in self.param_groups]

    def precond_scales(self) -> list[float]:
        """``mode="precond"``: per tensor, the mean eigenvalue ``exp(c)·tr(LLᵀ)/m·tr(RRᵀ)/n`` of its ``P``."""
        return list(self._scales)

    def schedule(self) -> dict[str, float]:
        """What to log each step: ``lr`` (group 0's η, plus ``lr_<i>`` for other groups) or ``precond_scale``
        (geometric mean over tensors), and ``apo_q``, the meta-objective at the last meta-step."""
        if self.mode == "lr":
            out = {"lr": self.lrs[0]}
            out.update({f"lr_{i}": lr for i, lr in enumerate(self.lrs) if i > 0})
        else:
            out = {"precond_scale": self._precond_scale}
        out["apo_q"] = self._last_q
        return out

    # -- the meta-step -------------------------------------------------------------------------------
    def _model_layout(self, model: nn.Module) -> _Layout:
        """Where the optimizer's params and the model's other params live in ``model``, and whether it
        holds BatchNorm; cached per model (re-derived when a slot no longer holds the same param)."""
        params = [p for group in self.param_groups for p in group["params"]]
        layout = self._layout
        if layout is not None and layout.model() is model and len(layout.names) == len(params) and all(
                module._parameters.get(attr) is params[i] for module, attr, i in layout.slots):
            return layout
        by_id = {id(p): name for name, p in model.named_parameters(remove_duplicate=False)}
        missing = sum(id(p) not in by_id for p in params)
        require("model", type(model).__name__, missing == 0,
                f"the module whose parameters APO optimizes ({missing} of the optimizer's {len(params)} "
                "parameters are not parameters of this model)")
        index = {id(p): i for i, p in enumerate(params)}
        slots, other_slots = [], []
        for module in model.modules():  # every place a param sits (tied params sit in several)
            for attr, p in module._parameters.items():
                if p is not None:
                    (slots.append((module, attr, index[id(p)])) if id(p) in index
                     else other_slots.append((module, attr, p)))
        self._layout = _Layout(weakref.ref(model), [by_id[id(p)] for p in params], slots, other_slots,
                               any(isinstance(m, _BatchNorm) for m in model.modules()))
        return self._layout

    @staticmethod
    @contextlib.contextmanager
    def _swapped(layout: _Layout, params: list[torch.Tensor], values: list[torch.Tensor]):
        """Run ``model`` with ``values`` in place of the optimizer's params and its other params
        detached (constants of Q), restoring them after: ``functional_call`` for this fixed layout,
        without re-deriving the module tree and tied names at every meta-step."""
        try:
            for module, attr, i in layout.slots:
                module._parameters[attr] = values[i]
            for module, attr, p in layout.other_slots:
                module._parameters[attr] = p.detach()
            yield
        finally:
            for module, attr, i in layout.slots:
                module._parameters[attr] = params[i]
            for module, attr, p in layout.other_slots:
                module._parameters[attr] = p

    def _divergence(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if callable(self.divergence):
            value = self.divergence(outputs, targets)
            require("divergence", getattr(self.divergence, "__name__", self.divergence),
                    isinstance(value, torch.Tensor) and value.numel() == 1,
                    "a callable returning a scalar tensor")
            return value.reshape(())
        return _DIVERGENCES[self.divergence](outputs, targets)

    def _check_outputs(self, outputs: Any) -> None:
        require("model output", type(outputs).__name__,
                isinstance(outputs, torch.Tensor) and outputs.is_floating_point(),
                "a floating-point tensor (APO compares model outputs with its divergence)")
        if self.divergence == "kl":
            require("divergence", "kl", outputs.dim() >= 2 and outputs.shape[-1] >= 2,
                    f"'mse' or a callable for a model output of shape {tuple(outputs.shape)}; 'kl' needs "
                    "class logits in the last dimension (at least 2 classes)")

    @torch.no_grad()
    def _base_directions(self, keep_state: bool = False) -> list[torch.Tensor | None]:
        """The base's direction ``d`` (its step at ``lr = 1``) per tensor; the params are left untouched.

        ``keep_state=False`` also restores the base's state (a pure probe). ``keep_state=True`` keeps
        the state of this step's update, and the next ``step()`` applies ``−η·d`` instead of running
        the base again, so the base's state still advances exactly once per step.
        """
        params = [p for group in self.param_groups for p in group["params"]]
        with_grad = [p for p in params if p.grad is not None]
        saved_params = [p.clone() for p in with_grad]  # (a foreach op with a scalar costs twice as much)
        saved_state = {} if keep_state else {
            p: _clone_state(self.base.state[p]) if p in self.base.state else None for p in with_grad}
        saved_lrs = [group["lr"] for group in self.param_groups]
        for group in self.param_groups:
            group["lr"] = _PROBE_LR
        try:
            self.base.step()
            steps = torch._foreach_sub(saved_params, with_grad)
            torch._foreach_div_(steps, _PROBE_LR)
        finally:
            torch._foreach_copy_(with_grad, saved_params)
            for p in saved_state:
                if saved_state[p] is None:
                    self.base.state.pop(p, None)
                else:
                    self.base.state[p] = saved_state[p]
            for group, lr in zip(self.param_groups, saved_lrs):
                group["lr"] = lr
        directions = dict(zip(with_grad, steps))
        return [directions.get(p) for p in params]

    def _lookahead_steps(self, directions: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """``θ − θ'`` for every tensor, differentiable in φ (``None`` for a tensor without gradient)."""
        steps: list[torch.Tensor | None] = []
        if self.mode == "lr":
            index = 0
            log_global = self._meta_params[0][0]
            for group, meta, ratio in zip(self.param_groups, self._meta_params, self._lr_ratios):
                log_lr = meta[0] if self.lr_per_group else log_global
                eta = log_lr.exp() * ratio
                for _ in group["params"]:
                    d = directions[index]
                    steps.append(None if d is None else _as_dtype(eta, d.dtype) * d)
                    index += 1
            return steps
        factors = (f for index in range(len(self.param_groups)) for f in self._precond_factors(index))
        for (_, log_scale, left, right), d in zip(factors, directions):
            steps.append(None if d is None else self._precondition(d, log_scale, left, right))
        return steps

    def meta_objective(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
                       fresh_inputs: torch.Tensor,
                       loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``Q(φ)`` at the current parameters (the paper's meta-objective), differentiable in φ only.

        Needs ``.grad`` to hold ``∇J_B(θ)`` for ``batch = (inputs, targets)``; ``fresh_inputs`` is ``B'``.
        The lookahead runs ``model`` through ``torch.func.functional_call`` on detached parameters
        and cloned buffers: neither the model, its buffers, nor the base optimizer's state change.
        """
        layout = self._check_ready(model)
        return self._objective(model, layout, batch, fresh_inputs, loss_fn, self._base_directions())

    def _check_ready(self, model: nn.Module) -> _Layout:
        """The clear errors, raised before the probe touches the base; the model's layout."""
        layout = self._model_layout(model)
        if all(p.grad is None for group in self.param_groups for p in group["params"]):
            raise RuntimeError("APO needs the gradients of the loss on `batch`: call loss.backward() before "
                               "meta_step()")
        return layout

    def _objective(self, model: nn.Module, layout: _Layout, batch: tuple[torch.Tensor, torch.Tensor],
                   fresh_inputs: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   directions: list[torch.Tensor | None]) -> torch.Tensor:
        params = [p for group in self.param_groups for p in group["params"]]
        inputs, targets = batch
        # BatchNorm mixes the examples of a batch and updates running statistics: then B and B' run
        # separately, through functional_call on cloned buffers. Otherwise the params are swapped in
        # place for the lookahead, and one forward of the concatenated batch serves both B and B'.
        batch_norm = layout.batch_norm
        buffers = {name: b.clone() for name, b in model.named_buffers()} if batch_norm else {}
        concatenate = (self.lambda_fsd and not batch_norm and isinstance(inputs, torch.Tensor)
                       and isinstance(fresh_inputs, torch.Tensor)
                       and inputs.shape[1:] == fresh_inputs.shape[1:])
        target_outputs = None
        if self.lambda_fsd:
            with torch.no_grad():
                target_outputs = (functional_call(model, buffers, (fresh_inputs,)) if batch_norm
                                  else model(fresh_inputs))
            self._check_outputs(target_outputs)
        with torch.enable_grad():
            steps = self._lookahead_steps(directions)
            # Q is differentiable in φ only: θ and the params APO does not optimize are constants.
            values = [p.detach() if step is None else p.detach() - _as_dtype(step, p.dtype)
                      for p, step in zip(params, steps)]
            if batch_norm:
                ours = {id(p) for p in params}
                lookahead = {name: p.detach() for name, p in model.named_parameters() if id(p) not in ours}
                lookahead.update(zip(layout.names, values))
                lookahead.update(buffers)
                outputs = functional_call(model, lookahead, (inputs,))
                fresh_outputs = functional_call(model, lookahead, (fresh_inputs,)) if self.lambda_fsd else None
            else:
                with self._swapped(layout, params, values):
                    if concatenate:
                        outputs, fresh_outputs = model(torch.cat([inputs, fresh_inputs])).split(
                            [len(inputs), len(fresh_inputs)])
                    else:
                        outputs = model(inputs)
                        fresh_outputs = model(fresh_inputs) if self.lambda_fsd else None
            if target_outputs is None:
                self._check_outputs(outputs)
            q = loss_fn(outputs, targets)
            if self.lambda_fsd:
                q = q + self.lambda_fsd * self._divergence(fresh_outputs, target_outputs)
            if self.lambda_wsd:
                q = q + 0.5 * self.lambda_wsd * sum(_square_norm(s) for s in steps if s is not None)
        return q

    def meta_step(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
                  fresh_inputs: torch.Tensor | Callable[[], torch.Tensor],
                  loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float | None:
        """If ``meta_due``: a meta-optimizer step on ``Q(φ)`` (``meta_objective``); return ``Q`` or ``None``.

        Call it after ``loss_fn(model(inputs), targets).backward()`` and right before ``step()``.
        ``fresh_inputs`` may be a callable returning ``B'``, called only when a meta-step is due. In
        ``mode="lr"`` the base's update of this step is computed here (at ``lr = 1``, the params
        restored) and ``step()`` applies it scaled by the new η: one base update per step, as without APO.
        """
        if not self.meta_due:
            return None
        self._warned_no_meta_step = True
        if callable(fresh_inputs):
            fresh_inputs = fresh_inputs()
        layout = self._check_ready(model)
        self._pending_directions = self._base_directions(keep_state=True)
        q = self._objective(model, layout, batch, fresh_inputs, loss_fn, self._pending_directions)
        for group in self._meta_params:  # the meta-optimizer's zero_grad(set_to_none=True), minus its wrapper
            for t in group:
                t.grad = None
        self._last_q = float(q.detach())
        if math.isfinite(self._last_q):  # a lookahead that overflowed says nothing about φ: keep it
            q.backward()
            self.meta_optimizer.step()
            self._apply_meta_params()
        self._num_meta_steps += 1
        return self._last_q

    # -- torch.optim.Optimizer interface -------------------------------------------------------------
    def step(self, closure: Callable[[], torch.Tensor] | None = None):  # type: ignore[override]
        """One step: the base's update at the current η (``mode="lr"``), or preconditioned by ``P``."""
        if self._num_steps >= self.meta_interval and not self._warned_no_meta_step:
            warnings.warn("APO.step() has run a full meta_interval without meta_step(): φ is not being "
                          "adapted; call apo.meta_step(model, batch, fresh_inputs, loss_fn) before step()")
            self._warned_no_meta_step = True
        self._num_steps += 1
        if self.mode == "lr" and self._pending_directions is None:
            return self._base_step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._pending_directions is None:
            self._pending_directions = self._base_directions(keep_state=True)
        self._apply_pending_directions()
        return loss

    def _base_step(self, closure: Callable[[], torch.Tensor] | None):
        """``self.base.step(closure)``, without torch's per-call profiling and hook wrapper where nothing is
        hooked to the base: ``APO.step`` already runs inside that wrapper (profiler range, step hooks), and
        a second one costs a few percent of a small model's step."""
        base, step = self.base, type(self.base).step
        if (getattr(step, "hooked", False) and hasattr(step, "__wrapped__") and "step" not in vars(base)
                and not base._optimizer_step_pre_hooks and not base._optimizer_step_post_hooks):
            return step.__wrapped__(base, closure)
        return base.step(closure)

    @torch.no_grad()
    def _apply_pending_directions(self) -> None:
        """``θ ← θ − η·d`` or ``θ ← θ − P·d``, ``d`` the base's update at ``lr = 1`` (its state advanced)."""
        directions = self._pending_directions
        self._pending_directions = None
        if self.mode == "lr":
            index = 0
            for group in self.param_groups:
                pairs = [(p, d) for p, d in zip(group["params"], directions[index:]) if d is not None]
                index += len(group["params"])
                if pairs:
                    params, steps = zip(*pairs)
                    torch._foreach_add_(list(params), list(steps), alpha=-group["lr"])
            return
        for (p, scale, left_gram, right_gram), d in zip(self._precond_cache, directions):
            if d is None:
                continue
            if left_gram is None and right_gram is None:
                p.sub_(scale * d)
                continue
            matrix = d.reshape(d.shape[0], -1)
            if left_gram is not None:
                matrix = left_gram @ matrix
            if right_gram is not None:
                matrix = matrix @ right_gram
            p.sub_(matrix.reshape(p.shape))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not hasattr(self, "_meta_params"):  # torch.optim.Optimizer.__init__ adding the base's groups
            super().add_param_group(param_group)
            return
        self.base.add_param_group(param_group)
        group = self.base.param_groups[-1]
        meta = self._init_meta_params(group)
        self._meta_params.append(meta)
        for meta_group in self._meta_groups(meta):
            self.meta_optimizer.add_param_group(meta_group)
        self._apply_meta_params()

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {
            "base": self.base.state_dict(),
            "meta_params": [[t.detach().clone() for t in group] for group in self._meta_params],
            "meta_optimizer": self.meta_optimizer.state_dict(),
            "num_steps": self._num_steps,
            "num_meta_steps": self._num_meta_steps,
            "last_q": self._last_q,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        shapes = [[tuple(t.shape) for t in group] for group in self._meta_params]
        saved = [[tuple(t.shape) for t in group] for group in state_dict["meta_params"]]
        require("state_dict['meta_params']", saved, saved == shapes,
                f"shapes {shapes} (the same mode and params)")
        self.base.load_state_dict(state_dict["base"])
        self._share_base_groups()
        with torch.no_grad():
            for group, values in zip(self._meta_params, state_dict["meta_params"]):
                for t, value in zip(group, values):
                    t.copy_(value)
        self.meta_optimizer.load_state_dict(state_dict["meta_optimizer"])
        self._num_steps = int(state_dict["num_steps"])
        self._num_meta_steps = int(state_dict["num_meta_steps"])
        self._last_q = float(state_dict["last_q"])
        self._warned_no_meta_step = self._num_meta_steps > 0
        self._apply_meta_params()
