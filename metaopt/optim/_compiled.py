"""A step compiled once with ``torch.compile``, used by the ``fused=True`` optimizers and by
``TrainingRun(compile=True)``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["CompiledStep", "write_back"]


class CompiledStep:
    """Call ``torch.compile(update)`` and return its result; if compiling fails (no C++ compiler,
    unsupported platform), warn once and run ``update`` eagerly from then on.

    The fused optimizers' ``update`` mutates its tensor lists in place and reads its hyperparameters
    from a 1-d tensor, so new learning rates (schedulers) do not trigger recompilation; new shapes
    (another param group, another number of particles) compile once more, up to dynamo's cache limit.
    """

    def __init__(self, update: Callable[..., Any]):
        self.update = update
        self._compiled: Callable[..., Any] | None = None
        self.failed = False

    def __call__(self, *args) -> Any:
        if not self.failed:
            if self._compiled is None:
                self._compiled = torch.compile(self.update, fullgraph=True, dynamic=False)
            try:
                return self._compiled(*args)
            except Exception as error:  # noqa: BLE001 - any compiler failure means: run eagerly
                self.failed = True
                warnings.warn(f"torch.compile of {self.update.__name__} failed ({type(error).__name__}: "
                              f"{error}); running the eager version instead", stacklevel=3)
        return self.update(*args)


def write_back(targets: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    """Copy each new state tensor into its buffer, one ``copy_`` per tensor, as the last op of a step.

    With ``torch._foreach_copy_`` inductor (torch 2.11, CUDA) reused a buffer that a later read of the
    old state still needed, and a compiled complex momentum step drifted from the eager one from its
    second step on (by 6e-3 after 2 steps); per-tensor copies after every read give the eager result.
    """
    for target, value in zip(targets, values):
        target.copy_(value)
