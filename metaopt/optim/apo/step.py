"""One step of an ordinary training loop with APO's two added lines (any optimizer: without
``meta_step`` it is the plain step)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["training_step", "meta_learns"]


def meta_learns(optimizer: Any) -> bool:
    """Whether ``optimizer`` (a class, a ``functools.partial`` of one, or an instance) meta-learns from the
    model it trains, as APO does: it has ``meta_step``."""
    return getattr(getattr(optimizer, "func", optimizer), "meta_step", None) is not None


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, batch: tuple[Any, Any],
                  fresh_batch: Callable[[], Any]) -> torch.Tensor:
    """``zero_grad``, ``loss_fn(model(inputs), targets).backward()``, APO's ``meta_step`` when it is due
    (``fresh_batch()`` draws ``B'``, only then), ``step``; returns the (detached) training loss."""
    inputs, targets = batch
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    if meta_learns(optimizer) and optimizer.meta_due:
        optimizer.meta_step(model, batch, fresh_batch(), loss_fn)
    optimizer.step()
    return loss.detach()
