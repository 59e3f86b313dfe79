"""Bilevel optimisation: cold- and warm-start outer loops with hypergradient approximations.

Vicol, Lorraine, Pedregosa, Duvenaud & Grosse, "On Implicit Bias in Overparameterized Bilevel
Optimization" (ICML 2022). A ``BilevelProblem`` defines the inner objective f(λ, w) and the outer
objective F(λ, w); a hypergradient method (``Unroll``, ``TruncatedUnroll``, ``ImplicitCG``,
``ImplicitNeumann``, ``ImplicitIdentity``, also by their names in ``HYPERGRADIENTS``) runs the inner
steps with any functional optimizer of ``metaopt.optim.functional.FUNCTIONAL`` and returns dF/dλ;
``BilevelLoop`` drives it in ``cold_start`` or ``warm_start`` mode.
"""

from metaopt.bilevel.augment import LearnedAugmentation
from metaopt.bilevel.distill import DatasetDistillation
from metaopt.bilevel.hypergradient import Hypergradient, HypergradientResult, InnerDerivatives
from metaopt.bilevel.implicit import ImplicitCG, ImplicitHypergradient, ImplicitIdentity, ImplicitNeumann
from metaopt.bilevel.inner import InnerOptimizer, InnerState, inner_residual, run_inner
from metaopt.bilevel.l2 import PerParameterL2
from metaopt.bilevel.linear_solve import ConvergenceWarning, conjugate_gradient, neumann_series
from metaopt.bilevel.loop import MODES, BilevelLoop
from metaopt.bilevel.memory import SavedTensorMeter
from metaopt.bilevel.problem import BilevelProblem, SupervisedBilevelProblem
from metaopt.bilevel.unroll import TruncatedUnroll, Unroll

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
    "BilevelLoop", "MODES", "BilevelProblem", "SupervisedBilevelProblem", "PerParameterL2",
    "DatasetDistillation", "LearnedAugmentation", "Hypergradient", "HypergradientResult",
    "InnerDerivatives", "Unroll", "TruncatedUnroll", "ImplicitHypergradient", "ImplicitCG",
    "ImplicitNeumann", "ImplicitIdentity", "HYPERGRADIENTS", "InnerOptimizer", "InnerState", "run_inner",
    "inner_residual", "ConvergenceWarning", "conjugate_gradient", "neumann_series", "SavedTensorMeter",
]
