"""Hypergradients by differentiating through the inner optimisation (reverse-mode unrolling).

``Unroll`` differentiates through every inner step: exact for the dynamics that were run (cold
start: the derivative of the finite-T response w_T(λ)), memory linear in the number of steps.
``TruncatedUnroll(K)`` keeps only the last K steps in the graph and treats the state entering them
as a constant (its dependence on λ is cut): memory linear in K, biased when the earlier steps
matter (Shaban et al., 2019). In warm start both differentiate only through the inner steps of the
current outer step: the carried state is a constant.
"""

from __future__ import annotations

import torch

from metaopt._tree import Tensors, tree_detach, tree_leaves
from metaopt.bilevel.hypergradient import HypergradientResult
from metaopt.bilevel.inner import InnerOptimizer, InnerState, _detach_state, inner_residual, run_inner
from metaopt.checks import require
from metaopt.tasks.bilevel.problem import BilevelProblem

__all__ = ["Unroll", "TruncatedUnroll"]


class TruncatedUnroll:
    """Reverse-mode differentiation through the last ``truncation_length`` inner steps.

    ``truncation_length=None`` differentiates through all of them (``Unroll``). With a
    ``tolerance``, the steps before the window stop early once ``‖∇_w f‖ ≤ tolerance`` and the window
    still takes its K steps, so that a converged run is differentiated through K steps at the solution
    (which equals the Neumann series with K − 1 terms and ``α = lr`` for gradient descent).
    """

    def __init__(self, truncation_length: int | None):
        require("truncated_unroll.truncation_length", truncation_length,
                truncation_length is None or (isinstance(truncation_length, int) and truncation_length > 0),
                "a positive integer (null: the full unroll)")
        self.truncation_length = truncation_length

    def __call__(self, problem: BilevelProblem, optimizer: InnerOptimizer, outer_params: Tensors,
                 state: InnerState, num_steps: int, generator: torch.Generator | None = None,
                 tolerance: float | None = None) -> HypergradientResult:
        window = num_steps if self.truncation_length is None else min(self.truncation_length, num_steps)
        head = run_inner(problem, optimizer, state, outer_params, num_steps - window, generator,
                         tolerance=tolerance)
        outer = tree_leaves(outer_params)
        with torch.enable_grad():
            tail = run_inner(problem, optimizer, head.state, outer, window, generator, differentiable=True,
                             tolerance=tolerance if self.truncation_length is None else None)
            loss = problem.outer_loss(tail.state.params, outer)
            grads = torch.autograd.grad(loss, outer, allow_unused=True, materialize_grads=True)
        final = _detach_state(tail.state)
        residual = inner_residual(problem, final.params, outer_params, generator)
        steps = head.steps + tail.steps
        return HypergradientResult(tree_detach(grads), final, float(loss.detach()), steps, residual)

    def __repr__(self) -> str:
        return f"TruncatedUnroll(truncation_length={self.truncation_length})"


class Unroll(TruncatedUnroll):
    """Reverse-mode differentiation through every inner step (exact for the dynamics that were run)."""

    def __init__(self):
        super().__init__(None)

    def __repr__(self) -> str:
        return "Unroll()"
