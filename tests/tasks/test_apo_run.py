"""APOTrainingRun: whole training runs with APO as an unrolled problem, so that ES tunes APO itself."""

import copy
import functools

import pytest
import torch

from metaopt.optim import APO
from metaopt.optim.apo import training_step
from metaopt.outer import UnrolledLoop
from metaopt.tasks import MLP, SupervisedTask
from metaopt.tasks.data import load_digits
from metaopt.tasks.unrolled.apo_run import APOTrainingRun
from metaopt.tasks.unrolled.training_run import stream_batches
from metaopt.unrolled import PES, TBPTT


def _task() -> SupervisedTask:
    return SupervisedTask(load_digits(), functools.partial(MLP, hidden_sizes=[16], activation="tanh"),
                          kind="classification", batch_size=16)


def _apo(**kwargs):
    options = dict(mode="lr", lambda_fsd=0.1, meta_interval=3, meta_lr=0.1, divergence="kl")
    return functools.partial(APO, base=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
                             **{**options, **kwargs})


def test_a_particle_is_an_ordinary_apo_training_run_with_its_own_hyperparameters():
    """Two particles, two truncations (the second restored from the state's bytes), against two models trained
    by hand with APO at each particle's (meta_lr, lambda_fsd) on the same minibatches."""
    run = APOTrainingRun(_task(), _apo(), horizon=20, meta_split="train")
    assert run.theta_names == ["log_meta_lr", "log_lambda_fsd"]
    theta = torch.stack([run.theta_for(meta_lr=0.3, lambda_fsd=0.5), run.theta_for(meta_lr=0.01, lambda_fsd=1e-3)])
    generator = torch.Generator().manual_seed(0)
    streams = torch.tensor([0, 1])
    state = run.init_state(2)
    state, first, _ = run.unroll(state, theta, 4, generator, streams, 2)
    state, second, _ = run.unroll(state, theta, 4, generator, streams, 2)
    losses = torch.cat([first, second])

    replay = torch.Generator().manual_seed(0)
    models = [copy.deepcopy(run.model) for _ in range(2)]
    apos = [_apo(meta_lr=0.3, lambda_fsd=0.5)(models[0].parameters()),
            _apo(meta_lr=0.01, lambda_fsd=1e-3)(models[1].parameters())]
    expected = []
    for _ in range(8):
        inputs, targets = stream_batches(run.task, "train", 16, replay, streams, 2)
        fresh, _ = stream_batches(run.task, "train", 16, replay, streams, 2)
        expected.append([float(training_step(m, o, run.task.loss, (inputs[i], targets[i]), lambda row=fresh[i]: row))
                         for i, (m, o) in enumerate(zip(models, apos))])
    torch.testing.assert_close(losses, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert apos[0].lrs != apos[1].lrs  # their hyperparameters made them learn different step sizes
    assert state["step"].tolist() == [8, 8]


def test_state_survives_a_weights_only_checkpoint_and_resets_at_the_horizon(tmp_path):
    run = APOTrainingRun(_task(), _apo(), horizon=6)
    theta = run.initial_theta().expand(2, -1)
    state, _, _ = run.unroll(run.init_state(2), theta, 4, torch.Generator().manual_seed(1))
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    after, losses, resets = run.unroll(loaded, theta, 4, torch.Generator().manual_seed(2))
    again, losses_again, _ = run.unroll(state, theta, 4, torch.Generator().manual_seed(2))
    assert torch.equal(losses, losses_again) and torch.isfinite(losses).all()
    assert resets.tolist() == [[False, False], [True, True], [False, False], [False, False]]
    assert after["step"].tolist() == [2, 2]
    partly = run.reset(after, torch.tensor([True, False]))
    fresh = run.init_state(1)
    assert partly["step"].tolist() == [0, 2]
    assert torch.equal(partly["blob"][0, : int(partly["length"][0])], fresh["blob"][0, : int(fresh["length"][0])])
    assert torch.equal(partly["blob"][1], after["blob"][1])


def test_es_tunes_apo_over_whole_training_runs():
    """PES moves (meta_lr, lambda_fsd); the comparison evaluates the start and the tuned θ end to end."""
    run = APOTrainingRun(_task(), _apo(), horizon=12)
    loop = UnrolledLoop(run, estimator=functools.partial(PES, num_particles=4, truncation_length=4, sigma=0.3),
                        outer_optimizer=functools.partial(torch.optim.Adam, lr=0.3), steps=3)
    for _ in range(3):
        metrics = loop.step()
    assert not torch.equal(loop.theta.detach(), loop.theta_start)
    assert {"meta_lr", "lambda_fsd", "unroll_loss"} <= set(metrics)
    summary = loop.summary()
    assert summary["theta.meta_lr"] == pytest.approx(float(loop.theta.detach()[0].exp()))
    assert {"meta_objective", "val_accuracy", "start.meta_objective"} <= set(summary)


def test_bad_input_is_refused_before_any_work():
    with pytest.raises(ValueError, match=r"invalid outer\.estimator: 'TBPTT' .*not differentiable"):
        UnrolledLoop(_task(), estimator=functools.partial(TBPTT, num_particles=1, truncation_length=2),
                     outer_optimizer=torch.optim.Adam, optimizer=_apo(), problem={"horizon": 4})
    with pytest.raises(ValueError, match=r"invalid outer\.problem\.tuned: \['momentum'\]"):
        APOTrainingRun(_task(), _apo(), tuned=["momentum"])
    with pytest.raises(ValueError, match=r"invalid outer\.problem\.compile: True"):
        APOTrainingRun(_task(), _apo(), compile=True)
    with pytest.raises(ValueError, match=r"invalid optimizer: 'SGD' \(allowed: an APO factory"):
        APOTrainingRun(_task(), functools.partial(torch.optim.SGD, lr=0.1))
