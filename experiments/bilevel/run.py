"""Warm versus cold start on digits: dataset distillation (1 and 10 images per class), per-parameter
L2 decay and a learned augmentation network, with each hypergradient method (Vicol et al., 2022,
Table 2 and §5).

    python -m experiments.bilevel.run            # ~6 minutes on one core

Writes results.md, distilled.png and outer_curves.png into this folder.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from metaopt.bilevel import ImplicitCG, ImplicitIdentity, ImplicitNeumann, TruncatedUnroll, Unroll  # noqa: E402
from metaopt.outer import BilevelLoop  # noqa: E402
from metaopt.runner.report import markdown_table  # noqa: E402
from metaopt.tasks import MLP, DatasetDistillation, LearnedAugmentation, PerParameterL2, SupervisedTask, data  # noqa: E402

HERE = Path(__file__).resolve().parent
INNER_LR = 0.5
COLD_INNER_STEPS = 50

METHODS = {
    "unroll": Unroll,
    "truncated_unroll(10)": lambda: TruncatedUnroll(10),
    "ift_cg(20)": lambda: ImplicitCG(20, least_squares=True),
    "ift_neumann(20, 0.5)": lambda: ImplicitNeumann(20, 0.5),
    "ift_identity": ImplicitIdentity,
}


def digits(hidden=()):
    return SupervisedTask(data.load_digits(), functools.partial(MLP, hidden_sizes=hidden, activation="tanh"))


def run(problem, mode, method, outer_steps, inner_steps, outer_lr, retrain_steps, inner_lr=INNER_LR):
    loop = BilevelLoop(problem, optimizer=functools.partial(torch.optim.SGD, lr=inner_lr), mode=mode,
                       hypergradient=method, steps=max(outer_steps, 1), inner_steps=inner_steps,
                       outer_optimizer=functools.partial(torch.optim.Adam, lr=outer_lr),
                       retrain_steps=retrain_steps)
    curve = [loop.step()["outer_loss"] for _ in range(outer_steps)]
    return loop, curve, loop.summary()


def distillation(rows, curves, images):
    task = digits()
    for per_class in (1, 10):
        settings = [("warm_start", name, 300, 5) for name in ("unroll", "ift_cg(20)")]
        settings += [("cold_start", name, 100, COLD_INNER_STEPS) for name in METHODS]
        for mode, name, outer_steps, inner_steps in settings:
            torch.manual_seed(0)
            problem = DatasetDistillation(task, examples_per_class=per_class)
            began = time.perf_counter()
            loop, curve, summary = run(problem, mode, METHODS[name](), outer_steps, inner_steps,
                                       0.05 if mode == "warm_start" else 0.1, COLD_INNER_STEPS)
            rows.append(["distill", per_class, mode, name, summary["outer_loss"], summary["test_accuracy"],
                         summary["retrain_outer_loss"], summary["retrain_test_accuracy"],
                         time.perf_counter() - began])
            curves[(per_class, mode, name)] = curve
            if per_class == 1 and name == "unroll":
                images[mode] = loop.outer_params[0].detach().clone()
            print(rows[-1])


def hyperparameter_tuning(rows, curves, key, make_problem, outer_lr, inner_lr, cold_inner_steps):
    """Warm and cold start on a low-dimensional outer problem; the first row re-trains on λ₀ (no tuning)."""
    settings = [("none", "-", 0, 0), ("warm_start", "unroll", 200, 5), ("warm_start", "ift_cg(20)", 200, 5),
                ("cold_start", "ift_cg(20)", 30, cold_inner_steps),
                ("cold_start", "truncated_unroll(10)", 30, cold_inner_steps),
                ("cold_start", "ift_identity", 30, cold_inner_steps)]
    for mode, name, outer_steps, inner_steps in settings:
        torch.manual_seed(0)
        problem = make_problem()
        began = time.perf_counter()
        method = METHODS[name]() if name in METHODS else None
        _, curve, summary = run(problem, "cold_start" if mode == "none" else mode, method, outer_steps,
                                max(inner_steps, 1), outer_lr, 1000, inner_lr=inner_lr)
        if mode == "none":
            summary["outer_loss"] = summary["test_accuracy"] = float("nan")
        rows.append([key, "-", mode, name, summary["outer_loss"], summary["test_accuracy"],
                     summary["retrain_outer_loss"], summary["retrain_test_accuracy"],
                     time.perf_counter() - began])
        if outer_steps:
            curves[(key, mode, name)] = curve
        print(rows[-1])


def main() -> None:
    torch.set_num_threads(1)
    rows, curves, images = [], {}, {}
    distillation(rows, curves, images)
    mlp, linear = digits(hidden=(32,)), digits()
    hyperparameter_tuning(rows, curves, "l2", lambda: PerParameterL2(mlp, initial_decay=1e-3), 0.03, 0.2, 200)
    hyperparameter_tuning(rows, curves, "augment", lambda: LearnedAugmentation(linear), 0.01, 0.5, 100)

    header = ["problem", "per class", "mode", "hypergradient", "outer loss (own w)", "test acc (own w)",
              "outer loss (retrained)", "test acc (retrained)", "seconds"]
    (HERE / "results.md").write_text(markdown_table(header, rows, "{:.3f}"))

    fig, axes = plt.subplots(2, 10, figsize=(10, 2.4))
    for r, mode in enumerate(("warm_start", "cold_start")):
        for c in range(10):
            axes[r, c].imshow(images[mode][c].view(8, 8).numpy(), cmap="gray")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(mode.replace("_start", ""), rotation=0, labelpad=18)
    fig.suptitle("distilled digits, 1 per class (unroll)")
    fig.tight_layout()
    fig.savefig(HERE / "distilled.png", dpi=100)
    plt.close(fig)

    titles = {1: "distillation, 1 per class", 10: "distillation, 10 per class",
              "l2": "per-parameter L2 decay", "augment": "learned augmentation"}
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.6))
    for ax, key in zip(axes, titles):
        for (k, mode, name), curve in curves.items():
            if k == key:
                ax.plot(curve, label=f"{mode.replace('_start', '')} {name}", lw=1)
        ax.set_title(titles[key])
        ax.set_xlabel("outer step")
        ax.set_ylabel("outer loss (own inner weights)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "outer_curves.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
