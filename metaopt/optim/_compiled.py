"""Steps compiled once with ``torch.compile`` (``TrainingRun(compile=True)``, and the ``fused=True`` complex
optimizers off CPU), and the ``fused=True`` step itself: one pass over all tensors of a group, by a C
kernel on CPU (``_cpu_kernels``) and by a compiled multi-tensor update elsewhere."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from metaopt.optim import _cpu_kernels

__all__ = ["CompiledStep", "FusedStep", "write_back"]


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


class FusedStep:
    """Run the C kernel ``kernel`` where it applies (contiguous float32/float64 CPU tensors and a C
    compiler), else ``CompiledStep(update)``; ``path`` names what the last step ran."""

    def __init__(self, kernel: str, update: Callable[..., None]):
        self.kernel = kernel
        self.compiled = CompiledStep(update)
        self.path: str | None = None

    def __call__(self, tensor_lists: list[list[torch.Tensor]], scalars: list[float]) -> None:
        if _cpu_kernels.run(self.kernel, tensor_lists, scalars):
            self.path = "cpu kernel"
            return
        params = tensor_lists[0]
        # Hyperparameters as a tensor, so that new values (schedulers) do not recompile.
        values = torch.tensor(scalars, dtype=torch.promote_types(params[0].dtype, torch.float32),
                              device=params[0].device)
        self.compiled(*tensor_lists, values)
        self.path = "eager" if self.compiled.failed else "torch.compile"
