"""Checks of the CUDA code paths on a machine with a GPU (CI has none).

    python -m experiments.benchmarks.cuda_check

1. ComplexMomentum / ComplexAdam on CUDA: per-tensor, multi-tensor and compiled paths agree with the
   CPU trajectory; the functional cores agree under vmap.
2. The runner end to end on ``task.device=cuda`` for every kind of loop (plain, game-free optimizers,
   APO, PES, bilevel), each summary finite.
Exits non-zero on a failure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.func import vmap

from metaopt.optim import ComplexAdam, ComplexMomentum
from metaopt.optim.functional import FUNCTIONAL

REPO = Path(__file__).resolve().parents[2]


def _trajectory(cls, device, steps=50, **kwargs):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=gen).to(device).requires_grad_() for shape in
              [(257, 129), (129,), (64, 3, 3, 3), (10,)]]
    opt = cls(params, **kwargs)
    for step in range(steps):
        for i, p in enumerate(params):
            p.grad = torch.sin(p.detach() * (i + 1) + step)
        opt.step()
    return [p.detach().cpu() for p in params]


def check_optimizers(device: str) -> list[str]:
    failures = []
    for cls, kwargs in ((ComplexMomentum, dict(lr=0.05, momentum=0.9, angle=0.4)),
                        (ComplexAdam, dict(lr=0.01, angle=0.3))):
        reference = _trajectory(cls, "cpu", foreach=False, **kwargs)
        for variant in (dict(foreach=False), dict(foreach=True), dict(fused=True)):
            start = time.perf_counter()
            got = _trajectory(cls, device, **variant, **kwargs)
            error = max(float((a - b).abs().max()) for a, b in zip(got, reference))
            print(f"{cls.__name__} {device} {variant}: max |Δ| vs CPU = {error:.2e} "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)
            if error >= 1e-4:
                failures.append(f"{cls.__name__} {variant} on {device} differs from CPU by {error:.2e}")
    for name in ("sgd", "adam", "complex_momentum", "complex_adam"):
        init, update = FUNCTIONAL[name]
        params = [torch.randn(33, 17, device=device), torch.randn(17, device=device)]
        lrs = torch.tensor([0.01, 0.05, 0.1], device=device)

        def run(lr, params=params, init=init, update=update):
            ps, state = list(params), init(params)
            for _ in range(5):
                ps, state = update(ps, [torch.cos(p) for p in ps], state, lr=lr)
            return ps

        batched = vmap(run)(lrs)
        for i in range(3):
            for b, l in zip(batched, run(lrs[i])):
                torch.testing.assert_close(b[i], l, rtol=1e-5, atol=1e-6)
        print(f"functional {name} {device}: vmap == loop", flush=True)
    return failures


JOBS = {
    "plain, complex_adam": ["optimizer=complex_adam", "outer.steps=300"],
    "plain, complex_momentum fused": ["optimizer=complex_momentum", "optimizer.fused=true", "outer.steps=300"],
    "apo_lr": ["optimizer=apo_lr", "outer.steps=300"],
    "apo_precond": ["optimizer=apo_precond", "outer.steps=300"],
    "pes": ["outer=pes", "optimizer=sgd", "outer.steps=30", "outer.problem.horizon=100", "outer.eval_every=10"],
    "es_single": ["outer=es_single", "optimizer=sgd", "outer.steps=30", "outer.problem.horizon=100"],
    "bilevel_cold ift_cg": ["task=digits_distill", "task.task.device=DEVICE", "outer=bilevel_cold",
                            "optimizer=sgd", "optimizer.lr=0.5", "outer.steps=10", "outer.inner_steps=50"],
    "bilevel_warm unroll": ["task=digits_distill", "task.task.device=DEVICE", "outer=bilevel_warm",
                            "outer/hypergradient=unroll", "optimizer=sgd", "optimizer.lr=0.5"],
}


def check_runner(device: str) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    for name, overrides in JOBS.items():
        overrides = [o.replace("DEVICE", device) for o in overrides]
        if not any(o.startswith("task=") for o in overrides):
            overrides = [f"task.device={device}", *overrides]
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "metaopt.run", "logger=none", "progress=false",
                                     "checkpoint_every=0", f"hydra.run.dir={folder}", *overrides],
                                    cwd=REPO, env=env, capture_output=True, text=True)
            if result.returncode != 0:
                print(result.stdout[-3000:], result.stderr[-3000:])
                raise SystemExit(f"runner job {name!r} failed on {device}")
            summary = json.loads((Path(folder) / "summary.json").read_text())
        shown = {k: v for k, v in summary.items() if k in ("val_loss", "val_accuracy", "outer_loss",
                                                             "meta_objective", "test_accuracy")}
        bad = [k for k, v in summary.items() if isinstance(v, float) and not math.isfinite(v)]
        assert not bad, f"{name}: non-finite summary values {bad}"
        print(f"runner {name} on {device}: {shown} ({time.perf_counter() - start:.1f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.device == "cuda":
        assert torch.cuda.is_available(), "no CUDA device"
        print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    failures = check_optimizers(args.device)
    check_runner(args.device)
    if failures:
        raise SystemExit("cuda_check failed:\n" + "\n".join(failures))
    print("cuda_check: all passed")


if __name__ == "__main__":
    main()
