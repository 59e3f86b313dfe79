"""Supervised tasks: a model factory, a loss, and train/validation/test splits held in memory."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from metaopt.checks import require
from metaopt.tasks.data import Split, SplitData

__all__ = ["SupervisedTask"]

_KINDS = ("classification", "regression")


class SupervisedTask:
    """The one interface every supervised inner problem offers to optimizers and outer loops.

    ``kind="classification"`` uses cross-entropy and reports accuracy; ``kind="regression"`` uses
    half the mean squared error. ``model`` is a factory called with ``in_features`` and
    ``out_features`` (deduced from the data), so that each run builds a freshly seeded model.
    """

    def __init__(self, data: SplitData, model: Callable[..., nn.Module], batch_size: int = 64,
                 kind: str = "classification", max_eval_samples: int | None = None, device: str = "cpu"):
        require("task.kind", kind, kind in _KINDS, f"one of {_KINDS}")
        require("task.batch_size", batch_size, isinstance(batch_size, int) and batch_size > 0,
                "a positive integer")
        require("task.max_eval_samples", max_eval_samples,
                max_eval_samples is None or (isinstance(max_eval_samples, int) and max_eval_samples > 0),
                "null or a positive integer")
        require("task.batch_size", batch_size, batch_size <= len(data.train.inputs),
                f"at most the {len(data.train.inputs)} training examples")
        self.kind = kind
        self.batch_size = batch_size
        self.max_eval_samples = max_eval_samples
        self.device = torch.device(device)
        self.data = SplitData(*(Split(s.inputs.to(self.device), s.targets.to(self.device)) for s in data))
        self.model_factory = model
        self.in_features = int(self.data.train.inputs[0].numel())
        if kind == "classification":
            self.out_features = int(self.data.train.targets.max()) + 1
        else:
            self.out_features = int(self.data.train.targets[0].numel())

    def build_model(self) -> nn.Module:
        """A new model (initialised from torch's global RNG) on the task's device."""
        return self.model_factory(in_features=self.in_features, out_features=self.out_features).to(self.device)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.kind == "classification":
            return F.cross_entropy(outputs, targets)
        return 0.5 * F.mse_loss(outputs.reshape(targets.shape), targets)

    def sample_batch(self, generator: torch.Generator | None = None, batch_size: int | None = None,
                     split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """A minibatch drawn uniformly with replacement across steps (without, inside the batch)."""
        inputs, targets = getattr(self.data, split)
        size = batch_size or self.batch_size
        idx = torch.randperm(len(inputs), generator=generator, device="cpu")[:size].to(self.device)
        return inputs[idx], targets[idx]

    def eval_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs and targets an evaluation of ``split`` uses (the first ``max_eval_samples``)."""
        inputs, targets = getattr(self.data, split)
        if self.max_eval_samples is not None:
            inputs, targets = inputs[: self.max_eval_samples], targets[: self.max_eval_samples]
        return inputs, targets

    @torch.no_grad()
    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor, split: str) -> dict[str, float]:
        """``<split>_loss`` (and ``<split>_accuracy`` for classification) of ``outputs``: the one definition
        every evaluation uses (plain training, training runs of the ES loops, bilevel problems)."""
        metrics = {f"{split}_loss": float(self.loss(outputs, targets))}
        if self.kind == "classification":
            metrics[f"{split}_accuracy"] = float((outputs.argmax(-1) == targets).float().mean())
        return metrics

    @torch.no_grad()
    def evaluate(self, model: nn.Module, splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, float]:
        """Full-split loss (and accuracy for classification), e.g. ``val_loss``, ``test_accuracy``."""
        was_training = model.training
        model.eval()
        metrics: dict[str, float] = {}
        for split in splits:
            inputs, targets = self.eval_split(split)
            metrics.update(self.metrics(model(inputs), targets, split))
        model.train(was_training)
        return metrics
