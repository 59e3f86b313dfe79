"""Bilevel problems: an inner objective ``f(λ, w)`` and an outer objective ``F(λ, w)``.

    λ* = argmin_λ F(λ, w*(λ)),   w*(λ) = argmin_w f(λ, w)    (Vicol et al., 2022, Eq. 1)

A problem is a handful of pure functions of tuples of tensors, so that every hypergradient method
(``metaopt.bilevel.hypergradient``) and both outer-loop modes drive the same object. The supervised
problems (per-parameter L2 decay, dataset distillation, learned augmentation) wrap a
``metaopt.tasks.SupervisedTask`` and call its model functionally.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.func import functional_call

from metaopt._tree import Tensors
from metaopt.checks import require
from metaopt.tasks.supervised import SupervisedTask

__all__ = ["BilevelProblem", "SupervisedBilevelProblem"]

_SPLITS = ("train", "val", "test")


class BilevelProblem:
    """The interface of a bilevel problem.

    ``init_inner()`` is w₀ (the same every call: cold start re-initialises to it), ``init_outer()`` λ₀.
    ``inner_batch(generator)`` returns the data of one inner step (``None``: the full, deterministic
    inner objective), consumed by ``inner_loss(params, outer_params, batch)``. ``hessian_bound`` is an
    upper bound on the largest eigenvalue of ``∂²_ww f`` when one is known (``None`` otherwise); the
    Neumann hypergradient checks its step size against it.

    ``has_outputs``: the problem also defines ``inner_outputs(params, inputs)`` (the model's outputs) and
    ``sample_inputs(generator)`` (a minibatch of inputs), which APO's function-space term reads when APO
    trains the inner problem.
    """

    hessian_bound: float | None = None
    has_outputs: bool = False

    def init_inner(self) -> Tensors:
        raise NotImplementedError

    def init_outer(self) -> Tensors:
        raise NotImplementedError

    def inner_batch(self, generator: torch.Generator | None) -> Any:
        return None

    def inner_loss(self, params: Tensors, outer_params: Tensors, batch: Any = None) -> torch.Tensor:
        raise NotImplementedError

    def outer_loss(self, params: Tensors, outer_params: Tensors) -> torch.Tensor:
        raise NotImplementedError

    def inner_outputs(self, params: Tensors, inputs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} defines no model outputs (has_outputs is False)")

    def sample_inputs(self, generator: torch.Generator | None) -> Any:
        raise NotImplementedError(f"{type(self).__name__} defines no model outputs (has_outputs is False)")

    @torch.no_grad()
    def evaluate(self, params: Tensors, outer_params: Tensors) -> dict[str, float]:
        """Metrics of inner parameters ``params`` (at least ``outer_loss``)."""
        return {"outer_loss": float(self.outer_loss(params, outer_params))}


class SupervisedBilevelProblem(BilevelProblem):
    """A bilevel problem on a supervised task: the inner variables are the weights of ``task``'s model.

    The outer objective is the task loss on ``outer_split`` (``"val"`` for hyperparameter tuning);
    ``inner_batch_size=None`` trains on the full inner data set at every step (deterministic inner
    problem, as the implicit-function-theorem hypergradients assume), an integer samples minibatches.
    w₀ is the model that ``task.build_model()`` returns when the problem is built (torch's global RNG,
    seeded by the runner).
    """

    has_outputs = True

    def __init__(self, task: SupervisedTask, outer_split: str = "val", inner_batch_size: int | None = None,
                 dtype: str | torch.dtype | None = None):
        require("task", type(task).__name__, isinstance(task, SupervisedTask),
                "a metaopt.tasks.SupervisedTask")
        require("task.outer_split", outer_split, outer_split in _SPLITS, f"one of {_SPLITS}")
        require("task.inner_batch_size", inner_batch_size,
                inner_batch_size is None or (isinstance(inner_batch_size, int) and inner_batch_size > 0),
                "null (full batch) or a positive integer")
        self.task = task
        self.outer_split = outer_split
        self.inner_batch_size = inner_batch_size
        self.model = task.build_model()
        if dtype is not None:
            self.model = self.model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        self.dtype = next(self.model.parameters()).dtype
        self.device = task.device
        self._names = tuple(name for name, _ in self.model.named_parameters())
        self._w0 = tuple(p.detach().clone() for p in self.model.parameters())
        self.model.requires_grad_(False)

    def forward(self, params: Tensors, inputs: torch.Tensor) -> torch.Tensor:
        """The task's model with weights ``params``."""
        return functional_call(self.model, dict(zip(self._names, params)), (inputs.to(self.dtype),))

    def inner_outputs(self, params: Tensors, inputs: torch.Tensor) -> torch.Tensor:
        return self.forward(params, inputs)

    def sample_inputs(self, generator: torch.Generator | None) -> torch.Tensor:
        """A training minibatch's inputs (``inner_batch_size`` examples, else the task's batch size)."""
        inputs, _ = self.task.sample_batch(generator, self.inner_batch_size or self.task.batch_size)
        return inputs.to(self.dtype)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = getattr(self.task.data, name)
        if self.task.kind == "regression":
            targets = targets.to(self.dtype)
        return inputs.to(self.dtype), targets

    def init_inner(self) -> Tensors:
        return tuple(p.clone() for p in self._w0)

    def inner_batch(self, generator: torch.Generator | None) -> Any:
        if self.inner_batch_size is None:
            return None
        inputs, targets = self.task.sample_batch(generator, self.inner_batch_size)
        return inputs.to(self.dtype), targets

    def data_loss(self, params: Tensors, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.task.loss(self.forward(params, inputs), targets)

    def outer_loss(self, params: Tensors, outer_params: Tensors) -> torch.Tensor:
        return self.data_loss(params, *self.split(self.outer_split))

    @torch.no_grad()
    def evaluate(self, params: Tensors, outer_params: Tensors) -> dict[str, float]:
        metrics = {"outer_loss": float(self.outer_loss(params, outer_params))}
        for name in _SPLITS:
            inputs, targets = self.split(name)
            metrics.update(self.task.metrics(self.forward(params, inputs), targets, name))
        return metrics
