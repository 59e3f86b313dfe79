"""Meta-training curves of TBPTT, truncated ES, PES and ES-Single on the same budget (particle-steps).

The same learned optimizer (hidden 32, Adam-like start), task distribution, horizon (100 steps),
truncation length (10), particle count (16) and outer optimizer (Adam, lr 3e-3) for each estimator; every
``eval_every`` outer steps the current weights train every training task once for a whole run
(``LearnedOptimizerTraining.evaluate``: mean normalised training loss). The short-horizon bias of the
truncated methods (TBPTT, truncated ES: they ignore the truncation's effect on later ones) should show
against the unbiased PES and ES-Single.

    python -m experiments.learned_optimizers.compare_estimators [--steps 300] [--form adam]

``--form``: the learned optimizer's form (``adam``, as shipped, writes ``estimators_adam.*``; ``direction``,
the first design, ``estimators.*``).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch

from metaopt.optim.functional.learned import LEGACY_TIMESCALES
from metaopt.tasks.lopt import LearnedOptimizerTraining
from metaopt.unrolled import PES, TBPTT, ESSingle, TruncatedES

HERE = Path(__file__).resolve().parent
PARTICLES, TRUNCATION, HORIZON = 16, 10, 100
ESTIMATORS = {
    "TBPTT": functools.partial(TBPTT, num_particles=PARTICLES, truncation_length=TRUNCATION),
    "truncated ES": functools.partial(TruncatedES, num_particles=PARTICLES, truncation_length=TRUNCATION, sigma=0.03),
    "PES": functools.partial(PES, num_particles=PARTICLES, truncation_length=TRUNCATION, sigma=0.03),
    "ES-Single": functools.partial(ESSingle, num_particles=PARTICLES, truncation_length=TRUNCATION, sigma=0.03),
}


def meta_train(name: str, steps: int, eval_every: int, seed: int = 0, form: str = "adam") -> dict:
    torch.manual_seed(seed)
    # The time features of the design these results were recorded with (the second; horizon 100 is short).
    problem = LearnedOptimizerTraining(horizon=HORIZON, form=form, timescales=LEGACY_TIMESCALES)
    estimator = ESTIMATORS[name](problem, seed=seed)
    theta = torch.nn.Parameter(problem.initial_theta())
    optimizer = torch.optim.Adam([theta], lr=3e-3)
    curve, started = [], time.perf_counter()
    for step in range(steps + 1):
        if step % eval_every == 0:
            value = problem.evaluate(theta.detach())["meta_objective"]
            curve.append((step * PARTICLES * TRUNCATION, value))
            print(f"{name} step {step}: {value:.4f} [{time.perf_counter() - started:.0f} s]", flush=True)
        if step == steps:
            break
        gradient, _ = estimator.estimate(theta.detach())
        if torch.isfinite(gradient).all():
            optimizer.zero_grad()
            theta.grad = gradient.clamp(-1e3, 1e3)
            optimizer.step()
    return {"curve": curve, "seconds": time.perf_counter() - started}


def main(steps: int = 300, eval_every: int = 50, out: Path = HERE, form: str = "adam") -> dict:
    torch.set_num_threads(1)
    results = {name: meta_train(name, steps, eval_every, form=form) for name in ESTIMATORS}
    stem = "estimators" if form == "direction" else f"estimators_{form}"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, result in results.items():
        xs, ys = zip(*result["curve"])
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    ax.set_xlabel("particle-steps spent")
    ax.set_ylabel("meta-objective (mean normalised loss)")
    ax.set_yscale("log")
    ax.set_title(f"Meta-training a learned optimizer, form {form} (horizon {HORIZON}, K={TRUNCATION}, N={PARTICLES})",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=110)
    lines = ["| estimator | start | " + " | ".join(f"{x} p-steps" for x, _ in results["PES"]["curve"][1:]) +
             " | seconds |", "|---" * (len(results["PES"]["curve"]) + 2) + "|"]
    for name, result in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{y:.4f}" for _, y in result["curve"]) +
                     f" | {result['seconds']:.0f} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--form", choices=("adam", "direction"), default="adam")
    args = parser.parse_args()
    main(args.steps, args.eval_every, form=args.form)
