"""A learned optimizer (a per-element MLP, ``metaopt.optim.functional.learned``) as a drop-in
``torch.optim.Optimizer``, with weights meta-trained by metaopt's ES loops and shipped in the package."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import torch

from metaopt.checks import is_finite_number
from metaopt.optim import _cpu_kernels
from metaopt.optim.functional.learned import (
    ADAM_CORRECTION,
    ADAM_LOG_RANGE,
    ADAM_STEP_SCALE,
    EPS,
    FORMS,
    LEGACY_TIMESCALES,
    MAX_DIRECTION,
    MAX_LOG_MAGNITUDE,
    MOMENTUM_DECAYS,
    SECOND_MOMENT_DECAY,
    STEP_SCALE,
    TIMESCALES,
    LearnedState,
    check_timescales,
    learned,
    num_weights,
    time_features,
)
from metaopt.optim.optimizer import Optimizer, check_hyperparameter, hyper_value

__all__ = ["LearnedOptimizer", "load_weights", "resolve_weights", "core_kwargs"]

_PRETRAINED = "pretrained"
DEFAULT_WEIGHTS = "digits_pes"
DEFAULT_HIDDEN = (32,)
MAX_FUSED_HIDDEN = 256  # LEARNED_MAX_HIDDEN in _cpu_kernels.c


def _pretrained_folder() -> Path:
    return Path(str(resources.files("metaopt.optim").joinpath(_PRETRAINED)))


def load_weights(source: str | Path) -> dict[str, Any]:
    """``{"weights": tensor, "hidden": [...], "meta": {...}}`` from a pretrained name or a file written by
    ``save_pretrained`` (``torch.load(weights_only=True)``), checked."""
    names = LearnedOptimizer.pretrained_names()
    path = _pretrained_folder() / f"{source}.pt" if str(source) in names else Path(source)
    check_hyperparameter("weights", str(source), path.is_file(),
                         f"a pretrained name ({', '.join(names) or 'none shipped'}) or the path of a file "
                         "written by LearnedOptimizer.save_pretrained")
    saved = torch.load(path, weights_only=True, map_location="cpu")
    check_hyperparameter("weights", str(source), isinstance(saved, dict) and {"weights", "hidden"} <= set(saved),
                         "a file written by LearnedOptimizer.save_pretrained (a dict with weights and hidden)")
    return saved


class Resolved(NamedTuple):
    weights: torch.Tensor
    hidden: tuple[int, ...]
    form: str
    timescales: tuple[float, ...]
    meta: dict[str, Any]


def resolve_weights(weights: str | Path | torch.Tensor, hidden: Sequence[int] | None = None,
                    form: str | None = None, timescales: Sequence[float] | None = None) -> Resolved:
    """``(weights, hidden, form, timescales, meta)``: a tensor as it is (``hidden`` defaulting to
    ``DEFAULT_HIDDEN``, ``form`` to ``"direction"``, ``timescales`` to ``TIMESCALES``), a pretrained name or
    saved file loaded (``hidden``, ``form`` and ``timescales``, if given, must be the file's; a file without
    ``form`` has the original ``"direction"``, one without ``timescales`` the ``LEGACY_TIMESCALES``)."""
    check_hyperparameter("form", form, form is None or form in FORMS, f"None or one of {FORMS}")
    if timescales is not None:
        timescales = check_timescales(timescales)
    if isinstance(weights, torch.Tensor):
        return Resolved(weights, tuple(hidden or DEFAULT_HIDDEN), form or "direction", timescales or TIMESCALES, {})
    saved = load_weights(weights)
    check_hyperparameter("hidden", hidden, hidden is None or list(hidden) == list(saved["hidden"]),
                         f"None or {list(saved['hidden'])} (the layers the weights were trained with)")
    saved_form = saved.get("form", "direction")
    check_hyperparameter("form", form, form is None or form == saved_form,
                         f"None or {saved_form!r} (the form the weights were trained with)")
    saved_timescales = check_timescales(saved.get("timescales", LEGACY_TIMESCALES))
    check_hyperparameter("timescales", timescales, timescales is None or timescales == saved_timescales,
                         f"None or {list(saved_timescales)} (the time features the weights were trained with)")
    return Resolved(saved["weights"], tuple(saved["hidden"]), saved_form, saved_timescales,
                    dict(saved.get("meta", {})))


def core_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The functional core's arguments for the class's: ``weights`` as a tensor (a pretrained name or a saved
    file loaded, ``digits_pes`` when absent), its ``hidden`` layers, ``form`` and ``timescales`` (its spec's
    ``prepare``)."""
    resolved = resolve_weights(kwargs.get("weights", DEFAULT_WEIGHTS), kwargs.get("hidden"), kwargs.get("form"),
                               kwargs.get("timescales"))
    return {**kwargs, "weights": resolved.weights, "hidden": resolved.hidden, "form": resolved.form,
            "timescales": resolved.timescales}


class LearnedOptimizer(Optimizer):
    r"""A learned optimizer: a small MLP applied to every parameter element maps its gradient history to a
    step (``metaopt.optim.functional.learned`` states the features and the update).

    ``weights``: a pretrained name (``LearnedOptimizer.pretrained_names()``), the path of a file written by
    ``save_pretrained``, or a flat tensor of meta-parameters for an MLP with ``hidden`` layers (``hidden``
    is read from the file otherwise; ``form``, what the MLP's first output is, likewise, ``"direction"`` for a
    tensor unless given; ``timescales``, the steps of the four time features, likewise, ``TIMESCALES`` for a
    tensor unless given). ``lr`` multiplies the learned step (1: as meta-trained); LR
    schedulers act on it. ``maximize`` ascends. One param group's tensors go through the MLP in one
    call (the elements concatenated): the multi-tensor path, on CPU and CUDA alike. ``fused`` (CPU, float32
    or float64, one hidden layer): one C kernel over all tensors of a group that updates the state in place
    and runs the MLP element block by element block in registers, allocating nothing per element (the
    functional core's arithmetic, up to the order of the MLP's sums and, in float32, exp/tanh to about an
    ulp); ``None`` (the default) takes it wherever it applies, ``True`` requires it, ``False`` never.

    >>> opt = LearnedOptimizer.from_pretrained("digits_pes", model.parameters())
    """

    def __init__(self, params: Iterable, weights: str | Path | torch.Tensor = DEFAULT_WEIGHTS, lr: float = 1.0,
                 hidden: Sequence[int] | None = None, maximize: bool = False, foreach: bool | None = None,
                 form: str | None = None, fused: bool | None = None, timescales: Sequence[float] | None = None):
        weights, hidden, form, timescales, meta = resolve_weights(weights, hidden, form, timescales)
        hidden = list(hidden)
        check_hyperparameter("hidden", hidden, all(isinstance(h, int) and h > 0 for h in hidden),
                             "a list of positive layer widths")
        expected = num_weights(hidden)
        check_hyperparameter("weights", f"a tensor of shape {tuple(weights.shape)}",
                             weights.dim() == 1 and weights.numel() == expected,
                             f"a 1-D tensor of {expected} numbers (a learned optimizer with hidden={hidden})")
        check_hyperparameter("weights", "a tensor with NaN/Inf", bool(torch.isfinite(weights).all()),
                             "finite numbers")
        self.meta = meta
        defaults = dict(lr=lr, weights=weights.detach().clone(), hidden=tuple(hidden), form=form,
                        timescales=tuple(timescales), maximize=maximize, foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    @classmethod
    def from_pretrained(cls, name: str, params: Iterable, **kwargs: Any) -> LearnedOptimizer:
        """The optimizer with the weights shipped in the package under ``name`` (or a saved file)."""
        return cls(params, weights=name, **kwargs)

    @staticmethod
    def pretrained_names() -> list[str]:
        folder = _pretrained_folder()
        return sorted(p.stem for p in folder.glob("*.pt")) if folder.is_dir() else []

    def save_pretrained(self, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
        """Write the first param group's weights (``torch.save``, loadable with ``weights_only=True``)."""
        group = self.param_groups[0]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"weights": group["weights"].detach().cpu().clone(), "hidden": list(group["hidden"]),
                    "form": group["form"], "timescales": list(group["timescales"]), "meta": dict(meta or self.meta)},
                   path)
        return path

    def _validate(self, group: dict[str, Any]) -> None:
        lr = group.get("lr")
        check_hyperparameter("lr", lr, is_finite_number(lr) and float(lr) >= 0.0, "a finite number >= 0")
        check_hyperparameter("maximize", group.get("maximize"), isinstance(group.get("maximize"), bool),
                             "True or False")
        weights, hidden = group.get("weights"), group.get("hidden")
        check_hyperparameter("weights", type(weights).__name__, isinstance(weights, torch.Tensor)
                             and weights.numel() == num_weights(hidden), f"{num_weights(hidden)} numbers")
        check_hyperparameter("form", group.get("form"), group.get("form") in FORMS, f"one of {FORMS}")
        check_timescales(group["timescales"])
        fused = group.get("fused")
        check_hyperparameter("fused", fused, fused in (None, True, False), "None, True or False")
        check_hyperparameter("fused", fused, not fused or (len(hidden) == 1 and hidden[0] <= MAX_FUSED_HIDDEN),
                             f"None or False for hidden={list(hidden)} (the fused kernel runs one hidden layer of "
                             f"at most {MAX_FUSED_HIDDEN})")
        own = ("weights", "hidden", "form", "fused", "timescales")
        super()._validate({k: v for k, v in group.items() if k not in own})

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A param group saved before ``form``/``timescales`` existed ran the weights of then: the "direction"
        # form on the legacy time features, not this optimizer's defaults (which the base class would fill in).
        for group in state.get("param_groups", []):
            group.setdefault("form", "direction")
            group.setdefault("timescales", LEGACY_TIMESCALES)
        super().__setstate__(state)

    def _init_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        from metaopt.optim.functional.learned import learned_init

        state = learned_init([param.detach()])
        return {"momenta": state.momenta[0], "second_moment": state.second_moment[0], "step": state.step}

    def _upgrade_state(self, param_state: dict[str, Any], group: dict[str, Any]) -> None:
        step = param_state.get("step")
        if step is not None and not isinstance(step, torch.Tensor):  # a checkpoint with a plain-number step
            param_state["step"] = torch.tensor(float(step), dtype=torch.float64)

    def _update(self, group, params, grads, states, foreach):
        step = states[0]["step"]
        state = LearnedState(tuple(s["momenta"] for s in states), tuple(s["second_moment"] for s in states), step)
        weights = group["weights"]
        if weights.device != params[0].device:
            weights = group["weights"] = weights.to(params[0].device)
        if not torch.compiler.is_compiling():  # (a data-dependent check: compiled steps skip it)
            if not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
                raise ValueError("invalid gradients: NaN/Inf (allowed: finite numbers; the learned optimizer's "
                                 "features would turn every element of such a tensor into NaN)")
        if group.get("fused") is not False and self._fused_step(group, params, grads, states, weights):
            return
        new_params, new_state = learned(params, grads, state, weights=weights, hidden=group["hidden"],
                                        lr=hyper_value(group["lr"]), form=group["form"],
                                        timescales=group["timescales"])
        for p, new, s, m, v in zip(params, new_params, states, new_state.momenta, new_state.second_moment):
            p.copy_(new)
            s["momenta"], s["second_moment"], s["step"] = m, v, new_state.step

    @staticmethod
    def _fused_step(group, params, grads, states, weights) -> bool:
        """The C kernel's step in place (``_cpu_kernels.learned_step``); False where it does not apply."""
        hidden, form = group["hidden"], group["form"]
        if torch.compiler.is_compiling() or torch.is_grad_enabled() or len(hidden) != 1 or hidden[0] > MAX_FUSED_HIDDEN:
            return LearnedOptimizer._no_fused(group)
        step = states[0]["step"] + 1
        t, lr = float(step), float(hyper_value(group["lr"]))
        if form == "adam":
            scale, bounds = ADAM_STEP_SCALE, (ADAM_CORRECTION, ADAM_LOG_RANGE)
        else:
            scale, bounds = STEP_SCALE, (MAX_DIRECTION, MAX_LOG_MAGNITUDE)
        times = time_features(t, group["timescales"])  # plain floats: no tensor ops per step
        scalars = [*times, 1 - SECOND_MOMENT_DECAY ** t, scale * lr, float(form == "adam"), hidden[0],
                   *MOMENTUM_DECAYS, SECOND_MOMENT_DECAY, EPS, *bounds]
        tensors = [list(params), list(grads), [s["momenta"] for s in states], [s["second_moment"] for s in states]]
        if not _cpu_kernels.run_learned(tensors, weights, scalars):
            return LearnedOptimizer._no_fused(group)
        for s in states:
            s["step"] = step
        return True

    @staticmethod
    def _no_fused(group) -> bool:
        if group.get("fused"):
            raise RuntimeError("fused=True: the fused learned-optimizer step runs on contiguous float32/float64 CPU "
                               "tensors with one hidden layer (<= 256 wide), outside autograd and torch.compile, "
                               "with a C compiler; use fused=None (where it applies) or False otherwise")
        return False
