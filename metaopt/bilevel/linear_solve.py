"""Matrix-free solvers of ``H x = v`` for the implicit hypergradient (H: the inner Hessian).

Both work on tuples of tensors and only call ``matvec(x) = H x`` (a Hessian-vector product), so the
Hessian is never formed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from metaopt._tree import Tensors, tree_axpy, tree_dot, tree_norm
from metaopt.checks import require

__all__ = ["ConvergenceWarning", "conjugate_gradient", "neumann_series"]

MatVec = Callable[[Tensors], Tensors]


class ConvergenceWarning(UserWarning):
    """An iterative computation (inner problem, linear solve) did not converge."""


def conjugate_gradient(matvec: MatVec, rhs: Tensors, iters: int, damping: float = 0.0,
                       least_squares: bool = False, rtol: float = 1e-12) -> Tensors:
    """Conjugate gradient for ``A x = rhs`` with ``A = H + damping·I``, started from ``x = 0``.

    From zero, every iterate lies in the Krylov space ``span{rhs, A rhs, …}``. On a singular positive
    semi-definite ``H`` (an overparameterised inner problem, ``damping = 0``) CG therefore converges
    to the minimum-norm solution ``H⁺ rhs`` when ``rhs`` lies in the range of ``H``; when it does not
    (an outer loss on other data than the inner one), no solution exists and CG breaks down.
    ``least_squares=True`` then runs CG on the normal equations ``A² x = A rhs`` (CGNR; two products
    per iteration, squared condition number), whose iterates stay in the range of ``A`` and converge
    to the minimum-norm least-squares solution ``A⁺ rhs``. Stops after ``iters`` iterations, when
    ``‖r‖ ≤ rtol·‖b‖``, or when a search direction has no curvature left (``pᵀAp ≤ 0`` in floating
    point), which only happens once the solve is done or ``A`` is not positive semi-definite. A final
    residual larger than ``‖b‖`` (worse than ``x = 0``: the symptom of a right-hand side outside the
    range, or of an indefinite ``A``) raises a ``ConvergenceWarning``.
    """
    require("ift_cg.iters", iters, isinstance(iters, int) and iters >= 0, "a non-negative integer")
    require("ift_cg.damping", damping, damping >= 0, "a number >= 0 (Tikhonov damping of the Hessian)")

    def damped(x: Tensors) -> Tensors:
        hx = matvec(x)
        return hx if damping == 0 else tree_axpy(damping, x, hx)

    operator, b = damped, rhs
    if least_squares:
        operator, b = (lambda x: damped(damped(x))), damped(rhs)
    x = tuple(torch.zeros_like(t) for t in b)
    r, p = b, b
    rs = rs_start = float(tree_dot(r, r))
    stop = rtol**2 * rs
    for _ in range(iters):
        if rs <= stop:
            break
        ap = operator(p)
        pap = float(tree_dot(p, ap))
        if pap <= 0:
            break
        step = rs / pap
        x = tree_axpy(step, p, x)
        r = tree_axpy(-step, ap, r)
        rs_next = float(tree_dot(r, r))
        p = tree_axpy(rs_next / rs, p, r)
        rs = rs_next
    if rs > rs_start:
        advice = "" if least_squares else "least_squares=True (minimum-norm least-squares solution) or "
        warnings.warn(
            f"ift_cg: conjugate gradient diverged: residual |b - A x| = {(rs / rs_start) ** 0.5:.3g} |b| "
            f"after {iters} iterations (the Hessian is singular with the right-hand side outside its range, "
            f"or indefinite); use {advice}damping > 0", ConvergenceWarning, stacklevel=3)
    return x


def neumann_series(matvec: MatVec, rhs: Tensors, terms: int, alpha: float) -> Tensors:
    """``H⁻¹ rhs ≈ α Σ_{j=0}^{J} (I − αH)^j rhs`` (Lorraine et al., 2020, Eq. 7; J = ``terms``).

    The series converges iff the spectral radius of ``I − αH`` on the range of ``H`` is below one,
    i.e. ``0 < α < 2/λ_max(H)`` for positive semi-definite ``H``; then the terms never grow. A last
    term larger than the one before reveals divergence: a ``ConvergenceWarning`` reports the growth
    factor and the lower bound on ``λ_max`` it implies.
    """
    require("ift_neumann.terms", terms, isinstance(terms, int) and terms >= 0, "a non-negative integer")
    require("ift_neumann.alpha", alpha, alpha > 0, "a number > 0 (the Neumann step size)")
    term, previous = rhs, rhs
    total = rhs
    for _ in range(terms):
        previous = term
        term = tree_axpy(-alpha, matvec(term), term)
        total = tree_axpy(1.0, term, total)
    if terms:
        before, last = float(tree_norm(previous)), float(tree_norm(term))
        if before > 0 and last > before * (1 + 1e-6):
            growth = last / before
            # |1 − αλ| ≈ growth for the dominant eigenvalue λ, so λ ≈ (1 + growth)/α (or λ < 0).
            bound = (1 + growth) / alpha
            warnings.warn(
                f"ift_neumann: the Neumann series diverges with alpha={alpha:g}: its terms grow by "
                f"{growth:.4g}x per term, so the spectral radius of I - alpha*H exceeds 1 (largest Hessian "
                f"eigenvalue ~ {bound:.4g}, or a negative one); convergence needs alpha < 2/lambda_max "
                f"~ {2 / bound:.4g}", ConvergenceWarning, stacklevel=3)
    return tuple(alpha * t for t in total)
