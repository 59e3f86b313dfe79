"""A run folder has one live owner, and a finished run's results are never replaced unless asked."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from metaopt.run import run
from metaopt.runner.folder import FolderInUseError, RunFolderLock
from tests.conftest import CONF, REPO

ARGS = ["task=linreg", "optimizer=sgd", "outer.steps=300", "outer.eval_every=100", "log_every=10",
        "checkpoint_every=5", "logger=none", "progress=false"]


def test_two_runs_started_together_into_one_folder_never_mix(tmp_path):
    folder = tmp_path / "shared"
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    procs = [subprocess.Popen([sys.executable, "-m", "metaopt.run", *ARGS, f"seed={seed}",
                               f"hydra.run.dir={folder}"], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for seed in (1, 2)]
    results = [(p.returncode, out, err) for p in procs for out, err in [p.communicate(timeout=300)]]
    codes = [code for code, _, _ in results]
    assert sorted(codes)[0] == 0 and sorted(codes)[1] != 0, results
    winner = 1 + codes.index(0)
    loser_err = results[codes.index(0) ^ 1][2]
    # Started together: the second finds the folder locked; started late: it finds finished results.
    assert "is in use by the run of process" in loser_err or "overwrite=true" in loser_err, loser_err
    assert json.loads((folder / "summary.json").read_text())["seed"] == winner
    steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(10, 301, 10))
    assert yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())["seed"] == winner
    assert not (folder / ".lock").exists() and not (folder / ".checkpoint.pt.tmp").exists()


def test_a_live_owner_refuses_and_a_dead_owners_lock_is_taken_over(make_config, tmp_path):
    cfg = make_config("task=linreg", "optimizer=sgd", "outer.steps=5", "log_every=5")
    with RunFolderLock(tmp_path):  # another run (its own open file) holds the folder
        with pytest.raises(FolderInUseError, match=rf"{tmp_path} is in use by the run of process {os.getpid()}"):
            run(cfg, tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(dead.stdout)  # left by a killed run: nobody holds it
    assert run(cfg, tmp_path)["steps"] == 5
    assert not (tmp_path / ".lock").exists()


def test_a_finished_run_is_not_overwritten_unless_asked(make_config, tmp_path):
    run(make_config("task=linreg", "optimizer=sgd", "outer.steps=5", "log_every=5", "seed=1"), tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in ("summary.json", "metrics.jsonl")}
    again = make_config("task=linreg", "optimizer=sgd", "outer.steps=5", "log_every=5", "seed=2")
    with pytest.raises(FileExistsError, match=rf"{tmp_path} holds the results of an earlier run \(summary.json, "
                                              r"metrics.jsonl.*overwrite=true"):
        run(again, tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    with pytest.raises(ValueError, match=r"invalid overwrite: 'yes' \(allowed: true or false\)"):
        run(make_config("overwrite=yes"), tmp_path)
    run(make_config("task=linreg", "optimizer=sgd", "outer.steps=5", "log_every=5", "seed=2", "overwrite=true"),
        tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["seed"] == 2


def test_default_folder_names_hold_the_seed_and_sub_second_time():
    config = yaml.safe_load((CONF / "config.yaml").read_text())
    for key in ("run", "sweep"):
        assert "%f" in config["hydra"][key]["dir"]  # microseconds: two runs started in one second differ
    assert "${seed}" in config["hydra"]["run"]["dir"]
