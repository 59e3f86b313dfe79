"""PES and ES-Single tune SGD's learning-rate schedule and momentum on digits_mlp, against a grid.

The inner problem is a 200-step SGD training run of the digits MLP (batch 64); the outer parameters are
``log lr_start``, ``log lr_end`` (linear schedule) and ``logit momentum`` (plus a per-layer variant),
starting from a poor setting (lr 0.003, momentum 0.1); the meta-objective is the mean validation
minibatch loss over the run. The grid is 5 constant learning rates × 3 momenta, all trained at once.

python -m experiments.unrolled.digits_schedule   (about 4 minutes on one core)
"""

from __future__ import annotations

import itertools
import time

import matplotlib.pyplot as plt
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from experiments.unrolled._common import HERE, write
from metaopt.runner.report import markdown_table
from metaopt.tasks import TrainingRun
from metaopt.unrolled import PES, ESSingle

STEPS, EVAL_EVERY = 600, 50
GRID = {"lr": [0.01, 0.03, 0.1, 0.3, 1.0], "momentum": [0.0, 0.5, 0.9]}
START = {"lr": 0.003, "momentum": 0.1}


def tune(problem: TrainingRun, estimator_class, label: str) -> tuple[torch.Tensor, list, float]:
    estimator = estimator_class(problem, 32, sigma=0.3, truncation_length=10, seed=0)
    theta = torch.nn.Parameter(problem.initial_theta())
    outer = torch.optim.Adam([theta], lr=0.05)
    curve = [(0, problem.evaluate(theta.detach()))]
    began, evaluating = time.perf_counter(), 0.0
    for step in range(1, STEPS + 1):
        gradient, _ = estimator.estimate(theta.detach())
        outer.zero_grad()
        theta.grad = gradient
        outer.step()
        if step % EVAL_EVERY == 0:
            t = time.perf_counter()
            curve.append((step, problem.evaluate(theta.detach())))
            evaluating += time.perf_counter() - t
    seconds = time.perf_counter() - began - evaluating
    print(f"{label}: {seconds:.1f} s, {problem.describe(theta.detach())}")
    return theta.detach(), curve, seconds


def main() -> None:
    torch.set_num_threads(1)
    task = instantiate(OmegaConf.load(HERE.parents[1] / "metaopt/conf/task/digits_mlp.yaml"))
    problem = TrainingRun(task, "sgd", tuned=START, schedule="linear", horizon=200)
    layered = TrainingRun(task, "sgd", tuned=START, schedule="linear", per_layer=["lr"], horizon=200)

    settings = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    grid = problem.evaluate_many(torch.stack([problem.theta_for(**s) for s in settings]))
    best = min(range(len(settings)), key=lambda i: grid[i]["meta_objective"])
    start = problem.evaluate(problem.initial_theta())

    rows = [["start", ", ".join(f"{k}={v}" for k, v in START.items()), start["meta_objective"],
             start["val_loss"], start["val_accuracy"], start["test_accuracy"], ""]]
    rows.append(["grid best (of 15)", ", ".join(f"{k}={v}" for k, v in settings[best].items()),
                 grid[best]["meta_objective"], grid[best]["val_loss"], grid[best]["val_accuracy"],
                 grid[best]["test_accuracy"], ""])
    fig, (ax_meta, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    for label, estimator_class, run_problem in (("PES", PES, problem), ("ES-Single", ESSingle, problem),
                                                ("ES-Single, per-layer lr", ESSingle, layered)):
        theta, curve, seconds = tune(run_problem, estimator_class, label)
        final = curve[-1][1]
        setting = ", ".join(f"{k}={v:.3g}" for k, v in run_problem.describe(theta).items())
        rows.append([label, setting, final["meta_objective"], final["val_loss"], final["val_accuracy"],
                     final["test_accuracy"], seconds])
        steps = [s for s, _ in curve]
        ax_meta.plot(steps, [m["meta_objective"] for _, m in curve], marker=".", label=label)
        ax_acc.plot(steps, [m["val_accuracy"] for _, m in curve], marker=".", label=label)
    for ax, key in ((ax_meta, "meta_objective"), (ax_acc, "val_accuracy")):
        ax.axhline(grid[best][key], color="k", ls="--", lw=0.8, label="best of the grid")
        ax.set_xlabel("outer step (32 particles × 10 inner steps each)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax_meta.set_yscale("log")
    ax_meta.set_title("meta-objective: mean val loss over a 200-step run")
    ax_acc.set_title("final validation accuracy of that run")
    fig.tight_layout()
    fig.savefig(HERE / "digits_schedule.png", dpi=100)
    plt.close(fig)
    write("digits_schedule.md", markdown_table(
        ["", "setting", "meta-objective", "val loss", "val accuracy", "test accuracy", "tuning seconds"],
        rows))


if __name__ == "__main__":
    main()
