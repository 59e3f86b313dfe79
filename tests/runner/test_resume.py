"""Checkpoints: a run killed with SIGKILL and resumed ends exactly where an uninterrupted one does."""

import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from metaopt.runner.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from tests.conftest import REPO, run_cli, subprocess_env

# Checkpoints fall between logged steps (every 100 vs every 30): the averaging window must resume too.
ARGS = ["task=digits_mlp", "optimizer=sgd_momentum", "outer.steps=3000", "outer.eval_every=500",
        "checkpoint_every=100", "log_every=30", "progress=false"]
TIMING_KEYS = {"train_seconds", "startup_seconds"}


def _results(folder):
    summary = json.loads((folder / "summary.json").read_text())
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return {k: v for k, v in summary.items() if k not in TIMING_KEYS}, lines


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    env = subprocess_env()
    proc = subprocess.Popen([sys.executable, "-m", "metaopt.run", *ARGS, "logger=wandb",
                             f"hydra.run.dir={killed}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "summary.json").exists()
    checkpoint_step = load_checkpoint(killed / "checkpoint.pt")["step"]
    assert 100 <= checkpoint_step < 3000

    result = run_cli(*ARGS, "logger=wandb", "resume=true", f"hydra.run.dir={killed}")
    assert result.returncode == 0, result.stderr
    result = run_cli(*ARGS, "logger=none", f"hydra.run.dir={reference}")
    assert result.returncode == 0, result.stderr

    resumed_summary, resumed_lines = _results(killed)
    reference_summary, reference_lines = _results(reference)
    assert resumed_summary == reference_summary
    assert resumed_lines == reference_lines
    # the resumed run continued the same wandb run
    assert len(list((killed / "wandb").glob("offline-run-*"))) >= 1


def test_resume_from_a_run_folder_path_continues_there(tmp_path):
    first = tmp_path / "first"
    args = ["checkpoint_every=100", "logger=none", "log_every=10"]
    assert run_cli("outer.steps=150", *args, f"hydra.run.dir={first}").returncode == 0
    elsewhere = tmp_path / "elsewhere"
    result = run_cli("outer.steps=250", *args, f"resume={first}", f"hydra.run.dir={elsewhere}")
    assert result.returncode == 0, result.stderr
    steps = [json.loads(x)["step"] for x in (first / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(10, 251, 10))  # resumed from step 100: 110..250 replaced what followed it
    assert json.loads((first / "summary.json").read_text())["steps"] == 250
    assert not (elsewhere / "summary.json").exists()


def test_checkpoint_round_trip_is_weights_only_and_atomic(tmp_path):
    torch.manual_seed(3)
    state = rng_state()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 7, "rng": state, "nested": {"x": torch.arange(3)}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temporary file left
    expected = torch.rand(5)
    torch.manual_seed(99)
    loaded = load_checkpoint(path)
    set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(5), expected) and loaded["step"] == 7


def _first_run(make_config, folder):
    from metaopt.run import run

    base = ["task=linreg", "optimizer=sgd", "outer.steps=10", "checkpoint_every=5", "log_every=5"]
    run(make_config(*base), folder)
    assert load_checkpoint(folder / "checkpoint.pt")["config"]["optimizer"]["lr"] is not None
    return base


@pytest.mark.parametrize("changes,listed", [
    (["optimizer=sgd_momentum"], [r"optimizer\.momentum: <absent> -> 0\.9"]),
    (["optimizer.lr=0.05"], [r"optimizer\.lr: 0\.1 -> 0\.05"]),
    (["outer.steps=8", "seed=3"], [r"outer\.steps: 10 -> 8", r"seed: 0 -> 3"]),
])
def test_resume_refuses_a_changed_config_and_lists_the_keys(make_config, tmp_path, changes, listed):
    from metaopt.run import run
    from metaopt.runner.checkpoint import CheckpointError

    base = _first_run(make_config, tmp_path)
    summary = (tmp_path / "summary.json").read_text()
    with pytest.raises(CheckpointError, match=rf"cannot resume from {tmp_path / 'checkpoint.pt'}: .*config") as info:
        run(make_config(*base, *changes, "resume=true"), tmp_path)
    for pattern in listed:
        assert re.search(pattern, str(info.value)), str(info.value)
    assert (tmp_path / "summary.json").read_text() == summary


def test_resume_past_the_last_step_says_nothing_is_left(make_config, tmp_path):
    from metaopt.run import run
    from metaopt.runner.checkpoint import CheckpointError

    base = _first_run(make_config, tmp_path)
    with pytest.raises(CheckpointError, match=r"checkpoint at step 5 .*outer\.steps=4: nothing left to run"):
        run(make_config(*base, "outer.steps=4", "resume=true"), tmp_path)


def test_resume_accepts_changes_that_cannot_change_the_result(make_config, tmp_path):
    from metaopt.run import run

    base = _first_run(make_config, tmp_path)
    summary = run(make_config(*base, "outer.steps=20", "log_every=2", "checkpoint_every=3", "threads=1",
                              "progress=true", "resume=true"), tmp_path)
    assert summary["steps"] == 20
    assert load_checkpoint(tmp_path / "checkpoint.pt")["config"]["outer"]["steps"] == 20
