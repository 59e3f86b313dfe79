"""Timing helpers shared by the benchmarks: warm-up, repetitions, medians, CUDA events."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, inner: int = 1) -> float:
    """Median wall time of ``inner`` calls of ``fn`` over ``repeats`` runs, after ``warmup`` runs.

    On CUDA tensors, pass a ``fn`` that launches work: the device is synchronised around each run.
    """
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def cuda_median_seconds(fn: Callable[[], object], repeats: int = 20, warmup: int = 3, inner: int = 10) -> float:
    """Median time of ``fn`` on the current CUDA stream measured with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / inner)
    return statistics.median(times)
