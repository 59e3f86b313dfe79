"""Memory: unrolled graphs grow with the inner steps, implicit ones do not, and no graph survives an
outer step (counted with SavedTensorMeter and with the number of live tensors)."""

import functools
import gc

import torch

from metaopt.bilevel import ImplicitCG, InnerOptimizer, SavedTensorMeter, TruncatedUnroll, Unroll
from metaopt.outer import BilevelLoop
from tests.bilevel._problems import LeastSquares


def peak_bytes(method, problem, optimizer, steps):
    with SavedTensorMeter() as meter:
        method(problem, optimizer, problem.init_outer(), optimizer.init(problem.init_inner()), steps)
        gc.collect()
        assert meter.live == 0
    return meter.peak


def test_unroll_memory_grows_with_the_steps_and_implicit_memory_does_not():
    problem = LeastSquares(num_equations=20, dim=60)
    optimizer = InnerOptimizer("sgd", lr=0.5 / problem.hessian_bound)
    unroll = [peak_bytes(Unroll(), problem, optimizer, t) for t in (10, 100, 400)]
    implicit = [peak_bytes(ImplicitCG(10, least_squares=True), problem, optimizer, t) for t in (10, 100, 400)]
    truncated = [peak_bytes(TruncatedUnroll(10), problem, optimizer, t) for t in (10, 100, 400)]
    # Each unrolled step saves (at least) the residual of 20 float64s.
    assert unroll[2] - unroll[1] >= 300 * 20 * 8 and unroll[1] - unroll[0] >= 90 * 20 * 8
    assert implicit[0] == implicit[1] == implicit[2]
    assert truncated[0] == truncated[1] == truncated[2]


def live_tensors():
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def test_no_graph_survives_an_outer_step():
    for mode, method in (("warm_start", Unroll()), ("cold_start", ImplicitCG(10, least_squares=True)),
                         ("cold_start", Unroll())):
        problem = LeastSquares()
        inner = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.5)
        loop = BilevelLoop(problem, optimizer=inner, mode=mode, hypergradient=method, steps=20,
                           inner_steps=30)
        with SavedTensorMeter() as meter:
            loop.step()
            loop.step()
            gc.collect()
            assert meter.live == 0 and meter.peak > 0
            before = live_tensors()
            for _ in range(5):
                loop.step()
            assert live_tensors() == before
            gc.collect()
            assert meter.live == 0
        for tensor in (*loop.state.params, *loop.state.opt_state.momentum_buffer):
            assert tensor.grad_fn is None and not tensor.requires_grad
        assert all(p.grad.grad_fn is None for p in loop.outer_params)
