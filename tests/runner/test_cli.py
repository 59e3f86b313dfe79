"""The command line as a user meets it: a fast --help, one-line config errors, sweeps that survive a bad job."""

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli
from tests.runner.wandb_file import read_run

HEAVY = ("torch", "wandb", "matplotlib", "sklearn", "metaopt.tasks", "metaopt.outer")


def test_help_loads_neither_torch_nor_wandb_nor_the_tasks():
    code = ("import sys\nsys.argv = ['metaopt', '--help']\nfrom metaopt.run import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^optimizer: .*\badam\b", result.stdout, re.M)  # Hydra's help lists the config groups
    assert result.stdout.strip().splitlines()[-1] == "LOADED []"


@pytest.mark.parametrize("override,message", [
    ("optimizer.betas=0.9", "error: invalid optimizer.betas: 0.9 (allowed: two numbers in [0, 1): beta1, beta2)"),
    ("task.model.hidden_sizes=64", "error: task.model.hidden_sizes=64: TypeError: "),
])
def test_a_config_error_is_one_line_without_a_traceback(tmp_path, override, message):
    result = run_cli(override, "logger=none", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 2
    if "hidden_sizes" in override:  # what is allowed: the signature of what could not be built
        assert "allowed: MLP(in_features: int, out_features: int, hidden_sizes: Sequence[int]" in result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_hydra_full_error_shows_the_traceback(tmp_path):
    result = run_cli("optimizer.betas=0.9", "logger=none", f"hydra.run.dir={tmp_path}",
                     env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr and "invalid optimizer.betas" in result.stderr


def test_a_sweep_rejects_a_bad_job_before_the_first_runs_the_others_and_reports_it(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "optimizer.lr=0.01,-1", "outer.steps=20", "logger=wandb", "progress=false",
                     f"hydra.sweep.dir={sweep}")
    assert result.returncode == 1
    # named by the callback that runs before the first job starts (its first lines of stderr)
    first_lines = result.stderr.splitlines()[:2]
    assert first_lines[0].startswith("1 of 2 jobs have an invalid config"), result.stderr
    assert first_lines[1].startswith("  job 1 (optimizer.lr=-1") and "invalid optimizer.lr: -1" in first_lines[1]
    report = (sweep / "report.md").read_text()
    good, bad = report.splitlines()[2:]
    assert good.startswith("| optimizer.lr=0.01") and "FAILED" not in good
    assert bad.startswith("| optimizer.lr=-1") and "FAILED" in bad and "invalid optimizer.lr: -1" in bad
    assert (sweep / "comparison.png").exists()
    assert json.loads(next(sweep.glob("0-*/summary.json")).read_text())["steps"] == 20
    # the sweep's runs share a wandb group named by the sweep's date and time folders
    (run_folder,) = sweep.glob("0-*/wandb/offline-run-*")
    assert read_run(run_folder)["run"].run_group == f"{tmp_path.name}/sweep"


def test_the_optuna_preset_runs_a_two_trial_study(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "study"
    result = run_cli("-m", "hydra/sweeper=optuna_tpe", "hydra.sweeper.n_trials=2", "optimizer=sgd",
                     "optimizer.lr=tag(log,interval(0.01,0.5))", "task=linreg", "outer.steps=20", "logger=none",
                     "progress=false", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    assert len(list(sweep.glob("*/summary.json"))) == 2
    best = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in best and "optimizer.lr" in best
    assert (sweep / "report.md").exists()
