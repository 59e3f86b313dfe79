"""APO-Precond against Adam and SGD with momentum on the digits autoencoder, in float32 and bfloat16.

Adam and SGD+momentum use the best learning rate of a small grid (chosen in float32); APO-Precond
learns per-layer Kronecker factors ``ΔW = −exp(c)·L Lᵀ D R Rᵀ`` (``D`` the base's step) from
``P₀ = lr·I`` with the base's usual lr, with no tuning. bfloat16 runs keep the model, data,
gradients and base state in bfloat16; APO keeps its factors in float32 (no inverse is ever taken).
``python -m experiments.apo.precond`` writes ``precond.png`` and ``precond_results.md``.
"""

from __future__ import annotations

import functools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from experiments.apo.common import HERE, digits_autoencoder, train  # noqa: E402
from metaopt.optim import APO  # noqa: E402
from metaopt.runner.report import markdown_table  # noqa: E402

STEPS = 3000
GRIDS = {
    "SGD+momentum": (functools.partial(torch.optim.SGD, momentum=0.9), [0.03, 0.1, 0.3, 1.0]),
    "Adam": (torch.optim.Adam, [1e-3, 3e-3, 1e-2, 3e-2]),
}
APO_PRECOND = {  # untuned: P₀ = (the base's usual lr)·I, λ_FSD = 1, meta_interval 10, meta-lr 0.1
    "APO-Precond (SGD base, P₀ = 0.1·I)": functools.partial(torch.optim.SGD, lr=0.1),
    "APO-Precond (SGD+momentum base, P₀ = 0.03·I)": functools.partial(torch.optim.SGD, lr=0.03, momentum=0.9),
    "APO-Precond (Adam base, P₀ = 0.001·I)": functools.partial(torch.optim.Adam, lr=1e-3),
}


def main() -> None:
    torch.set_num_threads(1)
    task = digits_autoencoder()
    runs = {}
    for name, (base, grid) in GRIDS.items():
        tried = [train(task, functools.partial(base, lr=lr), STEPS, f"{lr:g}") for lr in grid]
        best_lr = float(min(tried, key=lambda r: r.final["train_loss"]).label)
        print(name, [(r.label, round(r.final["train_loss"], 5)) for r in tried], flush=True)
        for dtype in (torch.float32, torch.bfloat16):
            label = f"{name} (lr {best_lr:g})"
            runs[name, dtype] = train(task, functools.partial(base, lr=best_lr), STEPS, label, dtype=dtype)
    for label, base in APO_PRECOND.items():
        apo = functools.partial(APO, base=base, mode="precond", lambda_fsd=1.0, meta_interval=10, meta_lr=0.1,
                                divergence="mse")
        for dtype in (torch.float32, torch.bfloat16):
            runs[label, dtype] = train(task, apo, STEPS, label, dtype=dtype)
            print(label, dtype, runs[label, dtype].final, flush=True)
    _plot(runs)
    _write_table(runs)


def _smooth(values: list[float], width: int = 10) -> np.ndarray:
    values = np.asarray(values)
    return np.convolve(values, np.ones(width) / width, mode="valid") if len(values) > width else values


def _plot(runs) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8), sharey=True)
    colors = {"SGD+momentum": "tab:gray", "Adam": "tab:blue", "APO-Precond (SGD base": "tab:orange",
              "APO-Precond (SGD+momentum": "tab:red", "APO-Precond (Adam": "tab:purple"}
    for (name, dtype), run in runs.items():
        ax = axes[0] if dtype == torch.float32 else axes[1]
        color = next(c for prefix, c in colors.items() if name.startswith(prefix))
        smoothed = _smooth(run.losses)
        style = "-" if name.startswith("APO") else ":"
        ax.plot(run.steps[len(run.steps) - len(smoothed):], smoothed, style, color=color, label=run.label)
    for ax, title in zip(axes, ("float32", "bfloat16 (model, data, gradients; APO's factors float32)")):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training batch loss (smoothed)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.suptitle("Digits autoencoder 64-64-32-8-32-64-64 (tanh): APO-Precond vs tuned Adam and SGD+momentum")
    fig.tight_layout()
    fig.savefig(HERE / "precond.png", dpi=100)
    plt.close(fig)


def _write_table(runs) -> None:
    rows = []
    for (_, dtype), run in runs.items():
        rows.append([run.label, str(dtype).split(".")[-1],
                     "diverged" if run.diverged else f"{run.final['train_loss']:.5f}",
                     "diverged" if run.diverged else f"{run.final['test_loss']:.5f}", f"{run.seconds:.1f}"])
    text = (f"Digits autoencoder, {STEPS} steps of batch 64, seed 0; final losses on the full splits.\n\n"
            + markdown_table(["optimizer", "dtype", "train loss", "test loss", "seconds"], rows))
    (HERE / "precond_results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
