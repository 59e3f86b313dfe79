"""``outer=none``: ordinary training of a task's model with one optimizer (no outer loop)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from metaopt.checks import require
from metaopt.optim.apo.step import meta_learns
from metaopt.tasks.supervised import SupervisedTask

__all__ = ["TrainingLoop"]


class TrainingLoop:
    """Train ``task.build_model()`` for ``steps`` minibatch steps with ``optimizer(model.parameters())``.

    ``optimizer`` and ``scheduler`` are factories (Hydra ``_partial_`` configs): any
    ``torch.optim.Optimizer`` and any ``torch.optim.lr_scheduler`` work, stepped once per step.
    """

    accepts = ("supervised",)

    @staticmethod
    def optimizer_refusal(optimizer: type, kind: str | None, outer: Any = None) -> str | None:
        if meta_learns(optimizer):
            return (f"outer=none never calls {optimizer.__name__}'s meta_step, so it would train as its base "
                    "optimizer (use outer=apo, which optimizer=apo_* selects unless outer= is given)")
        return None

    def __init__(self, task: SupervisedTask, optimizer: Callable, steps: int = 2000, eval_every: int = 100,
                 scheduler: Callable | None = None, generator: torch.Generator | None = None):
        require("outer.steps", steps, isinstance(steps, int) and steps > 0, "a positive integer")
        require("outer.eval_every", eval_every, isinstance(eval_every, int) and eval_every >= 0,
                "a non-negative integer (0: only at the end)")
        self.task = task
        self.num_steps = steps
        self.eval_every = eval_every
        self.generator = generator if generator is not None else torch.Generator()
        self.model = task.build_model()
        self.optimizer = optimizer(self.model.parameters())
        self.scheduler = scheduler(self.optimizer) if scheduler is not None else None

    def step(self) -> dict[str, float]:
        inputs, targets = self.task.sample_batch(self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.task.loss(self.model(inputs), targets)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return {"train_batch_loss": loss.item(), "lr": float(self.optimizer.param_groups[0]["lr"])}

    def evaluate(self) -> dict[str, float]:
        return self.task.evaluate(self.model)

    def summary(self) -> dict[str, Any]:
        return self.evaluate()

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])

    def plots(self, folder: Path) -> list[Path]:
        return []
