"""Bad hyperparameters raise ValueErrors that name them; numerical trouble warns with its numbers."""

import functools
import re
import warnings

import pytest
import torch

from metaopt.bilevel import ConvergenceWarning, ImplicitCG, ImplicitNeumann, InnerOptimizer, TruncatedUnroll
from metaopt.outer import BilevelLoop
from tests.bilevel._problems import LeastSquares


def test_negative_damping_is_rejected():
    with pytest.raises(ValueError, match=r"invalid ift_cg\.damping: -0\.1 \(allowed: a finite number >= 0"):
        ImplicitCG(iters=10, damping=-0.1)


@pytest.mark.parametrize("kwargs,pattern", [
    ({"iters": 0}, r"invalid ift_cg\.iters: 0"),
])
def test_cg_iterations(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ImplicitCG(**kwargs)


def test_neumann_step_size_must_be_positive():
    with pytest.raises(ValueError, match=r"invalid ift_neumann\.alpha: 0"):
        ImplicitNeumann(terms=5, alpha=0.0)


def test_neumann_step_above_the_known_spectral_bound_warns_at_construction():
    with pytest.warns(ConvergenceWarning, match=r"alpha=0\.5 >= 2/lambda_max = 0\.4 .*lambda_max <= 5"):
        ImplicitNeumann(terms=5, alpha=0.5, spectral_bound=5.0)


def test_neumann_step_above_the_problem_hessian_bound_warns_and_reports_the_growth():
    problem = LeastSquares()
    optimizer = InnerOptimizer("sgd", lr=1.0 / problem.hessian_bound)
    alpha = 3.0 / problem.hessian_bound  # |1 − αλ_max| = 2: the terms double
    method = ImplicitNeumann(terms=30, alpha=alpha)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        method(problem, optimizer, problem.init_outer(), optimizer.init(problem.init_inner()), 200)
    messages = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    bound_message = next(m for m in messages if "spectral bound" in m)
    assert f"{2 / problem.hessian_bound:.4g}" in bound_message
    growth_message = next(m for m in messages if "diverges" in m)
    growth = float(re.search(r"grow by ([0-9.e+]+)x", growth_message).group(1))
    assert growth == pytest.approx(2.0, rel=1e-3)
    estimate = float(re.search(r"eigenvalue ~ ([0-9.e+]+)", growth_message).group(1))
    assert estimate == pytest.approx(problem.hessian_bound, rel=1e-3)


def test_neumann_without_a_known_bound_still_warns_when_diverging():
    problem = LeastSquares()
    problem.hessian_bound = None
    optimizer = InnerOptimizer("sgd", lr=1.0 / 8.0)
    with pytest.warns(ConvergenceWarning, match="the Neumann series diverges with alpha=1"):
        ImplicitNeumann(terms=20, alpha=1.0)(problem, optimizer, problem.init_outer(),
                                             optimizer.init(problem.init_inner()), 50)


def test_cold_start_that_did_not_converge_warns_with_the_residual():
    problem = LeastSquares()
    loop = BilevelLoop(problem, optimizer=functools.partial(torch.optim.SGD, lr=0.01), mode="cold_start",
                       hypergradient=ImplicitCG(20, least_squares=True), steps=3, inner_steps=5,
                       tolerance=1e-6)
    pattern = r"did not converge in inner_steps=5 \(residual \|grad_w f\| = [0-9.]+ > tolerance=1e-06\)"
    with pytest.warns(ConvergenceWarning, match=pattern):
        metrics = loop.step()
    assert metrics["inner_residual"] > 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loop.step()  # warned once; counted afterwards
    assert loop.unconverged_steps == 2


def test_converged_cold_start_stops_at_the_tolerance_and_does_not_warn():
    problem = LeastSquares()
    loop = BilevelLoop(problem, optimizer=functools.partial(torch.optim.SGD, lr=1.0 / problem.hessian_bound),
                       mode="cold_start", hypergradient=ImplicitCG(20, least_squares=True), steps=3,
                       inner_steps=5000, tolerance=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = loop.step()
    assert metrics["inner_residual"] <= 1e-8
    assert metrics["inner_steps"] < 5000


@pytest.mark.parametrize("kwargs,pattern", [
    ({"mode": "hot_start"},
     r"invalid outer\.mode: 'hot_start' \(allowed: one of \('cold_start', 'warm_start'\)\)"),
    ({"inner_steps": 0}, r"invalid outer\.inner_steps: 0"),
    ({"tolerance": -1.0}, r"invalid outer\.tolerance: -1\.0"),
])
def test_loop_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        BilevelLoop(LeastSquares(), optimizer=functools.partial(torch.optim.SGD, lr=0.1), **kwargs)


def test_plain_supervised_task_is_rejected_with_the_bilevel_tasks_named():
    from metaopt.tasks import MLP, SupervisedTask, data

    task = SupervisedTask(data.load_digits(), MLP)
    with pytest.raises(ValueError, match="digits_distill"):
        BilevelLoop(task, optimizer=functools.partial(torch.optim.SGD, lr=0.1))


def test_inner_optimizer_hyperparameters_are_checked():
    with pytest.raises(ValueError, match=r"invalid inner optimizer: 'lbfgs'"):
        InnerOptimizer("lbfgs", lr=0.1)
    with pytest.raises(ValueError, match=r"invalid inner optimizer hyperparameters: \['rho'\] \(allowed: the "
                       r"arguments of metaopt.optim.functional.sgd: \['dampening', 'lr', "):
        InnerOptimizer("sgd", lr=0.1, rho=0.5)
    with pytest.raises(ValueError, match=r"invalid optimizer.momentum: 1.5 \(allowed: a number in \[0, 1\)\)"):
        InnerOptimizer("sgd", lr=0.1, momentum=1.5)


def test_truncation_length():
    with pytest.raises(ValueError, match=r"invalid truncated_unroll\.truncation_length: 0"):
        TruncatedUnroll(0)


def test_optimizer_config_maps_to_the_functional_entry():
    adam = InnerOptimizer.from_config(functools.partial(torch.optim.Adam, lr=0.01, betas=[0.8, 0.99],
                                                        eps=1e-8, weight_decay=0.0, foreach=None))
    assert adam.name == "adam"
    assert adam.hyperparameters == {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.0}
    momentum = InnerOptimizer.from_config(functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9,
                                                            nesterov=False))
    assert momentum.name == "sgd" and momentum.hyperparameters["momentum"] == 0.9


def test_plain_cg_on_a_singular_hessian_with_an_outside_right_hand_side_warns():
    # ∂_wF has a component in the null space of AᵀA: plain CG diverges, and says what to do.
    problem = LeastSquares()
    optimizer = InnerOptimizer("sgd", lr=1.0 / problem.hessian_bound)
    start = optimizer.init(problem.init_inner())
    pattern = (r"ift_cg: conjugate gradient diverged: residual \|b - A x\| = [0-9.e+]+ \|b\| "
               r".*use least_squares=True")
    with pytest.warns(ConvergenceWarning, match=pattern):
        ImplicitCG(iters=20)(problem, optimizer, problem.init_outer(), start, 600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ImplicitCG(iters=20, least_squares=True)(problem, optimizer, problem.init_outer(), start, 600)


@pytest.mark.parametrize("make,pattern", [
    (lambda: ImplicitCG(iters=10, damping=float("inf")), r"invalid ift_cg\.damping: inf \(allowed: a finite number"),
    (lambda: ImplicitCG(iters=True), r"invalid ift_cg\.iters: True"),
    (lambda: ImplicitNeumann(terms=5, alpha=float("nan")), r"invalid ift_neumann\.alpha: nan"),
])
def test_non_finite_solver_settings_are_rejected(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()
