"""The inner optimisation: any optimizer with a functional core (``metaopt.optim.specs``).

The same pure update drives the no-graph inner training (implicit hypergradients, re-training) and
the differentiable unrolled graph (``Unroll``, ``TruncatedUnroll``): the optimizer math exists once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from metaopt._tree import Tensors, tree_detach, tree_leaves, tree_norm
from metaopt.checks import require
from metaopt.optim.specs import SPECS, OptimizerSpec, factory_kwargs, spec_for
from metaopt.tasks.bilevel.problem import BilevelProblem

__all__ = ["InnerState", "InnerOptimizer", "InnerRun", "run_inner", "inner_residual"]


class InnerState(NamedTuple):
    """Inner weights ``w`` and the state of the inner optimizer (momentum buffers, step count)."""

    params: Tensors
    opt_state: Any


class InnerOptimizer:
    """An optimizer's functional core with fixed hyperparameters.

    ``InnerOptimizer("sgd", lr=0.1, momentum=0.9)`` (a spec name, an optimizer class or its spec), with
    the functional core's keyword arguments. ``from_config`` maps the runner's ``cfg.optimizer`` factory
    (a partial of a ``torch.optim``/``metaopt.optim`` class) onto its spec: the class's keyword arguments
    become the core's (torch's ``betas=(β₁, β₂)`` becomes ``beta1``, ``beta2``; implementation flags
    such as ``foreach`` and ``fused`` are dropped), checked against their domains.
    """

    def __init__(self, name: str | type | OptimizerSpec = "sgd", **hyperparameters: Any):
        spec = spec_for(name)
        require("inner optimizer", name, spec is not None,
                f"an optimizer with a functional core: {sorted(s.name for s in SPECS.values())} "
                "(metaopt.optim.specs)")
        self.spec = spec
        self.name = spec.name
        allowed = {*spec.hyperparameters, *spec.flags, *spec.class_defaults}
        unknown = sorted(set(hyperparameters) - allowed)
        require("inner optimizer hyperparameters", unknown, not unknown,
                f"the arguments of metaopt.optim.functional.{spec.functional.update.__name__}: {sorted(allowed)}")
        spec.check(hyperparameters, "optimizer")
        self.hyperparameters = dict(hyperparameters)

    @classmethod
    def from_config(cls, factory: Callable | None, name: str | None = None) -> InnerOptimizer:
        """The inner optimizer that ``factory`` (``instantiate(cfg.optimizer)``) describes."""
        require("outer.inner_optimizer", name, factory is not None or name is not None,
                "an optimizer spec name (metaopt.optim.specs) when there is no cfg.optimizer")
        if factory is None:
            return cls(name)
        spec = spec_for(name if name is not None else factory)
        target = getattr(factory, "func", factory)
        require("optimizer", getattr(target, "__name__", repr(target)), spec is not None,
                "an optimizer with a functional core (differentiable inner steps need one): "
                f"{', '.join(s.optimizer.__name__ for s in SPECS.values())}")
        return cls(spec, **spec.functional_kwargs(factory_kwargs(factory)))

    def init(self, params: Tensors) -> InnerState:
        return InnerState(tuple(params), self.spec.init(tuple(params), self.hyperparameters))

    def step(self, state: InnerState, grads: Tensors) -> InnerState:
        params, opt_state = self.spec.update(state.params, grads, state.opt_state, **self.hyperparameters)
        return InnerState(tuple(params), opt_state)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"InnerOptimizer({self.name!r}, {args})"


class InnerRun(NamedTuple):
    state: InnerState
    steps: int
    """Inner steps taken (fewer than asked when the tolerance was reached)."""


def _detach_state(state: InnerState) -> InnerState:
    opt_state = torch.utils._pytree.tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t,
                                             state.opt_state)
    return InnerState(tree_detach(state.params), opt_state)


def run_inner(problem: BilevelProblem, optimizer: InnerOptimizer, state: InnerState, outer_params: Tensors,
              num_steps: int, generator: torch.Generator | None = None, differentiable: bool = False,
              tolerance: float | None = None) -> InnerRun:
    """``num_steps`` inner steps ``w ← update(w, ∇_w f(λ, w; batch))`` from ``state``.

    ``differentiable=False``: every step is taken without a graph and the returned state is detached
    (constant memory in ``num_steps``). ``differentiable=True``: the steps build one graph from
    ``outer_params`` (and the entering state) to the returned state, so that ``autograd.grad`` of a
    function of it differentiates through all of them (memory linear in ``num_steps``); the entering
    state is treated as a constant (its history is cut). With ``tolerance``, the run stops before the
    first step whose gradient norm ``‖∇_w f‖`` is at most ``tolerance``.
    """
    state = _detach_state(state)
    if not differentiable:
        outer_params = tree_detach(outer_params)
    for taken in range(num_steps):
        params = tuple(p if p.requires_grad else p.detach().requires_grad_() for p in state.params)
        with torch.enable_grad():
            loss = problem.inner_loss(params, outer_params, problem.inner_batch(generator))
            grads = torch.autograd.grad(loss, params, create_graph=differentiable)
        if tolerance is not None and float(tree_norm(grads).detach()) <= tolerance:
            return InnerRun(state, taken)
        if differentiable:
            state = optimizer.step(InnerState(params, state.opt_state), grads)
        else:
            with torch.no_grad():
                state = optimizer.step(InnerState(tree_detach(params), state.opt_state), grads)
    return InnerRun(state, num_steps)


def inner_residual(problem: BilevelProblem, params: Tensors, outer_params: Tensors,
                   generator: torch.Generator | None = None) -> float:
    """``‖∇_w f(λ, w)‖``: how far ``params`` are from a stationary point of the inner problem."""
    params = tree_leaves(params)
    with torch.enable_grad():
        loss = problem.inner_loss(params, tree_detach(outer_params), problem.inner_batch(generator))
        return float(tree_norm(torch.autograd.grad(loss, params)))
