"""Per-parameter L2 decay as outer parameters (hyperparameter optimisation).

    f(λ, w) = L_train(w) + ½ Σ_i exp(λ_i) w_i²,     F(λ, w) = L_val(w)

One decay per weight, parameterised by its logarithm so that every decay stays positive (Lorraine
et al., 2020, §5; Vicol et al., 2022, §5.1).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from metaopt._tree import Tensors
from metaopt.checks import require
from metaopt.tasks.bilevel.problem import SupervisedBilevelProblem
from metaopt.tasks.supervised import SupervisedTask

__all__ = ["PerParameterL2"]


class PerParameterL2(SupervisedBilevelProblem):
    """Outer parameters: ``log`` of one L2 decay per inner weight, starting at ``initial_decay``."""

    def __init__(self, task: SupervisedTask, initial_decay: float = 1e-3, outer_split: str = "val",
                 inner_batch_size: int | None = None, dtype: str | None = None):
        require("task.initial_decay", initial_decay, initial_decay > 0 and math.isfinite(initial_decay),
                "a finite number > 0")
        super().__init__(task, outer_split, inner_batch_size, dtype)
        self.initial_decay = initial_decay

    def init_outer(self) -> Tensors:
        return tuple(torch.full_like(w, math.log(self.initial_decay)) for w in self._w0)

    def inner_loss(self, params: Tensors, outer_params: Tensors, batch: Any = None) -> torch.Tensor:
        inputs, targets = batch if batch is not None else self.split("train")
        penalty = sum((log_decay.exp() * w.pow(2)).sum() for log_decay, w in zip(outer_params, params))
        return self.data_loss(params, inputs, targets) + 0.5 * penalty

    @torch.no_grad()
    def evaluate(self, params: Tensors, outer_params: Tensors) -> dict[str, float]:
        decays = torch.cat([d.exp().flatten() for d in outer_params])
        return {**super().evaluate(params, outer_params), "mean_decay": float(decays.mean())}
