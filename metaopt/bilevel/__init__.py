"""Bilevel optimisation: cold- and warm-start outer loops with hypergradient approximations.

Vicol, Lorraine, Pedregosa, Duvenaud & Grosse, "On Implicit Bias in Overparameterized Bilevel
Optimization" (ICML 2022). A ``BilevelProblem`` defines the inner objective f(λ, w) and the outer
objective F(λ, w); a hypergradient method (``Unroll``, ``TruncatedUnroll``, ``ImplicitCG``,
``ImplicitNeumann``, ``ImplicitIdentity``, also by their names in ``HYPERGRADIENTS``) runs the inner
steps with an optimizer's functional core (``metaopt.optim.specs``; with the implicit methods, any
``torch.optim.Optimizer``, APO included: ``StatefulInnerOptimizer``) and returns dF/dλ;
``metaopt.outer.BilevelLoop`` drives it in ``cold_start`` or ``warm_start`` mode; the problems are
tasks (``metaopt.tasks.bilevel``).
"""

from metaopt.bilevel.hypergradient import Hypergradient, HypergradientResult, InnerDerivatives
from metaopt.bilevel.implicit import ImplicitCG, ImplicitHypergradient, ImplicitIdentity, ImplicitNeumann
from metaopt.bilevel.inner import InnerOptimizer, InnerState, StatefulInnerOptimizer, inner_residual, run_inner
from metaopt.bilevel.linear_solve import ConvergenceWarning, conjugate_gradient, neumann_series
from metaopt.bilevel.memory import SavedTensorMeter
from metaopt.bilevel.unroll import TruncatedUnroll, Unroll
from metaopt.tasks.bilevel.problem import BilevelProblem

# The names for the methods: unroll, truncated_unroll(K), ift_cg(iters, damping),
# ift_neumann(terms, alpha), ift_identity.
HYPERGRADIENTS = {
    "unroll": Unroll,
    "truncated_unroll": TruncatedUnroll,
    "ift_cg": ImplicitCG,
    "ift_neumann": ImplicitNeumann,
    "ift_identity": ImplicitIdentity,
}

__all__ = [
    "BilevelProblem", "Hypergradient", "HypergradientResult",
    "InnerDerivatives", "Unroll", "TruncatedUnroll", "ImplicitHypergradient", "ImplicitCG",
    "ImplicitNeumann", "ImplicitIdentity", "HYPERGRADIENTS", "InnerOptimizer", "StatefulInnerOptimizer", "InnerState",
    "run_inner",
    "inner_residual", "ConvergenceWarning", "conjugate_gradient", "neumann_series", "SavedTensorMeter",
]
