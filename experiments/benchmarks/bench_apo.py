"""Wall time of training with APO against the same run with its base optimizer alone.

A run is ``steps`` minibatch steps of a ``digits_mlp``-shaped task (sample a batch, forward,
backward, step; APO adds its meta-step on a fresh batch every ``meta_interval = 10`` steps), as
``outer=apo`` runs it. After a warm-up, every APO run follows a run of its base (a pair); the ratio
is the median of the pairs' ratios, the ms/step the fastest run of each (the least disturbed by other
processes). On CUDA, a larger MLP adds rows.
"""

from __future__ import annotations

import functools
import statistics
import time

import torch

from metaopt.optim import APO
from metaopt.tasks import MLP, SupervisedTask, data


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_seconds(task: SupervisedTask, make_optimizer, steps: int) -> float:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = task.build_model()
    optimizer = make_optimizer(model.parameters())
    meta_step = getattr(optimizer, "meta_step", None)
    _sync(task.device)
    start = time.perf_counter()
    for _ in range(steps):
        inputs, targets = task.sample_batch(generator)
        optimizer.zero_grad(set_to_none=True)
        task.loss(model(inputs), targets).backward()
        if meta_step is not None and optimizer.meta_due:
            meta_step(model, (inputs, targets), task.sample_batch(generator)[0], task.loss)
        optimizer.step()
    _sync(task.device)
    return time.perf_counter() - start


def _table(title: str, task: SupervisedTask, steps: int, repeats: int, notes: str) -> dict:
    bases = {
        "SGD+momentum": functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        "Adam": functools.partial(torch.optim.Adam, lr=1e-3),
    }
    configs = {}
    for name, base in bases.items():
        configs[(name, "base")] = base
        configs[(name, "APO-LR")] = functools.partial(APO, base=base, mode="lr", divergence="kl")
        configs[(name, "APO-Precond")] = functools.partial(APO, base=base, mode="precond", divergence="kl")
    for make in configs.values():  # warm-up: allocator, kernels, first-call overheads
        _train_seconds(task, make, max(steps // 10, 20))
    # Paired runs: every APO run right after a run of its base, so that the slow drifts of a shared
    # machine's speed hit both sides of a ratio alike; the ratio is the median of the pairs' ratios.
    times: dict = {key: [] for key in configs}
    ratios: dict = {key: [] for key in configs}
    for _ in range(repeats):
        for name in bases:
            for variant in ("APO-LR", "APO-Precond"):
                base_seconds = _train_seconds(task, configs[(name, "base")], steps)
                seconds = _train_seconds(task, configs[(name, variant)], steps)
                times[(name, "base")].append(base_seconds)
                times[(name, variant)].append(seconds)
                ratios[(name, variant)].append(seconds / base_seconds)
    rows = []
    for name in bases:
        base_ms = 1e3 * min(times[(name, "base")]) / steps
        for variant in ("APO-LR", "APO-Precond"):
            ms = 1e3 * min(times[(name, variant)]) / steps
            target = "≤ 1.3" if variant == "APO-LR" else "≤ 2 (aim)"
            ratio = statistics.median(ratios[(name, variant)])
            rows.append([variant, name, f"{base_ms:.3f}", f"{ms:.3f}", f"{ratio:.2f}×", target])
    columns = ["optimizer", "base", "base ms/step", "APO ms/step", "ratio", "target"]
    return {"title": title, "columns": columns, "rows": rows, "notes": notes}


def run(quick: bool = False, devices: tuple[str, ...] = ("cpu", "cuda")) -> list[dict]:
    steps, repeats = (100, 3) if quick else (300, 15)
    digits = data.load_digits()
    tables = []
    if "cpu" in devices:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            task = SupervisedTask(digits, functools.partial(MLP, hidden_sizes=(64,)), batch_size=64)
            tables.append(_table(f"APO on digits_mlp (CPU, 1 thread, {steps} steps)", task, steps, repeats,
                                 "meta_interval=10, λ_FSD=0.1 (KL), meta-optimizer Adam. ms/step: fastest of "
                                 f"{repeats} runs; ratio: median over {repeats} pairs of an APO run right after a "
                                 "run of its base. Each run includes batch sampling, forward and backward."))
            if not quick:  # where compute, not Python overhead, dominates a step
                wider = SupervisedTask(digits, functools.partial(MLP, hidden_sizes=(512, 512)), batch_size=256)
                tables.append(_table("APO on a 64-512-512-10 MLP (CPU, 1 thread, batch 256, 150 steps)", wider,
                                     150, 5, "as above; a step costs milliseconds, so APO's Python overhead "
                                     "matters less"))
        finally:
            torch.set_num_threads(threads)
    if "cuda" in devices and torch.cuda.is_available():
        wide = functools.partial(MLP, hidden_sizes=(1024, 1024, 1024))
        big = SupervisedTask(digits, wide, batch_size=512, device="cuda")
        tables.append(_table(f"APO on a 64-1024-1024-1024-10 MLP (CUDA, batch 512, {steps} steps)", big,
                             steps, repeats, "as above, on the GPU; APO-Precond learns 1024×1024 factors"))
    return tables
