"""Helpers shared by the functional optimizer cores."""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensors = tuple[torch.Tensor, ...]
# A hyperparameter is one value for every tensor (a float or a 0-d tensor, which may carry a
# gradient or be batched by vmap) or a sequence with one value per tensor (per-layer settings).
Hyper = float | torch.Tensor | Sequence[float | torch.Tensor]


def step_count(params: Sequence[torch.Tensor], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A 0-d step counter on the parameters' device (``torch.where``/vmap need one device)."""
    return torch.zeros((), dtype=dtype, device=params[0].device if len(params) else None)


def per_tensor(value: Hyper, index: int) -> float | torch.Tensor:
    """The value of hyperparameter ``value`` for the ``index``-th tensor."""
    if isinstance(value, (list, tuple)):
        return value[index]
    return value


def apply_weight_decay(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], weight_decay: Hyper,
                       maximize: bool) -> Tensors:
    """``g ← ±g + wd·p`` (coupled L2 decay as in torch.optim), out of place."""
    out = []
    for i, (p, g) in enumerate(zip(params, grads)):
        g = -g if maximize else g
        wd = per_tensor(weight_decay, i)
        if not (isinstance(wd, (int, float)) and wd == 0):
            g = g + wd * p
        out.append(g)
    return tuple(out)


def sqrt(tensor: torch.Tensor) -> torch.Tensor:
    """``√x``, whose derivative at an exact 0 is 0 instead of ∞ when ``x`` carries a gradient.

    A gradient entry that is exactly 0 (an input pixel that is always 0, a dead unit) leaves Adam's,
    RMSprop's and Adagrad's second moment at 0, and ``d√v/dv = ∞`` there turns the hypergradient into
    NaN (∞·0) as soon as anything differentiates through the step (TBPTT, bilevel unrolling). The forward
    value is unchanged; with grad mode off (the ES estimators) this is ``tensor.sqrt()``. (Inside
    ``torch.func`` transforms ``requires_grad`` is not visible, hence the grad-mode test.)
    """
    if not torch.is_grad_enabled():
        return tensor.sqrt()
    positive = tensor > 0
    return torch.where(positive, torch.where(positive, tensor, torch.ones_like(tensor)).sqrt(),
                       torch.zeros_like(tensor))
