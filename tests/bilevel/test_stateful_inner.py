"""Implicit hypergradients with an inner optimizer that has no functional core (APO, any torch optimizer)."""

import functools

import pytest
import torch

from metaopt.bilevel import ImplicitCG, InnerOptimizer, StatefulInnerOptimizer, TruncatedUnroll, Unroll, run_inner
from metaopt.optim import APO
from metaopt.outer import BilevelLoop
from metaopt.outer.pairing import PairingError, check_pairing
from metaopt.tasks import MLP, PerParameterL2, SupervisedTask
from metaopt.tasks.data import load_digits
from tests.bilevel._problems import LeastSquares, MinibatchLeastSquares

CG, CG5 = ImplicitCG(least_squares=True), ImplicitCG(iters=5, least_squares=True)


def _digits_l2() -> PerParameterL2:
    torch.manual_seed(0)
    task = SupervisedTask(load_digits(), functools.partial(MLP, hidden_sizes=[16], activation="tanh"),
                          kind="classification", batch_size=32)
    return PerParameterL2(task, inner_batch_size=64)


def _apo(**kwargs):
    options = dict(mode="lr", lambda_fsd=0.1, meta_interval=2, meta_lr=0.1, divergence="kl")
    return functools.partial(APO, base=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
                             **{**options, **kwargs})


def test_a_torch_optimizer_run_in_place_equals_its_functional_core():
    """The stateful path takes the same steps as the functional one: same run, same IFT hypergradient."""
    problem = MinibatchLeastSquares()
    factory = functools.partial(torch.optim.SGD, lr=0.5 / problem.hessian_bound, momentum=0.9, nesterov=True)
    outer = problem.init_outer()
    results = []
    for optimizer in (InnerOptimizer.from_config(factory), StatefulInnerOptimizer(factory)):
        start = optimizer.init(problem.init_inner())
        results.append(ImplicitCG(iters=30, least_squares=True)(problem, optimizer, outer, start, 200,
                                                                torch.Generator().manual_seed(3)))
    functional, stateful = results
    torch.testing.assert_close(stateful.state.params[0].detach(), functional.state.params[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stateful.grads[0], functional.grads[0], rtol=1e-10, atol=1e-12)
    assert stateful.inner_steps == functional.inner_steps == 200


def test_the_loop_trains_the_inner_problem_with_apo_and_its_function_space_term():
    problem = _digits_l2()
    calls = []
    outputs = problem.inner_outputs
    problem.inner_outputs = lambda params, inputs: calls.append(len(inputs)) or outputs(params, inputs)
    loop = BilevelLoop(problem, optimizer=_apo(), mode="warm_start", hypergradient=CG5, steps=2,
                       inner_steps=10, generator=torch.Generator().manual_seed(0))
    assert isinstance(loop.inner_optimizer, StatefulInnerOptimizer)
    apo = loop.state.opt_state.optimizer
    start_loss = problem.evaluate(problem.init_inner(), problem.init_outer())["train_loss"]
    for _ in range(2):
        metrics = loop.step()
    assert apo._num_meta_steps == 10  # every second of the 20 inner steps
    assert apo.lrs[0] != pytest.approx(0.05)  # APO moved the learning rate
    assert calls and all(n == 64 for n in calls)  # the FSD term read the model's outputs on fresh inputs
    assert loop.evaluate()["train_loss"] < start_loss
    assert metrics["hypergradient_norm"] > 0 and torch.isfinite(loop.outer_params[0]).all()


def test_resume_with_apo_inside_is_exact(tmp_path):
    def make():
        return BilevelLoop(_digits_l2(), optimizer=_apo(), mode="warm_start", hypergradient=CG5,
                           steps=4, inner_steps=5, generator=torch.Generator().manual_seed(0))

    reference = make()
    for _ in range(4):
        reference.step()
    first = make()
    for _ in range(2):
        first.step()
    torch.save(first.state_dict(), tmp_path / "loop.pt")
    resumed = make()
    resumed.load_state_dict(torch.load(tmp_path / "loop.pt", weights_only=True))
    for _ in range(2):
        resumed.step()
    for mine, theirs in zip(resumed.outer_params + resumed.state.params,
                            reference.outer_params + reference.state.params):
        assert torch.equal(mine, theirs)
    assert resumed.state.opt_state.optimizer.lrs == reference.state.opt_state.optimizer.lrs


@pytest.mark.parametrize("hypergradient", [Unroll(), TruncatedUnroll(3)], ids=repr)
def test_unrolled_hypergradients_refuse_an_optimizer_without_a_functional_core(hypergradient):
    with pytest.raises(ValueError, match=r"invalid optimizer: 'APO'.*functional core.*implicit hypergradient"):
        BilevelLoop(_digits_l2(), optimizer=_apo(), hypergradient=hypergradient, steps=1, inner_steps=2)
    with pytest.raises(ValueError, match=r"invalid differentiable: True"):
        run_inner(LeastSquares(), StatefulInnerOptimizer(torch.optim.SGD), StatefulInnerOptimizer(
            functools.partial(torch.optim.SGD, lr=0.1)).init(LeastSquares().init_inner()), (torch.zeros(4),), 1,
            differentiable=True)


def test_the_pairing_refusal_follows_the_hypergradient():
    unroll = {"hypergradient": {"_target_": "metaopt.bilevel.Unroll"}}
    with pytest.raises(PairingError, match=r"APO has no functional core.*use an implicit one.*ift_cg"):
        check_pairing(BilevelLoop, PerParameterL2, APO, unroll)
    check_pairing(BilevelLoop, PerParameterL2, APO, {"hypergradient": {"_target_": "metaopt.bilevel.ImplicitCG"}})
    check_pairing(BilevelLoop, PerParameterL2, torch.optim.Adam, unroll)


def test_apo_function_space_term_needs_model_outputs():
    with pytest.raises(ValueError, match=r"invalid optimizer\.lambda_fsd: 0\.1 .*0 with LeastSquares"):
        BilevelLoop(LeastSquares(), optimizer=_apo(divergence="mse"), hypergradient=CG, steps=1,
                    inner_steps=2)
    without = functools.partial(APO, base=functools.partial(torch.optim.SGD, lr=0.05), divergence="mse")
    with pytest.raises(ValueError, match=r"invalid optimizer\.lambda_fsd: 0\.1 .*0 with LeastSquares"):
        BilevelLoop(LeastSquares(), optimizer=without, hypergradient=CG, steps=1, inner_steps=2)  # APO's default
    loop = BilevelLoop(LeastSquares(), optimizer=_apo(lambda_fsd=0.0, divergence="mse"), hypergradient=CG,
                       steps=1, inner_steps=4)
    loop.step()
    assert loop.state.opt_state.optimizer._num_meta_steps == 2
