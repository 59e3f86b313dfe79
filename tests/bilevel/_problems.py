"""A small overparameterised least-squares bilevel problem with closed-form answers."""

from __future__ import annotations

import torch

from metaopt.bilevel import BilevelProblem


class LeastSquares(BilevelProblem):
    """``f(λ, w) = ‖A w − B λ‖²/(2n)`` with n < dim(w) (singular Hessian ``AᵀA/n``),
    ``F(λ, w) = ½‖C w − c‖² + ½ρ‖λ‖²``.

    ``consistent=True`` makes ``C = M A``, so that ``∂_wF`` lies in the range of the Hessian.
    Gradient descent from w₀ converges to ``w*(λ) = w₀ + A⁺(Bλ − A w₀)``, the solution closest to w₀,
    so ``dF/dλ = (A⁺B)ᵀ Cᵀ(C w* − c) + ρλ``.
    """

    def __init__(self, num_equations=6, dim=15, outer_dim=4, num_outer=8, ridge=0.1, seed=0,
                 consistent=False):
        gen = torch.Generator().manual_seed(seed)
        kw = dict(generator=gen, dtype=torch.float64)
        self.A = torch.randn(num_equations, dim, **kw)
        self.B = torch.randn(num_equations, outer_dim, **kw)
        self.C = torch.randn(num_outer, dim, **kw)
        if consistent:  # the outer loss sees w only through A w: ∂_wF lies in the range of the Hessian
            self.C = torch.randn(num_outer, num_equations, **kw) @ self.A
        self.c = torch.randn(num_outer, **kw)
        self.w0 = torch.randn(dim, **kw)
        self.lambda0 = torch.randn(outer_dim, **kw)
        self.ridge = ridge
        self.n = num_equations
        self.hessian_bound = float(torch.linalg.eigvalsh(self.A.T @ self.A / self.n).max())

    def init_inner(self):
        return (self.w0.clone(),)

    def init_outer(self):
        return (self.lambda0.clone(),)

    def inner_loss(self, params, outer_params, batch=None):
        residual = self.A @ params[0] - self.B @ outer_params[0]
        return residual.pow(2).sum() / (2 * self.n)

    def outer_loss(self, params, outer_params):
        fit = 0.5 * (self.C @ params[0] - self.c).pow(2).sum()
        return fit + 0.5 * self.ridge * outer_params[0].pow(2).sum()

    def solution(self, outer):
        """The minimum-distance-from-w₀ inner solution."""
        return self.w0 + torch.linalg.pinv(self.A) @ (self.B @ outer - self.A @ self.w0)

    def hypergradient(self, outer):
        w = self.solution(outer)
        jac = torch.linalg.pinv(self.A) @ self.B
        return jac.T @ self.C.T @ (self.C @ w - self.c) + self.ridge * outer


class MinibatchLeastSquares(LeastSquares):
    """``LeastSquares`` whose inner steps each see a random subset of the equations (the generator's
    draws shape the trajectory, so a resume that lost the generator's state would diverge)."""

    def __init__(self, batch_size=3, **kwargs):
        super().__init__(**kwargs)
        self.batch_size = batch_size

    def inner_batch(self, generator):
        return torch.randperm(self.n, generator=generator)[: self.batch_size]

    def inner_loss(self, params, outer_params, batch=None):
        rows = slice(None) if batch is None else batch
        residual = self.A[rows] @ params[0] - self.B[rows] @ outer_params[0]
        return residual.pow(2).sum() / (2 * len(residual))
