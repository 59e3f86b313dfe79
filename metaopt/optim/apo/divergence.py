"""APO's output-space divergences ``D(f(·, θ'), f(·, θ))``: the paper's squared error (regression)
and KL between predictive distributions (classifiers), and how one is chosen for a task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from metaopt.checks import require

__all__ = ["Divergence", "DIVERGENCES", "divergence_for", "infer_divergence", "check_outputs", "evaluate"]

Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``½·mean((f' − f)²)``, the scale of a regression task's loss; its Hessian: the Gauss–Newton metric."""
    return 0.5 * (outputs - targets).square().mean()


def kl(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(f) ‖ softmax(f'))`` averaged over the batch; its Hessian at ``f' = f`` is the Fisher."""
    log_p, log_q = F.log_softmax(targets, -1), F.log_softmax(outputs, -1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")


DIVERGENCES: dict[str, Divergence] = {"mse": mse, "kl": kl}
_KIND_TO_DIVERGENCE = {"regression": "mse", "classification": "kl"}


def divergence_for(kind: str) -> str:
    """The paper's output divergence for a task ``kind``: ``"mse"`` (regression), ``"kl"`` (classifiers)."""
    require("kind", kind, kind in _KIND_TO_DIVERGENCE, f"one of {tuple(_KIND_TO_DIVERGENCE)}")
    return _KIND_TO_DIVERGENCE[kind]


def infer_divergence(outputs: Any, targets: Any) -> str:
    """``"kl"`` for class logits ``(N, C)`` against integer labels ``(N,)``, ``"mse"`` for outputs
    against float targets of their shape (past the batch dimension); otherwise a ``ValueError`` asking
    for ``divergence=``.

    (Squared error on a classifier's logits is not the paper's FSD term: it ignores that logits are
    defined up to a constant and weighs all classes alike.)
    """
    if isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor) and outputs.dim() >= 1:
        # (outputs may be those of the fresh batch B': compare shapes past the batch dimension)
        if (not targets.is_floating_point() and not targets.is_complex() and targets.dim() == 1
                and outputs.dim() == 2 and outputs.shape[-1] >= 2):
            return "kl"
        if targets.is_floating_point() and targets.dim() == outputs.dim() and targets.shape[1:] == outputs.shape[1:]:
            return "mse"
    shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
    target_shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
    raise ValueError(
        f"APO cannot tell the output divergence from model outputs {shape} and targets {target_shape}: pass "
        "divergence='kl' (class logits), 'mse' (regression outputs) or a callable (outputs, targets) -> scalar "
        "(metaopt.optim.apo.divergence_for(kind) gives the paper's choice for 'classification'/'regression')")


def check_outputs(divergence: str | Divergence, outputs: Any) -> None:
    """Refuse outputs that ``divergence`` cannot compare, with a message that names the fix."""
    require("model output", type(outputs).__name__,
            isinstance(outputs, torch.Tensor) and outputs.is_floating_point(),
            "a floating-point tensor (APO compares model outputs with its divergence)")
    if divergence == "kl":
        require("divergence", "kl", outputs.dim() >= 2 and outputs.shape[-1] >= 2,
                f"'mse' or a callable for a model output of shape {tuple(outputs.shape)}; 'kl' needs "
                "class logits in the last dimension (at least 2 classes)")


def evaluate(divergence: str | Divergence, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``D(outputs, targets)`` as a 0-d tensor."""
    if callable(divergence):
        value = divergence(outputs, targets)
        require("divergence", getattr(divergence, "__name__", divergence),
                isinstance(value, torch.Tensor) and value.numel() == 1, "a callable returning a scalar tensor")
        return value.reshape(())
    return DIVERGENCES[divergence](outputs, targets)
