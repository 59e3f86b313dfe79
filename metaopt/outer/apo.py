"""``outer=apo``: plain training whose optimizer may meta-learn itself from a second batch (APO)."""

from __future__ import annotations

from typing import Any

from metaopt.optim.apo.step import training_step
from metaopt.outer.plain import TrainingLoop

__all__ = ["APOLoop"]


class APOLoop(TrainingLoop):
    """``TrainingLoop`` that also calls ``optimizer.meta_step`` when the optimizer asks for it.

    The two lines an APO user adds to a training loop: every ``meta_interval`` steps a fresh batch
    ``B'`` is drawn from the task's training split and ``meta_step(model, B, B', task.loss)`` updates
    φ before the ordinary ``step``. Each step logs the schedule APO found (``lr`` per group or
    ``precond_scale``, and ``apo_q``). With an optimizer that has no ``meta_step`` this is plain training.
    ``conf/optimizer/apo_*.yaml`` select this loop, so ``python -m metaopt.run optimizer=apo_lr`` is enough.
    """

    @staticmethod
    def optimizer_refusal(optimizer: type, kind: str | None, outer: Any = None) -> str | None:
        return None

    def step(self) -> dict[str, float]:
        loss = training_step(self.model, self.optimizer, self.task.loss, self.task.sample_batch(self.generator),
                             lambda: self.task.sample_batch(self.generator)[0])
        if self.scheduler is not None:
            self.scheduler.step()
        metrics = {"train_batch_loss": loss.item()}
        schedule = getattr(self.optimizer, "schedule", None)
        lr = float(self.optimizer.param_groups[0]["lr"])
        metrics.update(schedule() if schedule is not None else {"lr": lr})
        return metrics
