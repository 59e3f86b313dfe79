"""BatchedMLP (TrainingRun's gradient path for plain MLPs under the ES estimators) computes what vmap of
torch.func.grad computes, for every layer kind it takes, shared or per-particle data, and refuses other
models; TrainingRun gives the same estimates and evaluations with it as without."""

import functools

import pytest
import torch
from torch import nn

from metaopt.tasks import MLP, SupervisedTask, TrainingRun
from metaopt.tasks.data import Split, SplitData, load_digits
from metaopt.tasks.models import ConvNet
from metaopt.tasks.unrolled.batched_mlp import BatchedMLP
from metaopt.unrolled import PES, ESSingle

pytestmark = pytest.mark.usefixtures("one_thread")


def _regression_data(n=96, features=6, outputs=2):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=generator)
    y = x @ torch.randn(features, outputs, generator=generator) + 0.1 * torch.randn(n, outputs, generator=generator)
    third = n // 3
    return SplitData(*(Split(x[i * third:(i + 1) * third], y[i * third:(i + 1) * third]) for i in range(3)))


def _run(model, kind="classification", batched=True, dtype=torch.float32, **kwargs):
    data = load_digits() if kind == "classification" else _regression_data()
    if dtype != torch.float32:
        data = SplitData(*(Split(s.inputs.to(dtype), s.targets.to(dtype) if kind == "regression" else s.targets)
                           for s in data))

    def factory(in_features, out_features):
        return model(in_features, out_features).to(dtype)

    task = SupervisedTask(data, factory, batch_size=16, kind=kind)
    return TrainingRun(task, "sgd", tuned={"lr": 0.05, "momentum": 0.5}, schedule="linear", horizon=6,
                       batched_mlp=batched, **kwargs)


MODELS = {
    "tanh": functools.partial(MLP, hidden_sizes=(12,), activation="tanh"),
    "relu-2": functools.partial(MLP, hidden_sizes=(12, 7), activation="relu"),
    "sigmoid-nobias": functools.partial(MLP, hidden_sizes=(9,), activation="sigmoid", bias=False),
    "gelu": functools.partial(MLP, hidden_sizes=(8,), activation="gelu"),
    "linear": functools.partial(MLP, hidden_sizes=()),
}


@pytest.mark.parametrize("kind", ["classification", "regression"])
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("copies", [1, 2, 3])
def test_gradients_and_losses_equal_vmap_of_grad(name, kind, copies):
    problem = _run(MODELS[name], kind, dtype=torch.float64)
    assert problem._batched is not None
    streams, batch = 4, 16
    generator = torch.Generator().manual_seed(1)
    params = tuple(p + 0.3 * torch.randn(streams * copies, *p.shape, generator=generator, dtype=p.dtype)
                   for p in problem.initial_params)
    inputs, targets = problem.task.data.train
    index = torch.randint(len(inputs), (streams, batch), generator=generator)
    particle_stream = torch.arange(streams).repeat_interleave(copies)  # stream-major
    grads, losses = problem._batched.loss_and_grad(params, inputs[index], targets[index])
    expected_grads, expected_losses = problem._gradients(params, inputs[index][particle_stream],
                                                         targets[index][particle_stream])
    torch.testing.assert_close(losses, expected_losses)
    for got, expected in zip(grads, expected_grads):
        torch.testing.assert_close(got, expected)
    torch.testing.assert_close(problem._batched.losses(params, inputs[index], targets[index]), expected_losses)
    # reused buffers: the same values on a second call
    again, _ = problem._batched.loss_and_grad(params, inputs[index], targets[index], reuse=True)
    again, _ = problem._batched.loss_and_grad(params, inputs[index], targets[index], reuse=True)
    for got, expected in zip(again, expected_grads):
        torch.testing.assert_close(got, expected)


class _Residual(nn.Sequential):
    def forward(self, x):
        return super().forward(x) + 1.0


class _LossTask(SupervisedTask):
    def loss(self, outputs, targets):
        return super().loss(outputs, targets) + outputs.pow(2).mean()


@pytest.mark.parametrize("model", [
    lambda i, o: ConvNet(i, o),
    lambda i, o: nn.Sequential(nn.Flatten(), nn.Linear(i, 8), nn.Dropout(0.1), nn.Linear(8, o)),
    lambda i, o: nn.Sequential(nn.Linear(i, 8), nn.Tanh(), nn.Tanh(), nn.Linear(8, o)),
    lambda i, o: _Residual(nn.Linear(i, o)),
    lambda i, o: nn.Sequential(nn.Linear(i, 8), nn.LeakyReLU(), nn.Linear(8, o)),
])
def test_other_models_and_losses_keep_vmap(model):
    assert _run(model)._batched is None


def test_an_overridden_task_loss_keeps_vmap():
    task = _LossTask(load_digits(), MODELS["tanh"], batch_size=16)
    assert TrainingRun(task, "sgd", horizon=6)._batched is None


@pytest.mark.parametrize("estimator", [PES, ESSingle])
@pytest.mark.parametrize("meta_split", ["train", "val"])
def test_estimates_and_evaluations_match_the_vmap_path(estimator, meta_split):
    results = []
    for batched in (True, False):
        problem = _run(MODELS["relu-2"], batched=batched, meta_split=meta_split)
        est = estimator(problem, 8, sigma=0.1, truncation_length=3, seed=0)
        estimates = torch.stack([est.estimate(problem.initial_theta())[0] for _ in range(5)])
        thetas = problem.initial_theta() + torch.tensor([[0.0, 0.0, 0.0], [-1.0, 0.5, 1.0]])
        results.append((estimates, est.state, problem.evaluate_many(thetas)))
    (estimates, state, evaluations), (expected, expected_state, expected_evaluations) = results
    torch.testing.assert_close(estimates, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state, expected_state, rtol=1e-4, atol=1e-5)  # the particle order kept
    for got, want in zip(evaluations, expected_evaluations):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_uneven_streams_give_each_particle_its_minibatch():
    """Streams read by different numbers of particles (no shared first layer): the vmap path's result."""
    outcomes = []
    for batched in (True, False):
        problem = _run(MODELS["tanh"], batched=batched)
        state = problem.init_state(5)
        theta = problem.initial_theta().expand(5, -1) + 0.1 * torch.arange(5.0)[:, None]
        with torch.no_grad():
            outcomes.append(problem.unroll(state, theta, 4, torch.Generator().manual_seed(0),
                                           torch.tensor([2, 0, 2, 1, 2]), 3))
    torch.testing.assert_close(outcomes[0], outcomes[1], rtol=1e-5, atol=1e-6)


def test_differentiating_through_the_steps_uses_vmap():
    """TBPTT differentiates through the steps: the batched path (no autograd graph) is not used."""
    problem = _run(MODELS["tanh"])
    theta = problem.initial_theta().expand(2, -1).clone().requires_grad_()
    _, losses, _ = problem.unroll(problem.init_state(2), theta, 3, torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad(losses.sum(), theta)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_from_model_reads_the_layers():
    batched = BatchedMLP.from_model(MLP(64, 10, (32, 16), activation="tanh"), "classification")
    assert [(layer.out_features, layer.activation) for layer in batched.layers] == [(32, "tanh"), (16, "tanh"),
                                                                                    (10, None)]
