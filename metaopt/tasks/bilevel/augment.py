"""A learned data-augmentation network as the outer parameters.

    f(λ, w) = ½ [L(w; x, y) + L(w; a_λ(x), y)],     F(λ, w) = L_val(w)

``a_λ(x) = x + scale·tanh(MLP_λ(x))``, a residual perturbation of each training input by a
one-hidden-layer network whose output layer starts at zero, so that training starts from the
identity augmentation (Vicol et al., 2022, §5.2 learn augmentations the same way: as outer
parameters of the training loss).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from metaopt._tree import Tensors
from metaopt.checks import require
from metaopt.tasks.bilevel.problem import SupervisedBilevelProblem
from metaopt.tasks.supervised import SupervisedTask

__all__ = ["LearnedAugmentation"]


class LearnedAugmentation(SupervisedBilevelProblem):
    """Outer parameters: the weights of the augmentation network ``a_λ`` (``hidden`` units)."""

    def __init__(self, task: SupervisedTask, hidden: int = 32, scale: float = 0.5, outer_split: str = "val",
                 inner_batch_size: int | None = None, dtype: str | None = None):
        require("task.hidden", hidden, isinstance(hidden, int) and hidden > 0, "a positive integer")
        require("task.scale", scale, scale > 0, "a number > 0 (largest perturbation per input feature)")
        super().__init__(task, outer_split, inner_batch_size, dtype)
        self.scale = scale
        features = task.in_features
        self.augmenter = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, features))
        nn.init.zeros_(self.augmenter[2].weight)
        nn.init.zeros_(self.augmenter[2].bias)
        self.augmenter.to(device=self.device, dtype=self.dtype).requires_grad_(False)
        self._aug_names = tuple(name for name, _ in self.augmenter.named_parameters())
        self._aug_init = tuple(p.detach().clone() for p in self.augmenter.parameters())

    def init_outer(self) -> Tensors:
        return tuple(p.clone() for p in self._aug_init)

    def augment(self, outer_params: Tensors, inputs: torch.Tensor) -> torch.Tensor:
        flat = inputs.flatten(1)
        delta = functional_call(self.augmenter, dict(zip(self._aug_names, outer_params)), (flat,))
        return (flat + self.scale * torch.tanh(delta)).view_as(inputs)

    def inner_loss(self, params: Tensors, outer_params: Tensors, batch: Any = None) -> torch.Tensor:
        inputs, targets = batch if batch is not None else self.split("train")
        clean = self.data_loss(params, inputs, targets)
        return 0.5 * (clean + self.data_loss(params, self.augment(outer_params, inputs), targets))
