"""Arithmetic on tuples of tensors (the inner parameters, the outer parameters, their gradients)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensors = tuple[torch.Tensor, ...]


def tree_dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def tree_norm(a: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum(x.pow(2).sum() for x in a))


def tree_axpy(alpha: float | torch.Tensor, x: Sequence[torch.Tensor], y: Sequence[torch.Tensor]) -> Tensors:
    """``alpha·x + y``."""
    return tuple(alpha * xi + yi for xi, yi in zip(x, y))


def tree_detach(a: Sequence[torch.Tensor]) -> Tensors:
    return tuple(x.detach() for x in a)


def tree_leaves(a: Sequence[torch.Tensor]) -> Tensors:
    """Fresh leaves that require grad and share memory with ``a`` (no history)."""
    return tuple(x.detach().requires_grad_() for x in a)
