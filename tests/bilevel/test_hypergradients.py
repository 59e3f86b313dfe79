"""Every hypergradient method against the closed form and central finite differences (float64).

The inner problem is an underdetermined least-squares problem (6 equations, 15 unknowns: a singular
Hessian), the outer objective a least-squares fit on other data plus a ridge term on λ.
"""

import pytest
import torch

from metaopt.bilevel import (
    ImplicitCG,
    ImplicitIdentity,
    ImplicitNeumann,
    InnerOptimizer,
    TruncatedUnroll,
    Unroll,
    run_inner,
)
from metaopt.optim.functional import FUNCTIONAL
from tests.bilevel._problems import LeastSquares

STEPS = 600  # gradient descent with lr = 1/λ_max converges to ~1e-15 here


@pytest.fixture(scope="module")
def setup():
    problem = LeastSquares()
    optimizer = InnerOptimizer("sgd", lr=1.0 / problem.hessian_bound)
    outer = problem.init_outer()
    return problem, optimizer, outer


def hypergradient(method, problem, optimizer, outer, steps=STEPS):
    return method(problem, optimizer, outer, optimizer.init(problem.init_inner()), steps)


def cold_start_response(problem, optimizer, outer, steps=STEPS):
    """F(λ, w_T(λ)) with w_T trained from w₀ (no graph)."""
    final = run_inner(problem, optimizer, optimizer.init(problem.init_inner()), outer, steps).state
    return float(problem.outer_loss(final.params, outer))


def central_differences(problem, optimizer, outer, eps=1e-5):
    (lam,) = outer
    grad = torch.zeros_like(lam)
    for i in range(lam.numel()):
        step = torch.zeros_like(lam)
        step[i] = eps
        grad[i] = (cold_start_response(problem, optimizer, (lam + step,))
                   - cold_start_response(problem, optimizer, (lam - step,))) / (2 * eps)
    return grad


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def test_exact_methods_agree_with_each_other_finite_differences_and_closed_form(setup):
    problem, optimizer, outer = setup
    closed_form = problem.hypergradient(outer[0])
    fd = central_differences(problem, optimizer, outer)
    assert relative_error(fd, closed_form) < 1e-8
    exact = {
        "unroll": Unroll(),
        "ift_cg": ImplicitCG(iters=50, least_squares=True),
        "ift_neumann": ImplicitNeumann(terms=STEPS, alpha=1.0 / problem.hessian_bound),
    }
    grads = {name: hypergradient(method, problem, optimizer, outer).grads[0]
             for name, method in exact.items()}
    for name, grad in grads.items():
        assert relative_error(grad, fd) < 1e-8, name
        assert relative_error(grad, closed_form) < 1e-10, name
    assert relative_error(grads["ift_cg"], grads["unroll"]) < 1e-10


def test_unroll_differentiates_the_unconverged_response_exactly(setup):
    # After 20 steps the inner problem is far from converged: the unrolled derivative is still exact
    # for the 20-step response (finite differences), while the IFT one is not.
    problem, optimizer, outer = setup
    steps = 20
    (lam,) = outer
    direction = torch.randn(lam.shape, generator=torch.Generator().manual_seed(1), dtype=lam.dtype)
    eps = 1e-5
    fd = (cold_start_response(problem, optimizer, (lam + eps * direction,), steps)
          - cold_start_response(problem, optimizer, (lam - eps * direction,), steps)) / (2 * eps)
    unrolled = float(hypergradient(Unroll(), problem, optimizer, outer, steps).grads[0] @ direction)
    implicit_method = ImplicitCG(50, least_squares=True)
    implicit = float(hypergradient(implicit_method, problem, optimizer, outer, steps).grads[0] @ direction)
    assert unrolled == pytest.approx(fd, rel=1e-8)
    assert abs(implicit - fd) > 1e-3 * abs(fd)


def test_plain_cg_from_zero_is_the_minimum_norm_solution_on_the_range(setup):
    # When the right-hand side lies in the range of the singular Hessian, plain CG from zero returns
    # H⁺v (the minimum-norm solution), not merely some solution.
    from metaopt.bilevel import conjugate_gradient

    problem, _, _ = setup
    hessian = problem.A.T @ problem.A / problem.n
    generator = torch.Generator().manual_seed(2)
    rhs = hessian @ torch.randn(hessian.shape[0], generator=generator, dtype=torch.float64)
    (x,) = conjugate_gradient(lambda v: (hessian @ v[0],), (rhs,), iters=50)
    assert torch.allclose(x, torch.linalg.pinv(hessian) @ rhs, rtol=0, atol=1e-10)


def test_approximations_differ_by_known_amounts(setup):
    # Identity: H⁻¹ ≈ I ignores the curvature: off by ~245% here. Truncating the unroll to the last
    # K steps cuts the dependence of the earlier iterates on λ: ~32% off with K=5, ~0.8% with K=50.
    problem, optimizer, outer = setup
    exact = problem.hypergradient(outer[0])
    methods = {"identity": ImplicitIdentity(), "K=5": TruncatedUnroll(5), "K=50": TruncatedUnroll(50),
               "neumann J=5": ImplicitNeumann(5, 1.0 / problem.hessian_bound)}
    errors = {name: relative_error(hypergradient(method, problem, optimizer, outer).grads[0], exact)
              for name, method in methods.items()}
    assert 2.0 < errors["identity"] < 3.0
    assert 0.25 < errors["K=5"] < 0.4
    assert 0.003 < errors["K=50"] < 0.015
    assert errors["K=50"] < errors["K=5"]
    # Neumann with J terms equals unrolling J + 1 steps of GD with lr = α around the solution.
    assert 0.2 < errors["neumann J=5"] < 0.45


def test_neumann_with_j_terms_is_truncated_unroll_of_j_plus_one_steps_at_the_solution(setup):
    problem, optimizer, outer = setup
    neumann = hypergradient(ImplicitNeumann(7, 1.0 / problem.hessian_bound), problem, optimizer, outer)
    truncated = hypergradient(TruncatedUnroll(8), problem, optimizer, outer)
    assert relative_error(neumann.grads[0], truncated.grads[0]) < 1e-10


@pytest.mark.parametrize("name,hyper", [(name, {"lr": 0.02}) for name in sorted(FUNCTIONAL)]
                         + [("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True})])
def test_unroll_is_exact_for_every_functional_optimizer(setup, name, hyper):
    # Every registered functional optimizer (complex momentum included once registered) with its
    # default hyperparameters: the unrolled derivative of the 15-step response is exact.
    problem, _, outer = setup
    optimizer = InnerOptimizer(name, **hyper)
    steps = 15
    (lam,) = outer
    direction = torch.randn(lam.shape, generator=torch.Generator().manual_seed(3), dtype=lam.dtype)
    eps = 1e-6
    fd = (cold_start_response(problem, optimizer, (lam + eps * direction,), steps)
          - cold_start_response(problem, optimizer, (lam - eps * direction,), steps)) / (2 * eps)
    unrolled = float(hypergradient(Unroll(), problem, optimizer, outer, steps).grads[0] @ direction)
    assert unrolled == pytest.approx(fd, rel=1e-6)


def test_plain_cg_agrees_when_the_outer_gradient_lies_in_the_hessian_range():
    problem = LeastSquares(consistent=True)
    optimizer = InnerOptimizer("sgd", lr=1.0 / problem.hessian_bound)
    outer = problem.init_outer()
    exact = problem.hypergradient(outer[0])
    grad = hypergradient(ImplicitCG(iters=50), problem, optimizer, outer).grads[0]
    assert relative_error(grad, exact) < 1e-10
    assert relative_error(hypergradient(Unroll(), problem, optimizer, outer).grads[0], exact) < 1e-10


def test_truncated_unroll_with_tolerance_differentiates_its_window_at_the_solution(setup):
    problem, optimizer, outer = setup
    start = optimizer.init(problem.init_inner())
    with_tolerance = TruncatedUnroll(8)(problem, optimizer, outer, start, STEPS, tolerance=1e-12)
    assert with_tolerance.inner_steps < STEPS
    neumann = hypergradient(ImplicitNeumann(7, 1.0 / problem.hessian_bound), problem, optimizer, outer)
    assert relative_error(with_tolerance.grads[0], neumann.grads[0]) < 1e-8
