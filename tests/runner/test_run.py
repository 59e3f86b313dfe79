"""The runner end to end: the file contract, wandb, sweeps, launchers, bad input, divergence."""

import json
import re

import pytest

from metaopt.run import DivergenceError, run
from tests.conftest import run_cli


def _summary(folder):
    return json.loads((folder / "summary.json").read_text())


def _metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_cli_run_writes_the_file_contract_and_a_wandb_run(tmp_path):
    folder = tmp_path / "run"
    result = run_cli("task=digits_mlp", "optimizer=sgd_momentum", "outer.steps=200", "outer.eval_every=50",
                     "log_every=10",
                     f"hydra.run.dir={folder}")
    assert result.returncode == 0, result.stderr
    summary = _summary(folder)
    for key in ("train_loss", "val_loss", "test_loss", "test_accuracy", "train_seconds"):
        assert isinstance(summary[key], float)
    assert summary["test_accuracy"] > 0.8 and summary["steps"] == 200
    records = _metrics(folder)
    assert [r["step"] for r in records] == list(range(10, 201, 10))
    assert [r["step"] for r in records if "val_loss" in r] == [50, 100, 150, 200]
    assert records[-1]["val_loss"] == summary["val_loss"]
    assert (folder / "curves.png").stat().st_size > 10_000
    assert "test_accuracy" in result.stdout  # the printed summary table
    offline_runs = list((folder / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))
    assert list(offline_runs[0].glob("files/media/images/curves*.png"))


def test_sweep_makes_one_folder_and_one_wandb_run_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "optimizer=sgd,adam", "seed=0,1", "outer.steps=30", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    folders = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "summary.json").exists())
    assert len(folders) == 4
    assert {(_summary(f)["seed"], "adam" in f.name) for f in folders} == {(0, True), (0, False), (1, True),
                                                                          (1, False)}
    run_ids = {next((f / "wandb").glob("offline-run-*")).name.split("-")[-1] for f in folders}
    assert len(run_ids) == 4
    report = (sweep / "report.md").read_text()
    assert report.count("\n") == 6 and "optimizer=adam seed=1" in report
    assert (sweep / "comparison.png").exists()


def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", "optimizer=sgd,adam",
                     "logger=none", "outer.steps=20", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    assert "Joblib" in result.stdout + result.stderr
    assert len(list(sweep.glob("*/summary.json"))) == 2


def test_unknown_config_name_lists_the_valid_ones(tmp_path):
    result = run_cli("optimizer=adamw_typo", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert "Could not find 'optimizer/adamw_typo'" in result.stderr
    for option in ("adam", "sgd", "sgd_momentum"):
        assert f"\t{option}\n" in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("overrides,message", [
    (["optimizer.lr=-0.1"], r"invalid optimizer.lr: -0.1 \(allowed: a finite number >= 0\)"),
    (["optimizer=sgd_momentum", "optimizer.momentum=1.5"], r"invalid optimizer.momentum: 1.5"),
    (["optimizer.betas=[0.9,1.2]"], r"invalid optimizer.betas: \[0.9, 1.2\] \(allowed: two numbers in \[0, 1\): beta1"),
    (["task.batch_size=0"], r"invalid task.batch_size: 0 \(allowed: a positive integer\)"),
    (["outer.steps=-5"], r"invalid outer.steps: -5 \(allowed: a positive integer\)"),
    (["task=mnist_mlp", "task.data.data_root=/nonexistent/mnist"],
     r"invalid MNIST data_root: '/nonexistent/mnist' \(allowed: an existing folder holding MNIST\)"),
    (["resume=/nonexistent/run"], r"invalid resume: '/nonexistent/run'"),
    (["seed=-1"], r"invalid seed: -1"),
    # nested configs keep their path in the message
    (["outer=pes", "outer.outer_optimizer.lr=-1"], r"invalid outer.outer_optimizer.lr: -1 \(allowed"),
    (["outer=pes", "outer.outer_optimizer.lr=fast"], r"invalid outer.outer_optimizer.lr: 'fast' \(allowed"),
    (["outer=pes", "optimizer=sgd", "outer.estimator.sigma=0"],
     r"invalid outer.estimator.sigma: 0 \(allowed: a finite number > 0"),
    (["outer=pes", "optimizer=sgd", "outer.estimator.num_particles=3"],
     r"invalid outer.estimator.num_particles: 3 \(allowed"),
    (["task=digits_distill", "optimizer=sgd", "outer=bilevel_cold", "outer.tolerance=-1"],
     r"invalid outer.tolerance: -1 \(allowed: null or a finite number > 0"),
    (["task=digits_distill", "optimizer=sgd", "outer=bilevel_cold", "outer.tolerance=tight"],
     r"invalid outer.tolerance: 'tight' \(allowed: null or a finite number > 0"),
    (["task=digits_distill", "optimizer=sgd", "outer=bilevel_cold", "outer.hypergradient.damping=inf"],
     r"invalid outer.hypergradient.damping: inf \(allowed: a finite number"),
    (["outer=pes", "optimizer=adam", "outer.problem.tuned=[lr,momentum]"],
     r"invalid outer.problem.tuned: \['lr', 'momentum'\] \(allowed: names among the hyperparameters Adam"),
    (["optimizer.lr=inf"], r"invalid optimizer.lr: inf \(allowed: a finite number"),
    (["optimizer.lr=1e300"], r"invalid optimizer.lr: 1e\+300 \(allowed: a number within float32 range"),
    (["checkpoint_every=true"], r"invalid checkpoint_every: True \(allowed: a non-negative integer"),
])
def test_bad_values_fail_before_training(make_config, tmp_path, overrides, message):
    cfg = make_config(*overrides)
    with pytest.raises(Exception, match=message):
        run(cfg, tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_divergence_stops_with_the_step_and_keeps_metrics(make_config, tmp_path):
    cfg = make_config("task=linreg", "optimizer=sgd", "optimizer.lr=1000", "outer.steps=500", "log_every=1")
    with pytest.raises(DivergenceError, match=r"train_batch_loss is (nan|inf) at step (\d+)") as info:
        run(cfg, tmp_path)
    step = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    records = _metrics(tmp_path)
    assert step >= 2 and [r["step"] for r in records] == list(range(1, step + 1))
    assert records[-1]["train_batch_loss"] in ("nan", "inf")
    assert not (tmp_path / "summary.json").exists()


def test_divergence_exits_nonzero_from_the_cli(tmp_path):
    result = run_cli("task=linreg", "optimizer=sgd", "optimizer.lr=1000", "logger=none",
                     f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "at step" in result.stderr and "stopping" in result.stderr
    assert (tmp_path / "metrics.jsonl").read_text()
