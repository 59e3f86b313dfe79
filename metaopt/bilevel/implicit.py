"""Hypergradients from the implicit function theorem at the final inner parameters.

At a stationary point ``∇_w f(λ, w*) = 0``, ``dw*/dλ = −[∂²_ww f]⁻¹ ∂²_{wλ} f``, hence

    dF/dλ = ∂_λF − ∂²_{λw}f · [∂²_ww f]⁻¹ ∂_wF        (Vicol et al., 2022, Eq. 4)

The inner steps run without a graph (memory flat in their number); only one double-backward graph of
``∇_w f`` at the final parameters is built. The methods differ in how they approximate
``x = [∂²_ww f]⁻¹ ∂_wF``: conjugate gradient, a truncated Neumann series, or the identity.
"""

from __future__ import annotations

import math
import warnings

import torch

from metaopt._tree import Tensors, tree_detach, tree_leaves
from metaopt.bilevel.hypergradient import HypergradientResult, InnerDerivatives
from metaopt.bilevel.inner import InnerOptimizer, InnerState, run_inner
from metaopt.bilevel.linear_solve import ConvergenceWarning, MatVec, conjugate_gradient, neumann_series
from metaopt.checks import require
from metaopt.tasks.bilevel.problem import BilevelProblem

__all__ = ["ImplicitHypergradient", "ImplicitCG", "ImplicitNeumann", "ImplicitIdentity"]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ImplicitHypergradient:
    """IFT hypergradient; subclasses define ``solve(hvp, v) ≈ H⁻¹ v``."""

    def solve(self, hvp: MatVec, vector: Tensors, problem: BilevelProblem) -> Tensors:
        raise NotImplementedError

    def __call__(self, problem: BilevelProblem, optimizer: InnerOptimizer, outer_params: Tensors,
                 state: InnerState, num_steps: int, generator: torch.Generator | None = None,
                 tolerance: float | None = None) -> HypergradientResult:
        run = run_inner(problem, optimizer, state, outer_params, num_steps, generator, tolerance=tolerance)
        batch = problem.inner_batch(generator)
        derivatives = InnerDerivatives(problem, run.state.params, outer_params, batch)
        params, outer = tree_leaves(run.state.params), derivatives.outer_params
        with torch.enable_grad():
            loss = problem.outer_loss(params, outer)
            d_all = torch.autograd.grad(loss, params + outer, allow_unused=True, materialize_grads=True)
        d_params, d_outer = d_all[: len(params)], d_all[len(params):]
        inverse_hvp = self.solve(derivatives.hvp, tree_detach(d_params), problem)
        mixed = derivatives.mixed(inverse_hvp)
        grads = tuple((d - m).detach() for d, m in zip(d_outer, mixed))
        return HypergradientResult(grads, run.state, float(loss.detach()), run.steps, derivatives.residual)


class ImplicitCG(ImplicitHypergradient):
    """``x`` by ``iters`` conjugate-gradient iterations on ``(H + damping·I) x = ∂_wF`` from zero.

    With ``damping = 0`` on a singular Hessian (overparameterised inner problem) CG from zero returns
    the minimum-norm solution ``H⁺∂_wF`` if ``∂_wF`` lies in the range of ``H``; otherwise set
    ``least_squares=True`` (CG on the normal equations, the minimum-norm least-squares solution, which
    is what differentiating the cold-start response gives when ``∂²_{wλ}f`` maps into that range, as
    in least squares). ``damping > 0`` regularises instead (and biases the result).
    """

    def __init__(self, iters: int = 20, damping: float = 0.0, least_squares: bool = False):
        require("ift_cg.iters", iters, isinstance(iters, int) and not isinstance(iters, bool) and iters > 0,
                "a positive integer")
        require("ift_cg.damping", damping, _finite(damping) and damping >= 0,
                "a finite number >= 0 (Tikhonov damping added to the Hessian)")
        self.iters = iters
        self.damping = float(damping)
        self.least_squares = bool(least_squares)

    def solve(self, hvp: MatVec, vector: Tensors, problem: BilevelProblem) -> Tensors:
        return conjugate_gradient(hvp, vector, self.iters, self.damping, self.least_squares)

    def __repr__(self) -> str:
        return f"ImplicitCG(iters={self.iters}, damping={self.damping}, least_squares={self.least_squares})"


class ImplicitNeumann(ImplicitHypergradient):
    """``x = α Σ_{j=0}^{J} (I − αH)^j ∂_wF`` (Lorraine et al., 2020, Eq. 7), ``J = terms``.

    Converges iff ``0 < α < 2/λ_max(H)``. When an upper bound on ``λ_max`` is known (the
    ``spectral_bound`` argument, or the problem's ``hessian_bound``) a step size at or above
    ``2/bound`` warns at once; otherwise a diverging series warns when its terms grow.
    """

    def __init__(self, terms: int = 20, alpha: float = 0.1, spectral_bound: float | None = None):
        require("ift_neumann.terms", terms, isinstance(terms, int) and terms >= 0, "a non-negative integer")
        require("ift_neumann.alpha", alpha, _finite(alpha) and alpha > 0,
                "a finite number > 0 (the Neumann step size)")
        require("ift_neumann.spectral_bound", spectral_bound,
                spectral_bound is None or (_finite(spectral_bound) and spectral_bound > 0),
                "null or a finite upper bound > 0 on the largest Hessian eigenvalue")
        self.terms = terms
        self.alpha = float(alpha)
        self.spectral_bound = spectral_bound
        self._check_bound(spectral_bound)

    def _check_bound(self, bound: float | None) -> None:
        if bound is not None and self.alpha * bound >= 2:
            warnings.warn(
                f"ift_neumann: alpha={self.alpha:g} >= 2/lambda_max = {2 / bound:.4g} (spectral bound "
                f"lambda_max <= {bound:.4g}): the Neumann series may diverge; use alpha < {2 / bound:.4g}",
                ConvergenceWarning, stacklevel=3)

    def solve(self, hvp: MatVec, vector: Tensors, problem: BilevelProblem) -> Tensors:
        if self.spectral_bound is None and problem.hessian_bound is not None:
            self._check_bound(problem.hessian_bound)
        return neumann_series(hvp, vector, self.terms, self.alpha)

    def __repr__(self) -> str:
        return f"ImplicitNeumann(terms={self.terms}, alpha={self.alpha})"


class ImplicitIdentity(ImplicitHypergradient):
    """``[∂²_ww f]⁻¹ ≈ I``: ``dF/dλ ≈ ∂_λF − ∂²_{λw}f · ∂_wF`` (no linear solve; one mixed product)."""

    def solve(self, hvp: MatVec, vector: Tensors, problem: BilevelProblem) -> Tensors:
        return vector

    def __repr__(self) -> str:
        return "ImplicitIdentity()"
