"""The interface shared by every hypergradient method, and the products they are built from.

A method is called as ``method(problem, optimizer, outer_params, state, num_steps, generator,
tolerance)``: it takes ``num_steps`` inner steps from ``state`` (cold start: w₀ and a fresh optimizer
state; warm start: the carried state) and returns the hypergradient ``dF/dλ`` of the outer objective
at the final inner parameters, with that (detached) final state. Nothing it returns holds a graph,
so no memory survives from one outer step to the next.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

from metaopt._tree import Tensors, tree_leaves, tree_norm
from metaopt.bilevel.inner import InnerOptimizer, InnerState
from metaopt.tasks.bilevel.problem import BilevelProblem

__all__ = ["Hypergradient", "HypergradientResult", "InnerDerivatives"]


class HypergradientResult(NamedTuple):
    grads: Tensors
    """``dF/dλ``, one tensor per outer parameter (detached)."""
    state: InnerState
    """The inner state after the inner steps (detached)."""
    outer_loss: float
    """``F(λ, w_T)`` at the final inner parameters."""
    inner_steps: int
    residual: float
    """``‖∇_w f(λ, w_T)‖`` at the final inner parameters."""


class Hypergradient(Protocol):
    def __call__(self, problem: BilevelProblem, optimizer: InnerOptimizer, outer_params: Tensors,
                 state: InnerState, num_steps: int, generator: torch.Generator | None = None,
                 tolerance: float | None = None) -> HypergradientResult: ...


class InnerDerivatives:
    """Second derivatives of the inner objective ``f`` at ``(λ, w)`` as matrix-free products.

    One double-backward graph of ``g = ∇_w f(λ, w)`` is built once and reused by every product:
    ``hvp(v) = ∂²_ww f · v = ∂_w(g·v)`` and ``mixed(v) = ∂²_{λw} f · v = ∂_λ(g·v)``. No Hessian is
    formed; each product costs about two gradient evaluations. The graph lives as long as this object.
    """

    def __init__(self, problem: BilevelProblem, params: Tensors, outer_params: Tensors, batch=None):
        self.params = tree_leaves(params)
        self.outer_params = tree_leaves(outer_params)
        with torch.enable_grad():
            loss = problem.inner_loss(self.params, self.outer_params, batch)
            self.grad = torch.autograd.grad(loss, self.params, create_graph=True)
        self.residual = float(tree_norm(self.grad).detach())

    def _vjp(self, wrt: Tensors, vector: Tensors) -> Tensors:
        return torch.autograd.grad(self.grad, wrt, vector, retain_graph=True, allow_unused=True,
                                   materialize_grads=True)

    def hvp(self, vector: Tensors) -> Tensors:
        return self._vjp(self.params, vector)

    def mixed(self, vector: Tensors) -> Tensors:
        return self._vjp(self.outer_params, vector)
