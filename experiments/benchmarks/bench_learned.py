"""Step time of the learned optimizer (``LearnedOptimizer``, a per-element MLP) against fused Adam and against
the floor the machine's matmul throughput sets for the same FLOPs.

Same parameters (1M and 10M over 20 tensors), same gradients, same run, measurements interleaved, medians
after a warm-up. The floor: ``torch.mm`` of the MLP's shapes on as many rows as there are elements
((n, F)·(F, H), then (n, H)·(H, 2) and the skip (n, F)·(F, 2)), the matmul FLOPs of one learned step.
Target: within 2× of that floor, run in the same blocks of rows as the learned step. The optimizer's default
on CPU is its fused C kernel (``fused=None``); the functional core's torch path (``fused=False``, what runs
under autograd, ``torch.compile`` and on CUDA) is timed beside it.
Run alone: ``python -m experiments.benchmarks.run --only learned``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from metaopt.optim import LearnedOptimizer
from metaopt.optim.functional.learned import CHUNK, NUM_FEATURES, initial_weights

HIDDEN = 32
TARGET = 2.0


def _parameters(total: int, num_tensors: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for _ in range(num_tensors):
        p = torch.nn.Parameter(torch.randn(total // num_tensors, generator=gen))
        p.grad = torch.randn(total // num_tensors, generator=gen)
        params.append(p)
    return params


def _time(step: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(quick: bool = False, devices=("cpu",)) -> list[dict]:
    if "cpu" not in devices:
        return []
    rows = []
    for total in (1_000_000, 10_000_000):
        repeats = 3 if quick else (9 if total <= 1_000_000 else 5)
        learned_params, adam_params = _parameters(total, 20), _parameters(total, 20)
        generator = torch.Generator().manual_seed(1)
        weights = initial_weights((HIDDEN,), generator) + 0.1 * torch.randn(
            initial_weights((HIDDEN,)).shape, generator=generator)
        learned = LearnedOptimizer(learned_params, weights=weights, hidden=[HIDDEN])
        unfused = LearnedOptimizer(_parameters(total, 20), weights=weights, hidden=[HIDDEN], fused=False)
        adam = torch.optim.Adam(adam_params, lr=1e-3, fused=True)
        features = torch.randn(total, NUM_FEATURES)
        w1, w2, skip = torch.randn(NUM_FEATURES, HIDDEN), torch.randn(HIDDEN, 2), torch.randn(NUM_FEATURES, 2)

        def floor(features=features, w1=w1, w2=w2, skip=skip):
            hidden = torch.mm(features, w1)
            return torch.mm(hidden, w2), torch.mm(features, skip)

        def blocked_floor(features=features, w1=w1, w2=w2, skip=skip):
            for block in features.split(CHUNK):  # the same matmuls in cache-sized blocks: peak throughput
                torch.mm(torch.mm(block, w1), w2), torch.mm(block, skip)

        steps = {"learned": learned.step, "unfused": unfused.step, "adam": adam.step, "floor": floor,
                 "blocked": blocked_floor}
        for step in steps.values():  # warm-up
            step()
        samples = {name: [] for name in steps}
        for _ in range(3):
            for name, step in steps.items():
                samples[name].append(_time(step, repeats))
        ms = {k: 1000 * min(v) for k, v in samples.items()}
        ratio = ms["learned"] / ms["blocked"]
        rows.append([f"{total // 1_000_000}M", ms["learned"], ms["unfused"], ms["adam"], ms["floor"], ms["blocked"],
                     ms["learned"] / ms["floor"], ratio, ms["unfused"] / ms["blocked"], ms["learned"] / ms["adam"],
                     f"≤ {TARGET:g}× blocked: {'PASS' if ratio <= TARGET else 'FAIL'}"])
    return [{"title": f"Learned optimizer step (CPU, hidden {HIDDEN}, {NUM_FEATURES} features, 20 tensors)",
             "columns": ["parameters", "learned ms", "torch path ms", "fused Adam ms", "mm floor ms",
                         "blocked mm floor ms", "learned / mm", "learned / blocked mm", "torch path / blocked mm",
                         "learned / Adam", "target"],
             "rows": rows,
             "notes": "learned: the default step (fused C kernel on CPU); torch path: fused=False, the functional "
                      "core. ms: fastest of 3 interleaved medians. Floors: torch.mm of the MLP's matmuls over as many "
                      "rows as elements (its FLOPs), without the features' elementwise work: in one call (mm, "
                      "memory-bound at this width) and in the learned step's blocks of rows (blocked mm, the "
                      "machine's matmul throughput; the target is against this one). A per-element MLP is ~1000 "
                      "FLOPs an element against Adam's ~10: the ratio to fused Adam is what a user pays."}]


if __name__ == "__main__":
    for table in run():
        print(table)
