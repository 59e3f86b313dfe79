"""The inner optimisation: an optimizer's functional core (``metaopt.optim.specs``), or any
``torch.optim.Optimizer`` where nothing differentiates through the inner steps.

The same pure update drives the no-graph inner training (implicit hypergradients, re-training) and
the differentiable unrolled graph (``Unroll``, ``TruncatedUnroll``): the optimizer math exists once.
Implicit (IFT) hypergradients need only the final inner parameters, so with them the inner problem may
also be trained by a stateful ``torch.optim.Optimizer`` that has no functional core
(``StatefulInnerOptimizer``): APO, whose meta-step sees the inner weights as a module, or a user's own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from metaopt._tree import Tensors, tree_detach, tree_leaves, tree_norm
from metaopt.checks import require
from metaopt.optim.apo.step import meta_learns
from metaopt.optim.specs import SPECS, OptimizerSpec, factory_kwargs, spec_for
from metaopt.tasks.bilevel.problem import BilevelProblem

__all__ = ["InnerState", "InnerOptimizer", "StatefulInnerOptimizer", "InnerRun", "run_inner", "inner_residual"]


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
        allowed = {*spec.hyperparameters, *spec.flags, *spec.class_defaults, *spec.constants}
        unknown = sorted(set(hyperparameters) - allowed)
        require("inner optimizer hyperparameters", unknown, not unknown,
                f"the arguments of metaopt.optim.functional.{spec.functional.update.__name__}: {sorted(allowed)}")
        spec.check(hyperparameters, "optimizer")
        if spec.prepare is not None:  # e.g. a learned optimizer's pretrained name to its weights
            hyperparameters = spec.prepare(dict(hyperparameters))
        self.hyperparameters = dict(hyperparameters)

    differentiable = True
    """Its steps can be differentiated through (``Unroll``, ``TruncatedUnroll``)."""

    @classmethod
    def from_config(cls, factory: Callable | None, name: str | None = None,
                    stateful: bool = False) -> InnerOptimizer | StatefulInnerOptimizer:
        """The inner optimizer that ``factory`` (``instantiate(cfg.optimizer)``) describes: its functional
        core; with ``stateful=True`` (implicit hypergradients), an optimizer without one is run as it is
        (``StatefulInnerOptimizer``)."""
        require("outer.inner_optimizer", name, factory is not None or name is not None,
                "an optimizer spec name (metaopt.optim.specs) when there is no cfg.optimizer")
        if factory is None:
            return cls(name)
        spec = spec_for(name if name is not None else factory)
        if spec is None and name is None and stateful:
            return StatefulInnerOptimizer(factory)
        target = getattr(factory, "func", factory)
        require("optimizer", getattr(target, "__name__", repr(target)), spec is not None,
                "an optimizer with a functional core (differentiable inner steps need one): "
                f"{', '.join(s.optimizer.__name__ for s in SPECS.values())}; with an implicit hypergradient "
                "(ift_cg, ift_neumann, ift_identity) any torch.optim.Optimizer")
        return cls(spec, **spec.functional_kwargs(factory_kwargs(factory)))

    def check(self, problem: BilevelProblem) -> None:
        """Raise before any work when this optimizer cannot train ``problem`` (never, for a functional core)."""

    def state_dict(self, state: InnerState) -> list[torch.Tensor]:
        """``state`` as tensors, for a checkpoint that loads with ``weights_only=True``."""
        return list(torch.utils._pytree.tree_flatten(state)[0])

    def load_state_dict(self, state: InnerState, saved: list[torch.Tensor]) -> InnerState:
        """``state`` (of the same shape) with the values of ``saved``."""
        return torch.utils._pytree.tree_unflatten(list(saved), torch.utils._pytree.tree_flatten(state)[1])

    def init(self, params: Tensors) -> InnerState:
        return InnerState(tuple(params), self.spec.init(tuple(params), self.hyperparameters))

    def step(self, state: InnerState, grads: Tensors) -> InnerState:
        params, opt_state = self.spec.update(state.params, grads, state.opt_state, **self.hyperparameters)
        return InnerState(tuple(params), opt_state)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"InnerOptimizer({self.name!r}, {args})"


class _InnerWeights(nn.Module):
    """The inner weights as the parameters of a module: what a ``torch.optim.Optimizer`` owns, and what an
    optimizer that meta-learns from the model it trains (APO's ``meta_step``) reads and swaps."""

    def __init__(self, params: Tensors):
        super().__init__()
        self.weights = nn.ParameterList(nn.Parameter(p.detach().clone()) for p in params)


class _LossOn(NamedTuple):
    batch: Any


class _OutputsOn(NamedTuple):
    inputs: torch.Tensor


class StatefulInner(NamedTuple):
    """The inner state of a ``StatefulInnerOptimizer``: the optimizer itself and the module of its weights."""

    optimizer: torch.optim.Optimizer
    weights: _InnerWeights


class StatefulInnerOptimizer:
    """Any ``torch.optim.Optimizer`` (``factory(params)``) as the inner optimizer of an implicit hypergradient.

    IFT hypergradients use only the final inner parameters, never a derivative of the inner steps, so
    the inner problem may be trained by an optimizer that has no functional core: APO (its meta-step
    runs every ``meta_interval`` inner steps, on a fresh inner batch), a torch optimizer metaopt has no
    spec for, or a user's own. ``Unroll``/``TruncatedUnroll`` refuse it (``differentiable`` is False).
    Its state (``StatefulInner``) is updated in place: the parameters in ``InnerState.params`` are the
    optimizer's own tensors, and a warm start carries the optimizer.

    APO's meta-objective ``Q(φ) = J_B(θ') + λ_FSD·D(f(x'; θ'), f(x'; θ)) + …`` reads ``J_B`` as the inner
    loss ``f(λ, θ'; B)`` and the outputs ``f(x'; θ)`` from the problem's ``inner_outputs`` on inputs from
    ``sample_inputs`` (``SupervisedBilevelProblem``: the task's model on a training minibatch); a problem
    without them takes APO with ``lambda_fsd=0`` only.
    """

    differentiable = False

    def __init__(self, factory: Callable[..., torch.optim.Optimizer]):
        require("optimizer", factory, callable(factory),
                "a factory params -> torch.optim.Optimizer (e.g. instantiate(cfg.optimizer))")
        self.factory = factory
        target = getattr(factory, "func", factory)
        self.name = getattr(target, "__name__", repr(target))

    def check(self, problem: BilevelProblem) -> None:
        """Refuse, before any work, APO's function-space term on a problem that has no model outputs."""
        if not meta_learns(self.factory):
            return
        target = getattr(self.factory, "func", self.factory)
        default = inspect.signature(target).parameters.get("lambda_fsd")  # APO's own default (0.1) if not given
        lambda_fsd = factory_kwargs(self.factory).get(
            "lambda_fsd", default.default if default is not None and default.default is not default.empty else 0.0)
        if lambda_fsd:
            require("optimizer.lambda_fsd", lambda_fsd, problem.has_outputs,
                    f"0 with {type(problem).__name__}: APO's function-space term compares model outputs, which "
                    "this bilevel problem does not define (BilevelProblem.inner_outputs and sample_inputs)")

    def init(self, params: Tensors) -> InnerState:
        weights = _InnerWeights(params)
        optimizer = self.factory(list(weights.weights))
        require("optimizer", type(optimizer).__name__, isinstance(optimizer, torch.optim.Optimizer),
                "a factory that returns a torch.optim.Optimizer")
        return InnerState(tuple(weights.weights), StatefulInner(optimizer, weights))

    def meta_step(self, problem: BilevelProblem, state: InnerState, outer_params: Tensors, batch: Any,
                  generator: torch.Generator | None) -> None:
        """APO's meta-step (when due) on the inner loss of ``batch`` and a fresh batch; ``.grad`` holds ``∇_w f``."""
        optimizer = state.opt_state.optimizer
        if not meta_learns(optimizer) or not optimizer.meta_due:
            return

        def forward(model: _InnerWeights, on: _LossOn | _OutputsOn) -> torch.Tensor:
            if isinstance(on, _OutputsOn):
                return problem.inner_outputs(tuple(model.weights), on.inputs)
            return problem.inner_loss(tuple(model.weights), outer_params, on.batch)

        def fresh() -> _OutputsOn | _LossOn:
            return _OutputsOn(problem.sample_inputs(generator)) if problem.has_outputs else _LossOn(None)

        optimizer.meta_step(state.opt_state.weights, _LossOn(batch), fresh, forward=forward,
                            loss=lambda loss, _: loss)

    def state_dict(self, state: InnerState) -> dict[str, Any]:
        return {"params": [p.detach().clone() for p in state.params],
                "optimizer": state.opt_state.optimizer.state_dict()}

    def load_state_dict(self, state: InnerState, saved: dict[str, Any]) -> InnerState:
        with torch.no_grad():
            for param, value in zip(state.params, saved["params"]):
                param.copy_(value)
        state.opt_state.optimizer.load_state_dict(saved["optimizer"])
        return state

    def __repr__(self) -> str:
        return f"StatefulInnerOptimizer({self.name})"


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
    if isinstance(optimizer, StatefulInnerOptimizer):
        require("differentiable", differentiable, not differentiable,
                f"False for {optimizer!r}: a stateful optimizer's steps cannot be differentiated through")
        return _run_stateful(problem, optimizer, state, tree_detach(outer_params), num_steps, generator, tolerance)
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


def _run_stateful(problem: BilevelProblem, optimizer: StatefulInnerOptimizer, state: InnerState,
                  outer_params: Tensors, num_steps: int, generator: torch.Generator | None,
                  tolerance: float | None) -> InnerRun:
    """``run_inner`` for a stateful optimizer: the same steps, taken in place by ``optimizer.step()``."""
    for taken in range(num_steps):
        batch = problem.inner_batch(generator)
        with torch.enable_grad():
            loss = problem.inner_loss(state.params, outer_params, batch)
            grads = torch.autograd.grad(loss, state.params)
        if tolerance is not None and float(tree_norm(grads)) <= tolerance:
            return InnerRun(state, taken)
        for param, grad in zip(state.params, grads):
            param.grad = grad
        optimizer.meta_step(problem, state, outer_params, batch, generator)
        state.opt_state.optimizer.step()
    return InnerRun(state, num_steps)

def inner_residual(problem: BilevelProblem, params: Tensors, outer_params: Tensors,
                   generator: torch.Generator | None = None) -> float:
    """``‖∇_w f(λ, w)‖``: how far ``params`` are from a stationary point of the inner problem."""
    params = tree_leaves(params)
    with torch.enable_grad():
        loss = problem.inner_loss(params, tree_detach(outer_params), problem.inner_batch(generator))
        return float(tree_norm(torch.autograd.grad(loss, params)))
