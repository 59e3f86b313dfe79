"""Dataset distillation: a few learned synthetic examples per class are the outer parameters.

    f(λ, w) = L(w; x_syn = λ, y_syn),     F(λ, w) = L(w; real data)

The labels are fixed (``examples_per_class`` examples of every class); the inputs are learned
(Wang et al., 2018; Vicol et al., 2022, §5.3).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from metaopt._tree import Tensors
from metaopt.checks import require
from metaopt.tasks.bilevel.problem import SupervisedBilevelProblem
from metaopt.tasks.supervised import SupervisedTask

__all__ = ["DatasetDistillation"]

_INITS = ("noise", "real")


class DatasetDistillation(SupervisedBilevelProblem):
    """``examples_per_class`` synthetic inputs per class, initialised as Gaussian noise around the
    mean training input (``init="noise"``, scale ``init_scale``) or as random real training examples
    (``init="real"``), drawn from torch's global RNG. The outer objective is the loss on
    ``outer_split`` (the data being distilled; ``"train"`` by default, so that validation and test
    accuracies are held out)."""

    def __init__(self, task: SupervisedTask, examples_per_class: int = 1, init: str = "noise",
                 init_scale: float = 0.1, outer_split: str = "train", dtype: str | None = None):
        require("task.kind", task.kind, task.kind == "classification", "classification (labels per class)")
        require("task.examples_per_class", examples_per_class,
                isinstance(examples_per_class, int) and examples_per_class > 0, "a positive integer")
        require("task.init", init, init in _INITS, f"one of {_INITS}")
        super().__init__(task, outer_split, None, dtype)
        self.examples_per_class = examples_per_class
        classes = torch.arange(task.out_features, device=self.device)
        self.labels = classes.repeat_interleave(examples_per_class)
        inputs, targets = self.split("train")
        if init == "real":
            picks = [torch.nonzero(targets == c).flatten() for c in range(task.out_features)]
            index = torch.cat([p[torch.randperm(len(p))[:examples_per_class].to(p.device)] for p in picks])
            self._init = inputs[index].clone()
        else:
            shape = (len(self.labels), *inputs.shape[1:])
            noise = torch.randn(shape, dtype=self.dtype).to(self.device)
            self._init = inputs.mean(0, keepdim=True) + init_scale * noise

    def init_outer(self) -> Tensors:
        return (self._init.clone(),)

    def inner_loss(self, params: Tensors, outer_params: Tensors, batch: Any = None) -> torch.Tensor:
        return self.data_loss(params, outer_params[0], self.labels)

    def plot(self, outer_params: Tensors, folder: Path) -> list[Path]:
        """``distilled.png``: the synthetic inputs as images, one column per class."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        images = outer_params[0].detach().float().cpu()
        side = math.isqrt(images[0].numel())
        if images.dim() == 2 and side * side == images.shape[1]:
            images = images.view(-1, side, side)
        elif images.dim() != 3 and not (images.dim() == 4 and images.shape[1] in (1, 3)):
            return []
        classes, per_class = len(self.labels) // self.examples_per_class, self.examples_per_class
        fig, axes = plt.subplots(per_class, classes, figsize=(classes, per_class + 0.3), squeeze=False)
        for index, image in enumerate(images):
            ax = axes[index % per_class, index // per_class]
            colour = image.dim() == 3 and image.shape[0] == 3
            shown = image.permute(1, 2, 0).clamp(0, 1) if colour else image.squeeze()
            ax.imshow(shown.numpy(), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        path = folder / "distilled.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return [path]
