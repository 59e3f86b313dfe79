"""Per-layer schedules, per-layer momentum and weight decay of a TrainingRun against torch.optim.SGD with one
param group per layer; the inner steps every estimator and the outer loop count as spent."""

import pytest
import torch

from metaopt.tasks import TrainingRun
from metaopt.unrolled import PES, TBPTT, ESSingle, FullES, TruncatedES
from tests.unrolled.conftest import assert_particle_equals, one_particle, torch_replay

START = {"lr": 0.05, "momentum": 0.5, "weight_decay": 1e-3}
# θ offsets: lr_start/lr_end of layer 1 and layer 3, momentum of each layer, weight decay of each layer.
OFFSETS = torch.tensor([0.3, -1.0, -0.5, 0.7, 1.0, -1.0, 2.0, 0.5])


def _per_layer_run(task, horizon=5):
    return TrainingRun(task, "sgd", tuned=START, schedule="linear", per_layer=["lr", "momentum", "weight_decay"],
                       horizon=horizon, meta_split="train")


def _hand_values(T, t):
    """What θ = θ0 + OFFSETS means, computed by hand: per layer lr_t, momentum and weight decay."""
    lr = [(0.05 * torch.e ** OFFSETS[2 * k].item() * (T - t) + 0.05 * torch.e ** OFFSETS[2 * k + 1].item() * t) / T
          for k in range(2)]
    momentum = [1 / (1 + (1 / 0.5 - 1) * torch.e ** -OFFSETS[4 + k].item()) for k in range(2)]
    decay = [1e-3 * torch.e ** OFFSETS[6 + k].item() for k in range(2)]
    return lr, momentum, decay


def test_per_layer_schedule_momentum_and_weight_decay_are_the_hand_computed_values(digits_task):
    problem = _per_layer_run(digits_task)
    assert problem.dim == 8
    assert problem.theta_names == ["log_lr_start.1", "log_lr_end.1", "log_lr_start.3", "log_lr_end.3",
                                   "logit_momentum.1", "logit_momentum.3", "log_weight_decay.1",
                                   "log_weight_decay.3"]
    theta = problem.initial_theta() + OFFSETS
    steps = torch.tensor([0, 2, 4])
    hyper = problem.hyperparameters(theta[None].expand(3, -1), steps)
    # Four tensors (weight, bias of each of the two layers): layer k's value for tensors 2k and 2k+1.
    for name in ("lr", "momentum", "weight_decay"):
        assert len(hyper[name]) == 4
    for row, t in enumerate(steps.tolist()):
        lr, momentum, decay = _hand_values(5, t)
        for tensor in range(4):
            layer = tensor // 2
            assert hyper["lr"][tensor][row].item() == pytest.approx(lr[layer], rel=1e-5)
            assert hyper["momentum"][tensor][row].item() == pytest.approx(momentum[layer], rel=1e-5)
            assert hyper["weight_decay"][tensor][row].item() == pytest.approx(decay[layer], rel=1e-5)


def test_per_layer_training_run_matches_torch_sgd_with_a_param_group_per_layer(digits_task):
    """One particle trains as torch.optim.SGD whose two param groups (one per layer) have their own lr_t,
    momentum and weight decay: swapping the layers, ignoring the decay or the schedule would fail."""
    T = 5
    problem = _per_layer_run(digits_task, horizon=T)
    theta = problem.initial_theta() + OFFSETS
    state = one_particle(problem, theta, T, seed=0)
    _, momentum, decay = _hand_values(T, 0)

    def per_layer_sgd(params):
        tensors = list(params)
        return torch.optim.SGD([{"params": tensors[2 * k:2 * k + 2], "momentum": momentum[k],
                                 "weight_decay": decay[k]} for k in range(2)], lr=0.1)

    def set_lrs(optimizer, t):
        lr, _, _ = _hand_values(T, t)
        for k, group in enumerate(optimizer.param_groups):
            group["lr"] = lr[k]

    assert_particle_equals(state, torch_replay(problem, per_layer_sgd, T, 0, set_lrs))


def test_tuned_weight_decay_equals_torch_sgd_on_a_step(digits_task):
    """A large tuned weight decay (0.5): the functional step equals torch.optim.SGD(weight_decay=0.5)'s."""
    problem = TrainingRun(digits_task, "sgd", tuned={"lr": 0.1, "weight_decay": 0.5}, horizon=1,
                          meta_split="train")
    state = one_particle(problem, problem.initial_theta(), 1, seed=3)
    model = torch_replay(problem, lambda params: torch.optim.SGD(params, lr=0.1, weight_decay=0.5), 1, 3)
    assert_particle_equals(state, model)
    # and the decay mattered: the step without it (torch's SGD leaves p.grad undecayed) is 0.05·w away
    weight, grad = problem.initial_params[0], next(model.parameters()).grad
    torch.testing.assert_close(state["params"][0][0], weight - 0.1 * grad - 0.1 * 0.5 * weight)
    assert (state["params"][0][0] - (weight - 0.1 * grad)).abs().max() > 1e-3


@pytest.mark.parametrize("estimator, per_estimate", [
    (lambda p: PES(p, 8, sigma=0.1, truncation_length=2), 8 * 2),
    (lambda p: ESSingle(p, 8, sigma=0.1, truncation_length=2), 8 * 2),
    (lambda p: TruncatedES(p, 8, sigma=0.1, truncation_length=2), 8 * 2 + 2),   # + the shared trajectory
    (lambda p: FullES(p, 8, sigma=0.1, truncation_length=3), 8 * 4),           # T=4 in chunks of 3 and 1
    (lambda p: TBPTT(p, 2, truncation_length=2), 2 * 2),
])
def test_every_estimator_counts_the_inner_steps_it_spends(estimator, per_estimate, linear_quadratic):
    problem = linear_quadratic.__class__(horizon=4)
    est = estimator(problem)
    assert est.steps_spent == 0
    for n in range(1, 4):
        est.estimate(problem.initial_theta())
        assert est.steps_spent == n * per_estimate
    restored = estimator(problem)
    restored.load_state_dict(est.state_dict())
    assert restored.steps_spent == 3 * per_estimate
