"""APO-LR against a grid of fixed learning rates on digits_mlp and the digits autoencoder.

For SGD and Adam bases: train with every fixed lr of a grid, and with APO-LR started from initial
lrs spanning four to five orders of magnitude; plot the schedules APO learned and the final training
loss against the (initial) lr. ``python -m experiments.apo.lr_schedules`` writes
``lr_schedules.png``, ``lr_robustness.png`` and ``lr_results.md`` here (a few minutes on one core).
"""

from __future__ import annotations

import functools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from experiments.apo.common import HERE, digits_autoencoder, digits_mlp, train  # noqa: E402
from metaopt.optim import APO  # noqa: E402
from metaopt.runner.report import markdown_table  # noqa: E402

TASKS = {"digits_mlp": (digits_mlp, 1500, "kl"), "digits_autoencoder": (digits_autoencoder, 3000, "mse")}
BASES = {
    "SGD": (torch.optim.SGD, [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0], [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]),
    "Adam": (torch.optim.Adam, [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2], [1e-6, 1e-5, 1e-4, 1e-3, 1e-2]),
}
LAMBDA_FSD, META_INTERVAL, META_LR = 0.1, 10, 0.1


def main() -> None:
    torch.set_num_threads(1)
    results = {}
    for task_name, (make_task, steps, divergence) in TASKS.items():
        task = make_task()
        for base_name, (base_cls, grid, initial_lrs) in BASES.items():
            fixed = [train(task, functools.partial(base_cls, lr=lr), steps, f"{lr:g}") for lr in grid]
            apo = [train(task, functools.partial(APO, base=functools.partial(base_cls, lr=lr), mode="lr",
                                                 lambda_fsd=LAMBDA_FSD, meta_interval=META_INTERVAL,
                                                 meta_lr=META_LR, divergence=divergence), steps, f"{lr:g}")
                   for lr in initial_lrs]
            results[task_name, base_name] = (grid, fixed, initial_lrs, apo)
            print(task_name, base_name, "fixed:", [round(r.final["train_loss"], 4) for r in fixed],
                  "APO:", [round(r.final["train_loss"], 4) for r in apo], flush=True)
    _plot_schedules(results)
    _plot_robustness(results)
    _write_table(results)


def _plot_schedules(results) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, ((task_name, base_name), (_, fixed, _, apo)) in zip(axes.flat, results.items()):
        colors = plt.cm.viridis(np.linspace(0, 0.9, len(apo)))
        for run, color in zip(apo, colors):
            ax.plot(run.steps, run.lrs, color=color, label=f"APO from η₀={run.label}")
        best = min(fixed, key=lambda r: r.final["train_loss"])
        ax.axhline(float(best.label), color="k", ls="--", lw=1, label=f"best fixed lr ({best.label})")
        ax.set_yscale("log")
        ax.set_title(f"{task_name}, base {base_name}")
        ax.set_xlabel("step")
        ax.set_ylabel("η learned by APO")
        ax.legend(fontsize=7)
    fig.suptitle("APO-LR: learned learning-rate schedules from initial lrs over 4 orders of magnitude")
    fig.tight_layout()
    fig.savefig(HERE / "lr_schedules.png", dpi=100)
    plt.close(fig)


def _plot_robustness(results) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, ((task_name, base_name), (grid, fixed, initial_lrs, apo)) in zip(axes.flat, results.items()):
        fixed_loss = [min(r.final["train_loss"], 10.0) for r in fixed]
        ax.plot(grid, fixed_loss, "o-", color="tab:gray", label="fixed lr (x = lr)")
        ax.plot(initial_lrs, [r.final["train_loss"] for r in apo], "s-", color="tab:red",
                label="APO-LR (x = initial lr)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{task_name}, base {base_name}")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final training loss (full train split)")
        ax.legend(fontsize=8)
    fig.suptitle("Robustness to the initial learning rate (diverged fixed-lr runs clipped at 10)")
    fig.tight_layout()
    fig.savefig(HERE / "lr_robustness.png", dpi=100)
    plt.close(fig)


def _write_table(results) -> None:
    rows = []
    for (task_name, base_name), (_, fixed, initial_lrs, apo) in results.items():
        best = min(fixed, key=lambda r: r.final["train_loss"])
        apo_losses = [r.final["train_loss"] for r in apo]
        apo_lrs = [r.lrs[-1] for r in apo]
        fixed_beaten = sum(r.final["train_loss"] > np.median(apo_losses) for r in fixed)
        rows.append([task_name, base_name, best.label, f"{best.final['train_loss']:.4f}",
                     f"{np.median(apo_losses):.4f} [{min(apo_losses):.4f}, {max(apo_losses):.4f}]",
                     f"{min(initial_lrs):g}–{max(initial_lrs):g}", f"{min(apo_lrs):.3g}–{max(apo_lrs):.3g}",
                     f"{fixed_beaten}/{len(fixed)}", f"{np.median([r.seconds for r in apo]):.1f} / "
                     f"{np.median([r.seconds for r in fixed]):.1f}"])
    columns = ["task", "base", "best fixed lr", "its train loss", "APO train loss: median [min, max]",
               "APO initial lrs", "APO final η", "fixed lrs worse than APO's median", "seconds APO / fixed"]
    text = (f"APO-LR: λ_FSD={LAMBDA_FSD}, λ_WSD=0, meta_interval={META_INTERVAL}, meta-optimizer Adam "
            f"(lr {META_LR}); steps: {', '.join(f'{k} {v[1]}' for k, v in TASKS.items())}, batch 64, "
            "seed 0.\n\n"
            + markdown_table(columns, rows))
    (HERE / "lr_results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
