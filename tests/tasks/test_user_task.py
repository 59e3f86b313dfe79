"""A user's own model and data: ``from_arrays`` splits, and the runner trains the user's module (from
tests/tasks/user_project.py) through ``task=custom``, PES and a bilevel task, as the README shows."""

import math

import numpy as np
import pytest
import torch

from metaopt.run import run
from metaopt.tasks import from_arrays
from metaopt.tasks.data import load_digits
from tests.conftest import run_cli
from tests.tasks import user_project

USER = "tests.tasks.user_project"
CUSTOM = ["task=custom", f"task.model._target_={USER}.make_net", f"task.data._target_={USER}.load"]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_from_arrays_splits_like_the_bundled_loaders():
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    ours = from_arrays(bunch.data / 16.0, bunch.target, split_seed=3)
    bundled = load_digits(split_seed=3)
    for split, reference in zip(ours, bundled, strict=True):
        assert split.inputs.dtype == torch.float32 and split.targets.dtype == torch.int64
        torch.testing.assert_close(split.inputs, reference.inputs)
        assert torch.equal(split.targets, reference.targets)
    assert [len(s.inputs) for s in ours] == [1079, 359, 359]


def test_from_arrays_takes_tensors_and_regression_targets():
    inputs = torch.randn(50, 2, 3, dtype=torch.float64)
    targets = torch.randn(50, 2, dtype=torch.float64)
    data = from_arrays(inputs, targets, val_fraction=0.1, test_fraction=0.3, split_seed=1, kind="regression")
    assert [len(s.inputs) for s in data] == [30, 5, 15]
    assert data.train.inputs.shape[1:] == (2, 3) and data.train.targets.dtype == torch.float32
    everything = torch.cat([s.inputs for s in data]).double()
    assert sorted(everything[:, 0, 0].tolist()) == sorted(inputs.float()[:, 0, 0].tolist())  # a permutation
    again = from_arrays(inputs, targets, val_fraction=0.1, test_fraction=0.3, split_seed=1, kind="regression")
    assert torch.equal(again.val.inputs, data.val.inputs)


@pytest.mark.parametrize(("inputs", "targets", "kwargs", "message"), [
    (np.zeros((10, 3)), np.zeros(9), {}, "inputs has 10 examples but targets has 9"),
    (np.zeros((0, 3)), np.zeros(0), {}, "hold no examples"),
    (np.zeros(10), np.zeros(10), {}, r"invalid inputs.*reshape a single feature to \(n, 1\)"),
    (np.zeros((10, 3)), np.full(10, 0.5), {}, r"invalid targets.*one class index.*kind=regression"),
    (np.zeros((10, 3)), -np.ones(10), {}, "invalid targets"),
    (np.full((10, 3), np.nan), np.zeros(10), {}, "invalid inputs.*finite"),
    (np.zeros((10, 3)), np.zeros(10), {"val_fraction": 0.01}, "invalid val_fraction: 0.01.*not empty"),
    (np.zeros((10, 3)), np.zeros(10), {"val_fraction": 0.5, "test_fraction": 0.5}, "invalid test_fraction"),
    (np.zeros((10, 3)), np.zeros(10), {"kind": "ranking"}, "invalid kind"),
])
def test_from_arrays_rejects_bad_data_naming_the_problem(inputs, targets, kwargs, message):
    with pytest.raises(ValueError, match=message):
        from_arrays(inputs, targets, **kwargs)


def _run_with_the_users_model(make_config, tmp_path, *overrides):
    user_project.BUILT.clear()
    summary = run(make_config(*overrides), tmp_path)
    assert user_project.BUILT and all(type(m) is user_project.UserNet for m in user_project.BUILT)
    numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
    assert numbers and all(math.isfinite(v) for v in numbers.values()), summary
    return summary


def test_plain_training_of_the_users_model_and_data(make_config, tmp_path):
    summary = _run_with_the_users_model(make_config, tmp_path, *CUSTOM, "outer.steps=60", "outer.eval_every=30",
                                        "task.batch_size=32", "optimizer.lr=0.01")
    assert summary["steps"] == 60 and summary["val_accuracy"] > 0.6  # three well separated blobs


def test_pes_tunes_the_optimizer_of_the_users_model(make_config, tmp_path):
    summary = _run_with_the_users_model(
        make_config, tmp_path, *CUSTOM, "optimizer=sgd_momentum", "outer=pes", "outer.steps=2",
        "outer.problem.horizon=10", "outer.estimator.num_particles=4", "outer.estimator.truncation_length=5",
        "outer.grid=null")
    assert {"meta_objective", "theta.lr_start", "theta.momentum"} <= set(summary)


def test_bilevel_task_on_the_users_model_and_data(make_config, tmp_path):
    summary = _run_with_the_users_model(
        make_config, tmp_path, "task=digits_l2", f"task.task.model._target_={USER}.make_net",
        "~task.task.model.hidden_sizes", "~task.task.model.activation", f"task.task.data._target_={USER}.load",
        "~task.task.data.val_fraction", "~task.task.data.test_fraction", "~task.task.data.split_seed",
        "optimizer=sgd", "outer=bilevel_cold", "outer.steps=2", "outer.inner_steps=3")
    assert summary["steps"] == 2 and "mean_decay" in summary


def test_the_readme_command_line_runs(tmp_path):
    result = run_cli(*CUSTOM, "+task.model.width=8", "outer.steps=5", "outer.eval_every=5", "logger=none",
                     "progress=false", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "summary.json").is_file()
