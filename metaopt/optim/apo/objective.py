"""The meta-objective both APO modes share: the proximal-point objective at a one-step lookahead,

    Q(φ) = J_B(θ') + λ_FSD·D(f(·, θ'), f(·, θ); B') + (λ_WSD/2)·‖θ' − θ‖²,

with ``θ' = θ − step(φ)``; θ, the base's direction and the FSD targets are constants, so that Q is
differentiable in φ only. The lookahead runs the user's model with ``θ'`` swapped into its parameter
slots (``torch.func.functional_call`` on cloned buffers where BatchNorm would otherwise update them).
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from metaopt.checks import require
from metaopt.optim.apo import divergence as divergences

__all__ = ["Layout", "model_layout", "proximal_objective", "as_dtype"]

Forward = Callable[[nn.Module, Any], Any]
Loss = Callable[[Any, Any], torch.Tensor]


class Layout(NamedTuple):
    """Where a model holds APO's params (``slots``: module, attribute, index into APO's params) and its
    other params (``other_slots``: module, attribute, param); cached between meta-steps."""

    model: weakref.ref
    names: list[str]
    slots: list[tuple[nn.Module, str, int]]
    other_slots: list[tuple[nn.Module, str, torch.Tensor]]
    batch_norm: bool


def as_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor.to(dtype)`` without the call where it is a no-op (a meta-step makes a dozen of them)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def square_norm(tensor: torch.Tensor) -> torch.Tensor:
    """``‖t‖²`` accumulated in at least float32 (low-precision steps would round it away)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32)).square().sum()


def model_layout(model: nn.Module, params: list[torch.Tensor], cached: Layout | None) -> Layout:
    """Where ``params`` and the model's other params live in ``model``, and whether it holds BatchNorm;
    ``cached`` is reused while every slot still holds the same param."""
    if cached is not None and cached.model() is model and len(cached.names) == len(params) and all(
            module._parameters.get(attr) is params[i] for module, attr, i in cached.slots):
        return cached
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
    return Layout(weakref.ref(model), [by_id[id(p)] for p in params], slots, other_slots,
                  any(isinstance(m, _BatchNorm) for m in model.modules()))


@contextlib.contextmanager
def _swapped(layout: Layout, params: list[torch.Tensor], values: list[torch.Tensor]):
    """Run the model with ``values`` in place of the optimizer's params and its other params detached
    (constants of Q), restoring them after: ``functional_call`` for this fixed layout, without
    re-deriving the module tree and tied names at every meta-step."""
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


class _Call(nn.Module):
    """``forward(model, batch)`` as a module, so that ``functional_call`` can substitute its tensors."""

    def __init__(self, model: nn.Module, forward: Forward):
        super().__init__()
        self.model, self.call = model, forward

    def forward(self, batch: Any) -> Any:
        return self.call(self.model, batch)


def proximal_objective(model: nn.Module, layout: Layout, params: list[torch.Tensor],
                       steps: list[torch.Tensor | None], batch: Any, fresh_batch: Any, *, forward: Forward,
                       loss: Loss, divergence: Callable[[Any], str | divergences.Divergence],
                       lambda_fsd: float, lambda_wsd: float, inputs_of: Callable[[Any], Any] | None = None
                       ) -> torch.Tensor:
    """``Q(φ)`` with ``θ' = θ − steps`` (``steps`` differentiable in φ, ``None`` for a tensor without
    gradient). ``forward(model, batch)`` gives outputs, ``loss(outputs, batch)`` is ``J_B``;
    ``divergence(target_outputs)`` returns D. ``inputs_of``, if given, maps a batch to one input tensor
    of the default ``model(inputs)`` form, so that B and B' run as one concatenated forward."""
    # BatchNorm mixes the examples of a batch and updates running statistics: then B and B' run
    # separately, through functional_call on cloned buffers. Otherwise the params are swapped in
    # place for the lookahead, and (default form) one forward of the concatenated batch serves B and B'.
    batch_norm = layout.batch_norm
    call = _Call(model, forward) if batch_norm else functools.partial(forward, model)
    buffers = {"model." + name: b.clone() for name, b in model.named_buffers()} if batch_norm else {}
    inputs = fresh_inputs = None
    if inputs_of is not None:
        inputs, fresh_inputs = inputs_of(batch), inputs_of(fresh_batch)
    concatenate = (lambda_fsd and not batch_norm and isinstance(inputs, torch.Tensor)
                   and isinstance(fresh_inputs, torch.Tensor) and inputs.shape[1:] == fresh_inputs.shape[1:])
    target_outputs, measure = None, None
    if lambda_fsd:
        with torch.no_grad():
            target_outputs = functional_call(call, buffers, (fresh_batch,)) if batch_norm else call(fresh_batch)
        measure = divergence(target_outputs)
        divergences.check_outputs(measure, target_outputs)
    with torch.enable_grad():
        values = [p.detach() if step is None else p.detach() - as_dtype(step, p.dtype)
                  for p, step in zip(params, steps)]
        if batch_norm:
            ours = {id(p) for p in params}
            lookahead = {"model." + name: p.detach() for name, p in model.named_parameters()
                         if id(p) not in ours}
            lookahead.update(("model." + name, value) for name, value in zip(layout.names, values))
            lookahead.update(buffers)
            outputs = functional_call(call, lookahead, (batch,))
            fresh_outputs = functional_call(call, lookahead, (fresh_batch,)) if lambda_fsd else None
        else:
            with _swapped(layout, params, values):
                if concatenate:
                    outputs, fresh_outputs = model(torch.cat([inputs, fresh_inputs])).split(
                        [len(inputs), len(fresh_inputs)])
                else:
                    outputs = call(batch)
                    fresh_outputs = call(fresh_batch) if lambda_fsd else None
        q = loss(outputs, batch)
        require("loss", type(q).__name__, isinstance(q, torch.Tensor) and q.numel() == 1,
                "a scalar tensor (loss_fn(outputs, targets) or loss(outputs, batch))")
        q = q.reshape(())
        if lambda_fsd:
            q = q + lambda_fsd * divergences.evaluate(measure, fresh_outputs, target_outputs)
        if lambda_wsd:
            q = q + 0.5 * lambda_wsd * sum(square_norm(s) for s in steps if s is not None)
    return q
