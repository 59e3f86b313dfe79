"""The runner's own overhead: startup to the first step, and the per-step cost of the runner and its logging.

Baselines, measured in the same run: a bare PyTorch loop doing the same work as the runner's job
(the same 2000 ``digits_mlp`` steps with the same task, model, optimizer and batches, and the same
evaluation every 100 steps; no progress bar, no logging, no NaN guard, no plots) and
``python -c "import torch"`` for startup.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from metaopt.run import run as run_job

REPO = Path(__file__).resolve().parents[2]
STEPS = 2000


def _config(logger: str):
    with initialize_config_dir(config_dir=str(REPO / "metaopt" / "conf"), version_base="1.3"):
        return compose("config", overrides=["name=bench", f"logger={logger}", "progress=true",
                                            "task=digits_mlp", "optimizer=adam", f"outer.steps={STEPS}",
                                            "checkpoint_every=0"])


def _bare_loop_seconds(cfg) -> float:
    from hydra.utils import instantiate

    torch.manual_seed(cfg.seed)
    task = instantiate(cfg.task)
    model = task.build_model()
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    generator = torch.Generator().manual_seed(cfg.seed)
    eval_every = cfg.outer.eval_every
    start = time.perf_counter()
    for step in range(1, STEPS + 1):
        inputs, targets = task.sample_batch(generator)
        optimizer.zero_grad(set_to_none=True)
        loss = task.loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0:
            task.evaluate(model)
    return time.perf_counter() - start


def _runner_seconds(cfg) -> float:
    with tempfile.TemporaryDirectory() as folder:
        return run_job(cfg, Path(folder))["train_seconds"]


def _overhead_table(quick: bool) -> dict:
    repeats = 2 if quick else 9
    configs = {"none": _config("none"), "wandb": _config("wandb")}
    times: dict[str, list[float]] = {"bare": [], "none": [], "wandb": []}
    os.environ.setdefault("WANDB_MODE", "offline")
    _bare_loop_seconds(configs["none"])  # warm-up
    for _ in range(repeats):  # interleaved, so that drifts of the machine hit every variant alike
        times["bare"].append(_bare_loop_seconds(configs["none"]))
        times["none"].append(_runner_seconds(configs["none"]))
        times["wandb"].append(_runner_seconds(configs["wandb"]))
    # The fastest repetition is the cost of the code itself; slower ones add the machine's noise,
    # which on a shared 2-core machine is larger than the overhead being measured.
    bare = min(times["bare"])
    rows = [["bare PyTorch loop (baseline)", bare, statistics.median(times["bare"]), 1.0, "-"]]
    for name, label in (("none", "runner, logger=none"), ("wandb", "runner, logger=wandb (offline)")):
        t = min(times[name])
        rows.append([label, t, statistics.median(times[name]), t / bare, "PASS" if t / bare <= 1.05 else "FAIL"])
    return {
        "title": f"Runner overhead: {STEPS}-step digits_mlp run (Adam, log_every=10, eval_every=100)",
        "columns": ["variant", "seconds (fastest)", "seconds (median)", "ratio to bare loop (fastest)",
                    "target <= 1.05"],
        "rows": rows,
        "notes": f"Fastest and median of {repeats} interleaved repetitions. Both do 20 full-split evaluations; "
                 "the runner adds the progress bar, window-averaged logging every 10 steps (to wandb at most one "
                 "record per 0.1 s) and the NaN/Inf guard. "
                 "With wandb, its service process competes with torch's threads for the cores.",
    }


def _wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, env={**os.environ, "WANDB_MODE": "offline"})
    return time.perf_counter() - start


def _startup_table(quick: bool) -> dict:
    repeats = 1 if quick else 3
    baseline = statistics.median(_wall([sys.executable, "-c", "import torch"]) for _ in range(repeats))
    rows = [["python -c 'import torch' (baseline)", baseline, 1.0]]
    for logger in ("none", "wandb"):
        startups = []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as folder:
                subprocess.run([sys.executable, "-m", "metaopt.run", f"logger={logger}", "outer.steps=1",
                                "progress=false", f"hydra.run.dir={folder}"], check=True, cwd=REPO,
                               capture_output=True, env={**os.environ, "WANDB_MODE": "offline"})
                startups.append(json.loads((Path(folder) / "summary.json").read_text())["startup_seconds"])
        t = statistics.median(startups)
        rows.append([f"python -m metaopt.run logger={logger}: process start to first step", t, t / baseline])
    return {
        "title": "Startup: from launching the runner to its first training step",
        "columns": ["what", "seconds (median)", "ratio to importing torch"],
        "rows": rows,
        "notes": "Includes composing the config, importing Hydra, scikit-learn and matplotlib, loading the "
                 "digits and (with wandb) starting the offline wandb service.",
    }


def run(quick: bool = False, devices: tuple[str, ...] = ("cpu", "cuda")) -> list[dict]:
    return [_overhead_table(quick), _startup_table(quick)] if "cpu" in devices else []
