"""APO-LR: ``θ' = θ − η·d`` with ``d`` the base optimizer's direction and ``η = exp(a)·lr`` learned.

``lr`` is the param group's ``"lr"``, the base's learning rate, which an LR scheduler attached to APO
may change: the learned factor ``exp(a)`` (``a = 0`` at the start, so ``η`` starts at the base's
``lr``) multiplies the schedule. Without a scheduler, Adam on ``a`` takes the same steps as Adam on
``log η`` (the gradients are equal).
"""

from __future__ import annotations

from typing import Any

import torch

from metaopt.optim.apo.objective import as_dtype

__all__ = ["LearnedLR"]


class LearnedLR:
    """φ = one log-factor ``a`` per param group (``per_group=True``) or one for all groups."""

    name = "lr"

    def __init__(self, per_group: bool = True):
        self.per_group = per_group
        self.meta_params: list[list[torch.Tensor]] = []
        self._factors: list[float] = []  # exp(a) per group, read on the host once per meta-step

    def add_group(self, group: dict[str, Any], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
        if not self.per_group and self.meta_params:
            meta: list[torch.Tensor] = []
        else:
            meta = [torch.zeros((), dtype=dtype, device=device, requires_grad=True)]
        self.meta_params.append(meta)
        return meta

    def meta_param_groups(self, tensors: list[torch.Tensor], meta_lr: float) -> list[dict[str, Any]]:
        return [{"params": tensors, "lr": meta_lr}] if tensors else []

    def _log_factor(self, index: int) -> torch.Tensor:
        return self.meta_params[index if self.per_group else 0][0]

    def lookahead_steps(self, groups: list[dict[str, Any]], directions: list[torch.Tensor | None]
                        ) -> list[torch.Tensor | None]:
        """``η·d`` per tensor, differentiable in ``a``."""
        steps: list[torch.Tensor | None] = []
        index = 0
        for g, group in enumerate(groups):
            eta = self._log_factor(g).exp() * float(group["lr"])
            for _ in group["params"]:
                d = directions[index]
                steps.append(None if d is None else as_dtype(eta, d.dtype) * d)
                index += 1
        return steps

    @torch.no_grad()
    def refresh(self, groups: list[dict[str, Any]]) -> None:
        """Read the factors ``exp(a)`` on the host (one sync per meta-step, none per step)."""
        if len(groups) == 1:
            self._factors = [self._log_factor(0).exp().float().item()]
            return
        factors = torch.stack([self._log_factor(g).exp().float() for g in range(len(groups))])
        self._factors = factors.tolist()

    def step_lrs(self, groups: list[dict[str, Any]]) -> list[float]:
        """The η of every group for this step: the learned factor times the (scheduled) lr."""
        return [factor * float(group["lr"]) for factor, group in zip(self._factors, groups)]

    @torch.no_grad()
    def apply(self, groups: list[dict[str, Any]], directions: list[torch.Tensor | None]) -> None:
        """``θ ← θ − η·d``."""
        index = 0
        for group, eta in zip(groups, self.step_lrs(groups)):
            pairs = [(p, d) for p, d in zip(group["params"], directions[index:]) if d is not None]
            index += len(group["params"])
            if pairs:
                params, steps = zip(*pairs)
                torch._foreach_add_(list(params), list(steps), alpha=-eta)

    def schedule(self, groups: list[dict[str, Any]]) -> dict[str, float]:
        lrs = self.step_lrs(groups)
        out = {"lr": lrs[0]}
        out.update({f"lr_{i}": lr for i, lr in enumerate(lrs) if i > 0})
        return out
