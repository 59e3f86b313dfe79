"""How long the ``metaopt`` command takes to answer: ``--help``, and a config error, against importing torch.

Baseline, measured in the same run: ``python -c "import torch"``. Each command runs as the ``metaopt``
console script does (``from metaopt.run import main; main()``) in a fresh process, from a scratch folder;
the three commands are interleaved, so that the machine's drifts hit each alike.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGET = 1.5
CONSOLE_SCRIPT = "import sys; from metaopt.run import main; sys.argv[0] = 'metaopt'; sys.exit(main())"


def _wall(cmd: list[str], folder: str, expect_ok: bool = True) -> float:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=folder, capture_output=True, env=env)
    seconds = time.perf_counter() - start
    if (result.returncode == 0) != expect_ok:
        raise RuntimeError(f"{cmd} exited {result.returncode}: {result.stderr.decode()[-2000:]}")
    return seconds


def run(quick: bool = False, devices: tuple[str, ...] = ("cpu", "cuda")) -> list[dict]:
    if "cpu" not in devices:
        return []
    repeats = 2 if quick else 9
    commands = {
        "torch": ([sys.executable, "-c", "import torch"], True),
        "help": ([sys.executable, "-c", CONSOLE_SCRIPT, "--help"], True),
        "error": ([sys.executable, "-c", CONSOLE_SCRIPT, "optimizer.lr=-1", "logger=none"], False),
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as folder:
        for cmd, ok in commands.values():  # warm-up: the page cache, .pyc files
            _wall(cmd, folder, ok)
        for _ in range(repeats):
            for name, (cmd, ok) in commands.items():
                times[name].append(_wall(cmd, folder, ok))
    baseline = statistics.median(times["torch"])
    help_ratio = statistics.median(times["help"]) / baseline
    rows = [
        ["python -c 'import torch' (baseline)", baseline, 1.0, "-"],
        ["metaopt --help", statistics.median(times["help"]), help_ratio,
         f"{'PASS' if help_ratio <= TARGET else 'FAIL'} (<= {TARGET})"],
        ["metaopt optimizer.lr=-1 (one-line config error)", statistics.median(times["error"]),
         statistics.median(times["error"]) / baseline, "-"],
    ]
    return [{
        "title": "Startup of the metaopt command: --help and a config error, against importing torch",
        "columns": ["command", "seconds (median)", "ratio to importing torch", "target"],
        "rows": rows,
        "notes": f"Median of {repeats} interleaved repetitions after one warm-up, each a fresh process. "
                 "--help imports Hydra and composes the config, but not torch, wandb, matplotlib or the tasks; "
                 "an invalid value is rejected by the checks that run before torch is imported (an error found "
                 "while building the objects, e.g. task.model.hidden_sizes=64, comes after importing torch).",
    }]
