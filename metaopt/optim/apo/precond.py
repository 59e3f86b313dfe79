"""APO-Precond: ``θ' = θ − lr·P·d`` with ``P`` block-diagonal per tensor and learned.

A tensor with two or more dimensions (``nn.Linear`` weight ``m×n``, ``nn.Conv2d`` weight
``m×(c·k·k)``) gets ``ΔW = −lr·exp(c)·L Lᵀ D R Rᵀ`` (Kronecker-factored as in K-FAC, PSD by
construction, no inverse); a side longer than ``max_factor_size`` keeps the identity. Other tensors
(biases, norm scales) get ``Δb = −lr·exp(c)·d``, a learned per-tensor learning rate. ``P`` starts as the
identity (``c = 0``, ``L = R = I``), so the first steps are the base's at its ``lr``; ``lr`` is the
param group's ``"lr"``, which an LR scheduler attached to APO may change (it multiplies ``P``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from metaopt.optim.apo.objective import as_dtype

__all__ = ["KroneckerPrecond", "precondition"]


def precondition(grad: torch.Tensor, log_scale: torch.Tensor, left: torch.Tensor | None,
                 right: torch.Tensor | None) -> torch.Tensor:
    """``P∇ = exp(c)·L Lᵀ ∇ R Rᵀ`` for a matrix-shaped tensor (``exp(c)·∇`` otherwise), computed in
    the factors' precision (at least float32) and returned in the gradient's."""
    if left is None and right is None:
        return as_dtype(log_scale.exp(), grad.dtype) * grad
    matrix = as_dtype(grad.reshape(grad.shape[0], -1), log_scale.dtype)
    if left is not None:
        matrix = left @ (left.T @ matrix)
    if right is not None:
        matrix = (matrix @ right) @ right.T
    return as_dtype(log_scale.exp() * matrix, grad.dtype).reshape(grad.shape)


class KroneckerPrecond:
    """φ = ``[c, L, R, ...]`` per tensor; the products ``exp(c)·LLᵀ`` and ``RRᵀ`` are cached between
    meta-steps, so that a step costs two matmuls per matrix and no factor products."""

    name = "precond"

    def __init__(self, max_factor_size: int = 1024):
        self.max_factor_size = max_factor_size
        self.meta_params: list[list[torch.Tensor]] = []
        self._cache: list[tuple] = []
        self._scales: list[float] = []
        self._log_mean_scale = float("nan")

    def add_group(self, group: dict[str, Any], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
        factors = []
        for p in group["params"]:
            factors.append(torch.zeros((), dtype=dtype, device=device, requires_grad=True))
            if p.dim() >= 2:
                for size in (p.shape[0], math.prod(p.shape[1:])):
                    if size <= self.max_factor_size:
                        factors.append(torch.eye(size, dtype=dtype, device=device, requires_grad=True))
        self.meta_params.append(factors)
        return factors

    def meta_param_groups(self, tensors: list[torch.Tensor], meta_lr: float) -> list[dict[str, Any]]:
        """``meta_lr`` for log-scales, ``meta_lr / n`` for an ``n×n`` factor.

        An element-wise (Adam-like) step of size ``meta_lr`` on every entry of ``L`` can move its
        spectral norm by ``n·meta_lr``; dividing by ``n`` keeps a meta-step's change of ``P`` of the
        same relative size for every layer width.
        """
        by_lr: dict[float, list[torch.Tensor]] = {}
        for t in tensors:
            by_lr.setdefault(meta_lr / (t.shape[0] if t.dim() else 1), []).append(t)
        return [{"params": params, "lr": lr} for lr, params in by_lr.items()]

    def factors(self, groups: list[dict[str, Any]]):
        """Yield ``(param, lr, log_scale, left or None, right or None)`` for every tensor of every group."""
        for group, meta in zip(groups, self.meta_params):
            lr = float(group["lr"])
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
                yield p, lr, log_scale, left, right

    def lookahead_steps(self, groups: list[dict[str, Any]], directions: list[torch.Tensor | None]
                        ) -> list[torch.Tensor | None]:
        """``lr·P·d`` per tensor, differentiable in the factors."""
        steps: list[torch.Tensor | None] = []
        for (_, lr, log_scale, left, right), d in zip(self.factors(groups), directions):
            if d is None:
                steps.append(None)
            else:
                step = precondition(d, log_scale, left, right)
                steps.append(step if lr == 1.0 else step * lr)
        return steps

    @torch.no_grad()
    def refresh(self, groups: list[dict[str, Any]]) -> None:
        """Cache ``(exp(c) as a float, exp(c)·LLᵀ or None, RRᵀ or None)`` per tensor (``P`` changes
        only at meta-steps), and the mean eigenvalue of every ``P`` for logging."""
        self._cache = []
        scales = []
        for p, _, log_scale, left, right in self.factors(groups):
            scale = log_scale.exp()
            left_gram = None if left is None else scale * (left @ left.T)
            right_gram = None if right is None else right @ right.T
            if left_gram is None and right_gram is not None:
                right_gram = scale * right_gram
            grams = [None if g is None else as_dtype(g, p.dtype) for g in (left_gram, right_gram)]
            self._cache.append((as_dtype(scale, p.dtype), *grams))
            if left_gram is None and right_gram is None:
                scales.append(scale.float())
            else:
                trace = [1.0 if g is None else g.float().diagonal().mean() for g in grams]
                scales.append(trace[0] * trace[1])
        self._scales = torch.stack(scales).tolist()  # one host sync per meta-step
        self._log_mean_scale = sum(math.log(s) for s in self._scales) / len(self._scales)

    def scales(self, groups: list[dict[str, Any]]) -> list[float]:
        """Per tensor, the mean eigenvalue ``lr·exp(c)·tr(LLᵀ)/m·tr(RRᵀ)/n`` of its ``P``."""
        lrs = [float(group["lr"]) for group in groups for _ in group["params"]]
        return [s * lr for s, lr in zip(self._scales, lrs)]

    @torch.no_grad()
    def apply(self, groups: list[dict[str, Any]], directions: list[torch.Tensor | None]) -> None:
        """``θ ← θ − lr·P·d``."""
        params = [(p, float(group["lr"])) for group in groups for p in group["params"]]
        for (p, lr), (scale, left_gram, right_gram), d in zip(params, self._cache, directions):
            if d is None:
                continue
            if left_gram is None and right_gram is None:
                step = scale * d
            else:
                step = d.reshape(d.shape[0], -1)
                if left_gram is not None:
                    step = left_gram @ step
                if right_gram is not None:
                    step = step @ right_gram
                step = step.reshape(p.shape)
            if lr == 1.0:
                p.sub_(step)
            else:
                p.sub_(step, alpha=lr)

    def schedule(self, groups: list[dict[str, Any]]) -> dict[str, float]:
        """``precond_scale``: the geometric mean over tensors of ``P``'s mean eigenvalue."""
        if any(float(group["lr"]) <= 0 for group in groups):  # a schedule that reached 0
            return {"precond_scale": 0.0}
        log_lr = sum(math.log(float(group["lr"])) * len(group["params"]) for group in groups)
        return {"precond_scale": math.exp(self._log_mean_scale + log_lr / len(self._scales))}
