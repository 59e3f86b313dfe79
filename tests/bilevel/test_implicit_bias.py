"""Implicit bias of cold and warm start (Vicol et al., 2022, §3-4 and the dataset-distillation table)."""

import functools

import pytest
import torch

from metaopt.bilevel import ImplicitCG, InnerOptimizer, Unroll, run_inner
from metaopt.outer import BilevelLoop
from metaopt.tasks import MLP, DatasetDistillation, SupervisedTask, data
from tests.bilevel._problems import LeastSquares


@pytest.mark.parametrize("hyper", [{"lr": 0.1}, {"lr": 0.05, "momentum": 0.9}, {"lr": 0.05, "momentum": 0.9,
                                                                                  "nesterov": True}])
def test_cold_start_lands_on_the_solution_closest_to_w0(hyper):
    # Gradient steps (with or without momentum) stay in w₀ + rowspace(A): among all inner minimisers
    # they converge to w₀ + A⁺(Bλ − A w₀), the one closest to w₀.
    problem = LeastSquares()
    optimizer = InnerOptimizer("sgd", **hyper)
    outer = problem.init_outer()
    final = run_inner(problem, optimizer, optimizer.init(problem.init_inner()), outer, 3000).state.params[0]
    closest = problem.solution(outer[0])
    assert torch.allclose(final, closest, rtol=0, atol=1e-9)
    # ...while other minimisers exist: shifting along the null space of A keeps the inner loss at 0.
    null_direction = torch.linalg.svd(problem.A, full_matrices=True).Vh[-1]
    other = closest + null_direction
    assert float(problem.inner_loss((other,), outer)) < 1e-20
    assert (other - problem.w0).norm() > (closest - problem.w0).norm()


def test_adam_does_not_land_on_the_closest_solution():
    # Adam's per-coordinate scaling leaves w₀ + rowspace(A): it converges to another minimiser.
    problem = LeastSquares()
    optimizer = InnerOptimizer("adam", lr=0.01)
    outer = problem.init_outer()
    final = run_inner(problem, optimizer, optimizer.init(problem.init_inner()), outer, 3000).state.params[0]
    assert float(problem.inner_loss((final,), outer)) < 1e-6
    assert (final - problem.solution(outer[0])).norm() > 0.05


@pytest.fixture(scope="module")
def digits_task():
    return SupervisedTask(data.load_digits(), functools.partial(MLP, hidden_sizes=()), batch_size=64)


def distill(task, mode, hypergradient, outer_steps, inner_steps, outer_lr):
    torch.manual_seed(0)
    problem = DatasetDistillation(task, examples_per_class=1)
    loop = BilevelLoop(problem, optimizer=functools.partial(torch.optim.SGD, lr=0.5), mode=mode,
                       hypergradient=hypergradient, steps=outer_steps, inner_steps=inner_steps,
                       outer_optimizer=functools.partial(torch.optim.Adam, lr=outer_lr), retrain_steps=50)
    for _ in range(outer_steps):
        loop.step()
    return loop.summary()


def test_warm_start_weights_fit_but_the_distilled_data_does_not(digits_task):
    # Warm start, 5 inner steps per outer step: the inner weights reach ~90% test accuracy, but a
    # model re-trained from w₀ on the final 10 synthetic images reaches only ~50%: the solution
    # lives in the weights, not in the distilled data.
    warm = distill(digits_task, "warm_start", Unroll(), outer_steps=300, inner_steps=5, outer_lr=0.05)
    assert warm["test_accuracy"] > 0.85 and warm["outer_loss"] < 0.5
    assert warm["retrain_test_accuracy"] < 0.65 and warm["retrain_outer_loss"] > 1.2
    # Cold start (50 inner steps from w₀ every outer step): the distilled data itself teaches a fresh
    # model, the re-trained model is the same as the run's own.
    cold = distill(digits_task, "cold_start", Unroll(), outer_steps=100, inner_steps=50, outer_lr=0.1)
    assert cold["retrain_test_accuracy"] > 0.85
    assert cold["retrain_outer_loss"] == pytest.approx(cold["outer_loss"], rel=1e-4)
    assert cold["retrain_test_accuracy"] > warm["retrain_test_accuracy"] + 0.2


def test_cold_start_ift_hypergradient_improves_the_distilled_data(digits_task):
    before = distill(digits_task, "cold_start", ImplicitCG(10, least_squares=True), 1, 50, 0.0)
    after = distill(digits_task, "cold_start", ImplicitCG(10, least_squares=True), 30, 50, 0.1)
    assert after["retrain_outer_loss"] < before["retrain_outer_loss"] - 0.2
