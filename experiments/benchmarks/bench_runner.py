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
# Both sides on one torch thread: digits_mlp's matmuls are small, one thread is the faster setting on a 2-core
# machine, and two threads on two cores that other work shares make a step 10-30x slower at random, which
# drowns the few microseconds per step being measured.
THREADS = 1


def _config(logger: str):
    with initialize_config_dir(config_dir=str(REPO / "metaopt" / "conf"), version_base="1.3"):
        return compose("config", overrides=["name=bench", f"logger={logger}", "progress=true",
                                            "task=digits_mlp", "optimizer=adam", f"outer.steps={STEPS}",
                                            "checkpoint_every=0", f"threads={THREADS}"])


def _bare_loop_seconds(cfg) -> float:
    from hydra.utils import instantiate

    torch.set_num_threads(cfg.threads)  # as the runner does
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
        "title": f"Runner overhead: {STEPS}-step digits_mlp run (Adam, log_every=10, eval_every=100, "
                 f"{THREADS} torch thread)",
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


# A bare script's startup floor: torch's own optimizers import torch._dynamo when they are built
# (torch.optim.Optimizer.add_param_group is wrapped by torch._disable_dynamo), about 1 s more than
# `import torch`, before any training script's first step.
_OPTIMIZER_FLOOR = "import torch; torch.optim.Adam([torch.zeros(1, requires_grad=True)])"
STARTUP_TARGET = 1.5


def _runner_startup(logger: str) -> float:
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "metaopt.run", f"logger={logger}", "outer.steps=1",
                        "progress=false", f"hydra.run.dir={folder}"], check=True, cwd=REPO,
                       capture_output=True, env={**os.environ, "WANDB_MODE": "offline"})
        return json.loads((Path(folder) / "summary.json").read_text())["startup_seconds"]


def _startup_table(quick: bool) -> dict:
    repeats = 1 if quick else 5
    measures = {
        "torch": lambda: _wall([sys.executable, "-c", "import torch"]),
        "floor": lambda: _wall([sys.executable, "-c", _OPTIMIZER_FLOOR]),
        "none": lambda: _runner_startup("none"),
        "wandb": lambda: _runner_startup("wandb"),
    }
    for measure in measures.values():  # warm-up: the page cache, .pyc files
        measure()
    times: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(repeats):  # interleaved, so that drifts of the machine hit every variant alike
        for name, measure in measures.items():
            times[name].append(measure())
    baseline = statistics.median(times["torch"])
    floor = statistics.median(times["floor"])
    rows = [["python -c 'import torch' (baseline)", baseline, 1.0, "-"],
            ["python -c 'import torch; build a torch.optim.Adam' (a bare script's floor)", floor, floor / baseline,
             "-"]]
    for logger in ("none", "wandb"):
        t = statistics.median(times[logger])
        rows.append([f"python -m metaopt.run logger={logger}: process start to first step", t, t / baseline,
                     f"{'PASS' if t / baseline <= STARTUP_TARGET else 'FAIL'} (<= {STARTUP_TARGET})"])
    return {
        "title": "Startup: from launching the runner to its first training step",
        "columns": ["what", "seconds (median)", "ratio to importing torch", "target"],
        "rows": rows,
        "notes": f"Median of {repeats} interleaved repetitions after one warm-up, each a fresh process. The runner "
                 "composes the config, imports Hydra, loads the digits (from scikit-learn's file, without importing "
                 "scikit-learn) and (with wandb) starts the offline wandb service; matplotlib is imported after the "
                 "last step, for the plots. Building any torch.optim optimizer imports torch._dynamo (second row), "
                 "which a torch training script cannot avoid.",
    }


def run(quick: bool = False, devices: tuple[str, ...] = ("cpu", "cuda")) -> list[dict]:
    if "cpu" not in devices:
        return []
    threads = torch.get_num_threads()
    try:
        overhead = _overhead_table(quick)
    finally:  # (the runner and the bare loop set one thread; the next benchmarks keep the machine's setting)
        torch.set_num_threads(threads)
    return [overhead, _startup_table(quick)]
