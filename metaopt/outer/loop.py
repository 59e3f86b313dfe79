"""The interface between the experiment runner and whatever it runs (plain training or an outer loop)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["Loop"]


@runtime_checkable
class Loop(Protocol):
    """What ``metaopt.run`` drives: ``num_steps`` calls of ``step``, with evaluation and checkpoints.

    The runner owns progress bars, logging, checkpoints and the NaN/Inf guard; a loop owns only its
    math. ``step`` returns the metrics of that step (every value must be finite, else the run stops);
    ``evaluate`` returns metrics computed every ``eval_every`` steps; ``summary`` the final metrics
    written to ``summary.json``; ``state_dict``/``load_state_dict`` hold everything needed to resume
    exactly (model, optimizers, particle states, generators). ``plots`` may write extra PNGs into a
    folder and return their paths.

    Optional: ``eval_images(folder, step) -> {key: path}``, images of the evaluation just made (written
    into the run folder, sent to the dashboard under ``key`` at ``step``), e.g. a diffusion loop's samples.
    """

    num_steps: int
    eval_every: int

    def step(self) -> dict[str, float]: ...

    def evaluate(self) -> dict[str, float]: ...

    def summary(self) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def plots(self, folder: Path) -> list[Path]: ...
