"""PES in metaopt against a JAX implementation of the same problem (``pes_jax.py``), in the same run.

The problem: a 64-32-10 tanh MLP on the 8×8 digits, minibatches of 128, SGD with momentum over a horizon
of T = 200 steps, θ = (log lr_start, log lr_end, logit momentum) (lr 0.05 → 0.05, momentum 0.5 at the
start), the meta-loss of a step the training minibatch loss, PES with truncations of K = 10 steps, σ = 0.1,
antithetic pairs, particles staggered over the horizon. metaopt runs it as ``PES(TrainingRun(task, "sgd",
schedule="linear", meta_split="train"), N)``; JAX as one ``jit`` of a whole outer iteration (``vmap`` over
the particles, ``lax.scan`` over the K steps). Both start from the same ``s_0``.

Two checks that they compute the same thing: (1) shared noise: metaopt's perturbations and minibatches of
three truncations fed to the JAX truncation, the estimates compared (float32 rounding apart, they must be
equal); (2) independent random numbers: the mean estimate over many pairs, each pair's terms averaged over
a few truncations (pairs are independent), within a few standard errors of each other.

Timing: particle-steps per second (N·K per outer iteration) at N = 64, 256, 1024, JAX and metaopt eager
and ``compile=True`` measured in alternation in one process; the first call of each (JAX: ``jit``'s
trace + compile, reported apart, then the first run; metaopt compiled: the first truncation, which
compiles). Each thread count runs in its own subprocess, since XLA's threads are fixed at import: one
core (the process pinned to one CPU with ``sched_setaffinity`` before jax is imported, which is what
sizes XLA's thread pools: ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` alone still left jax 0.10
running two Eigen threads; ``torch.set_num_threads(1)``), and every core (both frameworks' defaults,
torch at ``torch.get_num_threads()`` threads). The process's CPU time is reported next to wall time: on a
shared machine, CPU / wall below the number of cores used says the run was starved, and throughput per
CPU-second is the steadier figure.
Targets (issue 16): eager ≥ 1.0× JAX at N = 256 and 1024, compiled ≥ 1.5×, a first compiled truncation no
slower than JAX's compile + first call.

Needs ``jax`` (``pip install ".[bench-jax]"``; ``make bench`` installs it); without it the tables say so.
Run alone: ``python -m experiments.benchmarks.run --only pes_jax`` (``--quick``: fewer repetitions).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

K = 10
HORIZON = 200
SIGMA = 0.1
BATCH = 128
COUNTS = (64, 256, 1024)
TARGETS = {"eager": 1.0, "compiled": 1.5}
ROOT = Path(__file__).resolve().parents[2]


def jax_available() -> bool:
    return importlib.util.find_spec("jax") is not None


def single_thread_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with XLA's CPU backend held to one thread (set before jax is imported)."""
    flags = env.get("XLA_FLAGS", "")
    return {**env, "XLA_FLAGS": f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1".strip()}


# -- the problem in metaopt -------------------------------------------------------------------------------
def metaopt_problem(compile: bool = False, batched_mlp: bool = True):
    from metaopt.tasks import MLP, SupervisedTask, TrainingRun
    from metaopt.tasks.data import load_digits

    def model(in_features, out_features):
        return MLP(in_features, out_features, (32,), activation="tanh")

    task = SupervisedTask(load_digits(), model, batch_size=BATCH)
    return TrainingRun(task, "sgd", tuned={"lr": 0.05, "momentum": 0.5}, schedule="linear", horizon=HORIZON,
                       meta_split="train", compile=compile, batched_mlp=batched_mlp)


def jax_problem(problem):
    """The same data and ``s_0`` as metaopt's ``problem``, as JAX arrays."""
    import jax.numpy as jnp

    from experiments.benchmarks.pes_jax import PESProblem

    x, y = problem.task.data.train
    return PESProblem(jnp.asarray(x.numpy()), jnp.asarray(y.numpy().astype("int32")),
                      tuple(jnp.asarray(p.numpy()) for p in problem.initial_params))


# -- checks ---------------------------------------------------------------------------------------------
def shared_noise_check(num_particles: int = 16, truncations: int = 3, seed: int = 0,
                       batched_mlp: bool = True) -> dict:
    """metaopt's PES for ``truncations`` outer iterations, and the JAX truncation fed the same perturbations,
    minibatches and initial (staggered) state: the largest difference between the two estimates relative to
    the estimate's size, and between the per-step losses."""
    import torch

    from metaopt.tasks.unrolled import training_run
    from metaopt.tasks.unrolled.training_run import stream_minibatches
    from metaopt.unrolled import PES

    problem = metaopt_problem(batched_mlp=batched_mlp)
    estimator = PES(problem, num_particles, sigma=SIGMA, truncation_length=K, seed=seed)
    theta = problem.initial_theta()
    recorded: dict[str, list] = {"noise": [], "x": [], "y": []}
    sample_noise, batches = estimator._sample_noise, problem._batches

    def recording_noise():
        noise = sample_noise()
        recorded["noise"].append(noise.clone())
        return noise

    def recording_batches(*args):
        inputs, targets = batches(*args)
        recorded["x"].append(inputs.clone())
        recorded["y"].append(targets.clone())
        return inputs, targets

    def recording_minibatches(task, split, batch_size, generator, streams, num_streams, out=None):
        """The per-stream minibatches of the batched path (rows ``streams``, sorted), per particle."""
        inputs, targets = stream_minibatches(task, split, batch_size, generator, streams, num_streams, out)
        row = torch.searchsorted(streams, estimator.streams)
        recorded["x"].append(inputs[row].clone())
        recorded["y"].append(targets[row].clone())
        return inputs, targets

    estimator._sample_noise, problem._batches = recording_noise, recording_batches
    training_run.stream_minibatches = recording_minibatches
    try:
        return _compare(problem, estimator, theta, recorded, num_particles, truncations)
    finally:
        training_run.stream_minibatches = stream_minibatches


def _compare(problem, estimator, theta, recorded, num_particles, truncations):
    import jax.numpy as jnp
    import numpy as np
    import torch

    from experiments.benchmarks import pes_jax

    # some pairs reset inside a truncation (steps not multiples of K), some at its last step
    steps = torch.tensor([HORIZON - 5, HORIZON - 1, HORIZON - K, 3])
    estimator.state["step"] = steps[torch.arange(estimator.num_streams) % len(steps)][estimator.streams]
    jproblem = jax_problem(problem)
    state = pes_jax.init_state(jproblem, num_particles, estimator.state["step"].numpy())
    run = pes_jax.jitted_truncation(SIGMA, HORIZON)
    gradient_error = loss_error = 0.0
    for _ in range(truncations):
        with torch.no_grad():
            gradient, info = estimator.estimate(theta)
        noise = jnp.asarray(recorded["noise"].pop().numpy())
        x = jnp.asarray(torch.stack(recorded["x"]).numpy())
        y = jnp.asarray(torch.stack(recorded["y"]).numpy().astype("int32"))
        recorded["x"].clear()
        recorded["y"].clear()
        jgradient, state, jinfo = run(jproblem, state, jnp.asarray(theta.numpy()), noise, x, y)
        scale = float(gradient.abs().max())
        gradient_error = max(gradient_error, float(np.abs(np.asarray(jgradient) - gradient.numpy()).max()) / scale)
        loss_error = max(loss_error, float(np.abs(np.asarray(jinfo["losses"]) - info["losses"].numpy()).max()))
    return {"relative_gradient_error": gradient_error, "loss_error": loss_error, "gradient": gradient.tolist()}


def monte_carlo_check(num_particles: int = 1024, truncations: int = 4, seed: int = 0) -> dict:
    """Each framework with its own random numbers: per pair, the mean over ``truncations`` of its
    antithetic estimate (pairs are independent); the difference of the two means over pairs in standard
    errors, per coordinate of θ."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from experiments.benchmarks import pes_jax
    from metaopt.unrolled import PES

    problem = metaopt_problem()
    theta = problem.initial_theta()
    estimator = PES(problem, num_particles, sigma=SIGMA, truncation_length=K, seed=seed)
    pairs = num_particles // 2
    torch_terms = 0.0
    for _ in range(truncations):
        with torch.no_grad():
            _, info = estimator.estimate(theta)
        terms = info["particle_estimates"].numpy()
        torch_terms = torch_terms + (terms[:pairs] + terms[pairs:]) / 2
    jproblem = jax_problem(problem)
    key = jax.random.PRNGKey(seed)
    key, stagger = jax.random.split(key)
    state = pes_jax.init_state(jproblem, num_particles, pes_jax.staggered_steps(stagger, num_particles, HORIZON, K))
    run = pes_jax.jitted(SIGMA, HORIZON, K, BATCH)
    jax_terms = 0.0
    jtheta = jnp.asarray(theta.numpy())
    for _ in range(truncations):
        key, sub = jax.random.split(key)
        _, state, info = run(jproblem, state, jtheta, sub)
        terms = np.asarray(info["particle_estimates"])
        jax_terms = jax_terms + (terms[:pairs] + terms[pairs:]) / 2
    torch_terms, jax_terms = torch_terms / truncations, jax_terms / truncations
    difference = torch_terms.mean(0) - jax_terms.mean(0)
    error = np.sqrt(torch_terms.var(0, ddof=1) / pairs + jax_terms.var(0, ddof=1) / pairs)
    return {"z": (difference / error).tolist(), "metaopt": torch_terms.mean(0).tolist(),
            "jax": jax_terms.mean(0).tolist(), "standard_error": error.tolist()}


# -- timing ---------------------------------------------------------------------------------------------
def _clock():
    return time.perf_counter(), time.process_time()


def _since(start) -> tuple[float, float]:
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


def measure(threads: int, counts=COUNTS, reps: int = 5) -> dict:
    """In this process (XLA's threads already fixed by the environment): per implementation and particle
    count, the first call's seconds (and JAX's compile apart), then the median wall and CPU seconds of an
    outer iteration over ``reps`` rounds that alternate the implementations."""
    import torch

    torch.set_num_threads(threads)
    import jax
    import jax.numpy as jnp

    from experiments.benchmarks import pes_jax
    from metaopt.unrolled import PES

    eager_problem = metaopt_problem()
    theta = eager_problem.initial_theta()
    jproblem = jax_problem(eager_problem)
    jtheta = jnp.asarray(theta.numpy())
    calls, first = {}, {}
    for n in counts:
        # metaopt: the first truncation (eager; compiled: compiling included, a fresh problem per N)
        for name, problem in (("eager", eager_problem), ("compiled", metaopt_problem(compile=True))):
            estimator = PES(problem, n, sigma=SIGMA, truncation_length=K, seed=0)
            start = _clock()
            estimator.estimate(theta)
            first[name, n] = {"first": _since(start)[0]}
            calls[name, n] = (lambda e=estimator: e.estimate(theta))
        # JAX: trace + compile (ahead of time), then the first run
        key = jax.random.PRNGKey(0)
        key, stagger = jax.random.split(key)
        state = pes_jax.init_state(jproblem, n, pes_jax.staggered_steps(stagger, n, HORIZON, K))
        function = pes_jax.jitted(SIGMA, HORIZON, K, BATCH)
        start = _clock()
        compiled = function.lower(jproblem, state, jtheta, key).compile()
        compile_seconds = _since(start)[0]
        start = _clock()
        box = {"state": state, "key": key}

        def jax_call(box=box, compiled=compiled):
            box["key"], sub = jax.random.split(box["key"])
            gradient, box["state"], _ = compiled(jproblem, box["state"], jtheta, sub)
            gradient.block_until_ready()

        jax_call()
        first["jax", n] = {"compile": compile_seconds, "first": _since(start)[0]}
        calls["jax", n] = jax_call
    for call in calls.values():  # one warm-up call each
        call()
    times = {key: [] for key in calls}
    for _ in range(reps):
        for key, call in calls.items():
            start = _clock()
            call()
            times[key].append(_since(start))
    result = {}
    for (name, n), samples in times.items():
        wall = statistics.median(s[0] for s in samples)
        cpu = statistics.median(s[1] for s in samples)
        result[f"{name}/{n}"] = {"wall": wall, "cpu": cpu, "throughput": n * K / wall, "cpu_throughput": n * K / cpu,
                                 **first[name, n]}
    return {"threads": threads, "jax": jax.__version__, "torch": torch.__version__, "results": result,
            "load": os.getloadavg(), "cores": len(os.sched_getaffinity(0))}


def _measure_in_subprocess(threads: int, reps: int, counts) -> dict:
    import tempfile

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if threads == 1:
        env = single_thread_env(env)
    with tempfile.TemporaryDirectory() as folder:
        # a cold inductor cache, as JAX's (no persistent compilation cache by default)
        env["TORCHINDUCTOR_CACHE_DIR"] = folder
        out = Path(folder) / "result.json"
        pin = ["--one-core"] if threads == 1 else []
        subprocess.run([sys.executable, "-m", "experiments.benchmarks.bench_pes_jax", "--threads", str(threads),
                        "--reps", str(reps), "--counts", *map(str, counts), "--output", str(out), *pin],
                       env=env, check=True, cwd=ROOT)
        return json.loads(out.read_text())


def _tables(measured: dict) -> list[dict]:
    threads, results = measured["threads"], measured["results"]
    load = ", ".join(f"{v:.2f}" for v in measured["load"])
    cores = measured["cores"]
    where = ("CPU, pinned to one core, 1 torch thread" if cores == 1 else
             f"CPU, {cores} cores, {threads} torch threads, XLA's default threads")
    rows = []
    for n in sorted({int(k.split("/")[1]) for k in results}):
        base = results[f"jax/{n}"]
        for name, label in (("jax", f"JAX {measured['jax']} (jit + vmap + scan)"), ("eager", "metaopt PES, eager"),
                            ("compiled", "metaopt PES, compile=True")):
            r = results[f"{name}/{n}"]
            ratio = r["throughput"] / base["throughput"]
            target = f"≥ {TARGETS[name]:.1f}×" if name in TARGETS and n >= 256 else ""
            verdict = ("PASS" if ratio >= TARGETS[name] else "FAIL") if target else ""
            cpu_ratio = r["cpu_throughput"] / base["cpu_throughput"]
            rows.append([n, label, f"{r['throughput']:.0f}", f"{ratio:.2f}×", f"{r['cpu_throughput']:.0f}",
                         f"{cpu_ratio:.2f}×", f"{r['cpu'] / r['wall']:.2f}", f"{target} {verdict}".strip()])
    first_rows = []
    for n in sorted({int(k.split("/")[1]) for k in results}):
        jax_first = results[f"jax/{n}"]["compile"] + results[f"jax/{n}"]["first"]
        compiled_first = results[f"compiled/{n}"]["first"]
        first_rows.append([n, f"{results[f'jax/{n}']['compile']:.2f}", f"{jax_first:.2f}",
                           f"{results[f'eager/{n}']['first']:.2f}", f"{compiled_first:.2f}",
                           f"{compiled_first / jax_first:.2f}",
                           "PASS" if compiled_first <= jax_first else "FAIL"])
    return [{
        "title": f"PES against JAX on the same problem: particle-steps / s ({where})",
        "columns": ["particles", "implementation", "particle-steps / s", "ratio vs JAX", "per CPU-second",
                    "ratio vs JAX (CPU time)", "CPU / wall", "target (wall)"],
        "rows": rows,
        "notes": f"digits MLP 64-32-10 tanh, batch {BATCH}, T={HORIZON}, K={K}, σ={SIGMA}, SGD+momentum, θ = (log "
                 "lr_start, log lr_end, logit momentum), meta-loss the training minibatch loss, antithetic pairs; "
                 "one outer iteration = N·K particle-steps; medians of rounds that alternate the three. "
                 f"Load average during the run (1, 5, 15 min): {load}.",
    }, {
        "title": f"PES against JAX: the first outer iteration, seconds ({where})",
        "columns": ["particles", "JAX compile", "JAX compile + first call", "metaopt eager first call",
                    "metaopt compiled first call", "ratio vs JAX", "target ≤ JAX"],
        "rows": first_rows,
        "notes": "JAX: `jit(...).lower(...).compile()`, then the first run. metaopt compiled: the first "
                 "truncation, which compiles the step (a fresh TrainingRun per N, a cold inductor cache).",
    }]


def _check_table() -> dict:
    shared = shared_noise_check()
    mc = monte_carlo_check()
    z = max(abs(v) for v in mc["z"])
    return {
        "title": "PES against JAX: the same estimate",
        "columns": ["check", "result", "target"],
        "rows": [["shared perturbations, minibatches and start (16 particles, 3 truncations, resets inside): "
                  "largest difference of the estimates / largest entry", f"{shared['relative_gradient_error']:.1e}",
                  "≤ 1e-3 " + ("PASS" if shared["relative_gradient_error"] <= 1e-3 else "FAIL")],
                 ["independent random numbers (1024 particles, 4 truncations): largest |difference| of the mean "
                  "estimates in standard errors", f"{z:.2f}", "≤ 4 " + ("PASS" if z <= 4 else "FAIL")]],
        "notes": "metaopt mean estimate " + ", ".join(f"{v:.3f}" for v in mc["metaopt"]) + "; JAX "
                 + ", ".join(f"{v:.3f}" for v in mc["jax"]) + "; standard errors "
                 + ", ".join(f"{v:.3f}" for v in mc["standard_error"]) + ".",
    }


def run(quick: bool = False, devices: tuple[str, ...] = ("cpu", "cuda")) -> list[dict]:
    if "cpu" not in devices:
        return []
    if not jax_available():
        message = ("jax is not installed: PES-against-JAX rows skipped (`pip install \".[bench-jax]\"`, which "
                   "`make bench` installs)")
        print(message, file=sys.stderr)
        return [{"title": "PES against JAX on the same problem", "columns": ["status"], "rows": [[message]],
                 "notes": ""}]
    tables = [_check_table()]
    reps = 2 if quick else 5
    counts = (64, 256) if quick else COUNTS
    import torch

    for threads in sorted({1, torch.get_num_threads()}):
        tables += _tables(_measure_in_subprocess(threads, reps, counts))
    return tables


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one thread count of bench_pes_jax, in this process")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--counts", type=int, nargs="+", default=list(COUNTS))
    parser.add_argument("--output", help="write the measurements here as JSON (default: print the tables)")
    parser.add_argument("--one-core", action="store_true", help="pin this process to one CPU first")
    args = parser.parse_args(argv)
    if args.one_core:  # before jax is imported: XLA sizes its thread pools from the CPUs it may use
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    measured = measure(args.threads, tuple(args.counts), args.reps)
    if args.output:
        Path(args.output).write_text(json.dumps(measured))
    else:
        from experiments.benchmarks.run import format_table

        for table in _tables(measured):
            print(format_table(table))


if __name__ == "__main__":
    main()
