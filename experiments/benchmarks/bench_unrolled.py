"""Particle throughput of PES on the digits_mlp TrainingRun: vectorized vs a Python loop over particles.

Throughput is inner steps × particles per second of ``PES.estimate`` (truncations of K=10 steps; each
step is a minibatch gradient, an SGD-momentum update and a validation-minibatch meta-loss). The
baseline runs the same math one particle at a time (``functional_call`` + autograd + the functional
SGD core, unbatched), in the same process; the unbatched training step is a plain ``nn.Module`` +
``torch.optim.SGD`` step on one minibatch. The compiled row is ``TrainingRun(compile=True)``, whose
first truncation compiles the step (its duration is reported). Every figure is a median over
repetitions after a warm-up, and the rows of a table are measured in alternation, so that load on a
shared machine hits them alike.
Target: vectorized ≥ 10× the loop at 256 particles, with torch's default threads (every core, as a
run uses them); the throughput table is repeated with one thread. With 2 processes (gloo, one thread
each) the particles are split across ranks. Run alone: ``python -m experiments.benchmarks.bench_unrolled [--quick]``.
"""

from __future__ import annotations

import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.func import functional_call

from metaopt.optim.functional import FUNCTIONAL
from metaopt.tasks import MLP, SupervisedTask, TrainingRun
from metaopt.tasks.data import load_digits
from metaopt.unrolled import PES

K = 10
TARGET = 10.0


def _problem(device: str, compile: bool = False, batched_mlp: bool = True) -> TrainingRun:
    def model(in_features, out_features):
        return MLP(in_features, out_features, (64,))

    task = SupervisedTask(load_digits(), model, batch_size=64, device=device)
    return TrainingRun(task, "sgd", tuned={"lr": 0.05, "momentum": 0.5}, schedule="linear", horizon=200,
                       compile=compile, batched_mlp=batched_mlp)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _median_seconds(fn: Callable[[], None], device: str, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync(device)
        began = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def _vectorized_truncation(problem: TrainingRun, num_particles: int) -> Callable[[], None]:
    estimator = PES(problem, num_particles, sigma=0.1, truncation_length=K, seed=0)
    theta = problem.initial_theta()
    return lambda: estimator.estimate(theta)


def _loop_truncation(problem: TrainingRun, num_particles: int, device: str) -> Callable[[], None]:
    """The same PES truncation, one particle at a time: unbatched autograd and functional SGD."""
    model, names, task = problem.model, problem.param_names, problem.task
    sgd = FUNCTIONAL["sgd"]
    particles = [(tuple(p.clone() for p in problem.initial_params), sgd.init(problem.initial_params))
                 for _ in range(num_particles)]
    generator = torch.Generator().manual_seed(0)
    theta = problem.initial_theta()
    x_train, y_train = task.data.train
    x_val, y_val = task.data.val

    def loss(params, inputs, targets):
        return F.cross_entropy(functional_call(model, dict(zip(names, params)), (inputs,)), targets)

    def truncation():
        noise = 0.1 * torch.randn(num_particles // 2, problem.dim, generator=generator).to(device)
        noise = torch.cat([noise, -noise])
        for step in range(K):
            pairs = num_particles // 2
            train_index = torch.randint(len(x_train), (pairs, 64), generator=generator).to(device)
            val_index = torch.randint(len(x_val), (pairs, 64), generator=generator).to(device)
            for i in range(num_particles):
                params, state = particles[i]
                pair = i % pairs
                hyper = problem.hyperparameters((theta + noise[i])[None], torch.tensor([step], device=device))
                with torch.enable_grad():
                    leaves = [p.detach().requires_grad_() for p in params]
                    index = train_index[pair]
                    grads = torch.autograd.grad(loss(leaves, x_train[index], y_train[index]), leaves)
                params, state = sgd.update(tuple(p.detach() for p in leaves), grads, state,
                                           lr=hyper["lr"][0], momentum=hyper["momentum"][0])
                loss(params, x_val[val_index[pair]], y_val[val_index[pair]])
                particles[i] = (params, state)

    return torch.no_grad()(truncation)


def _interleaved(functions: dict[str, Callable[[], None]], device: str, reps: int) -> dict[str, float]:
    """Median seconds of each function, measured in alternation (so that load on a shared machine hits
    all of them alike), after one warm-up call each."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for fn in functions.values():
        fn()
    for _ in range(reps):
        for name, fn in functions.items():
            _sync(device)
            began = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - began)
    return {name: statistics.median(t) for name, t in times.items()}


def _unbatched_steps(problem: TrainingRun) -> Callable[[], None]:
    """20 plain training steps (``nn.Module`` + ``torch.optim.SGD``) with a validation forward each."""
    task = problem.task
    model = task.build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    generator = torch.Generator().manual_seed(0)

    def step():
        inputs, targets = task.sample_batch(generator)
        optimizer.zero_grad()
        task.loss(model(inputs), targets).backward()
        optimizer.step()
        with torch.no_grad():
            inputs, targets = task.sample_batch(generator, split="val")
            task.loss(model(inputs), targets)

    return lambda: [step() for _ in range(20)]


def _device_tables(device: str, quick: bool, scaling: bool = True) -> list[dict]:
    problem = _problem(device)
    threads = torch.get_num_threads()
    where = f"{device}, {threads} thread{'s' if threads > 1 else ''}" if device == "cpu" else device
    target = f"≥ {TARGET:.0f}×" if scaling else "(at every core)"
    reps = 3 if quick else 7
    compiled_truncation = _vectorized_truncation(_problem(device, compile=True), 256)
    began = time.perf_counter()
    compiled_truncation()
    compile_seconds = time.perf_counter() - began
    seconds = _interleaved({"vectorized": _vectorized_truncation(problem, 256),
                            "vmap": _vectorized_truncation(_problem(device, batched_mlp=False), 256),
                            "compiled": compiled_truncation,
                            "loop": _loop_truncation(problem, 256, device),
                            "unbatched": _unbatched_steps(problem)}, device, 2 if quick else 5)
    vectorized, loop = 256 * K / seconds["vectorized"], 256 * K / seconds["loop"]
    compiled = 256 * K / seconds["compiled"]
    vmapped = 256 * K / seconds["vmap"]
    step = seconds["unbatched"] / 20
    particle_step, compiled_step = 1.0 / vectorized, 1.0 / compiled
    tables = [{
        "title": f"PES particle throughput, digits_mlp TrainingRun, 256 particles ({where})",
        "columns": ["implementation", "particle-steps / s", "ratio vs Python loop", "target"],
        "rows": [["Python loop over particles", f"{loop:.0f}", "1.00×", ""],
                 ["vectorized (the default: BatchedMLP, batched matmuls)", f"{vectorized:.0f}",
                  f"{vectorized / loop:.1f}×", target],
                 ["vectorized, vmap of torch.func.grad (batched_mlp=False)", f"{vmapped:.0f}",
                  f"{vmapped / loop:.1f}×", ""],
                 ["vectorized, compiled step (TrainingRun(compile=True))", f"{compiled:.0f}",
                  f"{compiled / loop:.1f}×", target]],
        "notes": f"K={K} steps per truncation; one particle-step = minibatch gradient, SGD-momentum update, "
                 f"validation-minibatch meta-loss. The compiled step's first truncation (compiling) took "
                 f"{compile_seconds:.0f} s.",
    }, {
        "title": f"Cost of one vectorized particle-step vs one unbatched training step ({where})",
        "columns": ["step", "microseconds", "ratio vs unbatched step"],
        "rows": [["unbatched nn.Module + torch.optim.SGD step (+ val forward)", f"{step * 1e6:.0f}", "1.00"],
                 ["one particle-step inside PES with 256 particles", f"{particle_step * 1e6:.0f}",
                  f"{particle_step / step:.2f}"],
                 ["the same, compiled step", f"{compiled_step * 1e6:.0f}", f"{compiled_step / step:.2f}"]],
        "notes": "The vectorized step also computes the per-particle hyperparameters and reset bookkeeping.",
    }]
    if not scaling:
        return tables
    counts = [16, 64, 256] if quick else [16, 64, 256, 1024]
    if device == "cuda" and not quick:
        counts.append(4096)
    seconds = _interleaved({n: _vectorized_truncation(problem, n) for n in counts}, device, reps)
    throughputs = [n * K / seconds[n] for n in counts]
    tables.append({
        "title": f"PES throughput against the number of particles ({where})",
        "columns": ["particles", "particle-steps / s", "ratio vs 16 particles"],
        "rows": [[n, f"{t:.0f}", f"{t / throughputs[0]:.2f}×"] for n, t in zip(counts, throughputs)],
        "notes": "One process; throughput saturates once the batched matmuls fill the device.",
    })
    return tables


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank: int, world_size: int, port: int, num_particles: int, reps: int,
                        out: str, threads: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        problem = _problem("cpu")
        estimator = PES(problem, num_particles, sigma=0.1, truncation_length=K, seed=0)
        theta = problem.initial_theta()

        def estimate():
            estimator.estimate(theta)
            dist.barrier()

        seconds = _median_seconds(estimate, "cpu", reps)
        if rank == 0:
            Path(out).write_text(str(seconds))
    finally:
        dist.destroy_process_group()


def _processes_table(quick: bool) -> dict:
    num_particles, reps = 256, 3 if quick else 7
    cores = os.cpu_count() or 1
    runs = {(1, 1): None, (1, cores): None, (2, 1): None}  # (processes, threads per process)
    with tempfile.TemporaryDirectory() as folder:
        for world_size, threads in runs:
            out = str(Path(folder) / f"world{world_size}-threads{threads}.txt")
            mp.start_processes(_distributed_worker,
                               args=(world_size, _free_port(), num_particles, reps, out, threads),
                               nprocs=world_size, start_method="spawn")
            runs[world_size, threads] = float(Path(out).read_text())
    base = runs[1, 1]
    rows = [[w, t, f"{num_particles * K / s:.0f}", f"{base / s:.2f}×"] for (w, t), s in runs.items()]
    return {
        "title": f"PES on digits_mlp, {num_particles} particles: torch.distributed processes (gloo, CPU)",
        "columns": ["processes", "threads each", "particle-steps / s", "speedup vs 1 process, 1 thread"],
        "rows": rows,
        "notes": f"{cores} CPU cores on this machine (maybe shared); torchrun's speedup over one process "
                 "using every core is the ratio of the last two rows.",
    }


def run(quick: bool = False, devices: tuple[str, ...] = ("cpu", "cuda")) -> list[dict]:
    tables = []
    if "cpu" in devices:
        tables += _device_tables("cpu", quick)  # every core, as a run uses them
        threads = torch.get_num_threads()
        if threads > 1:  # and one thread, where vectorizing gains only what batching saves
            torch.set_num_threads(1)
            try:
                tables += _device_tables("cpu", quick, scaling=False)[:1]
            finally:
                torch.set_num_threads(threads)
        tables.append(_processes_table(quick))
    if "cuda" in devices and torch.cuda.is_available():
        tables += _device_tables("cuda", quick)
    return tables
