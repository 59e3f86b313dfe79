"""APO-Precond against Adam and SGD with momentum on the digits autoencoder, in float32 and bfloat16.

Adam and SGD+momentum use the best learning rate of a small grid (chosen in float32); APO-Precond
learns per-layer Kronecker factors ``ΔW = −exp(c)·L Lᵀ ∇W R Rᵀ`` from ``P₀ = 0.1·I`` with no
tuning. bfloat16 runs keep the model, data, gradients and APO's factors in bfloat16 (no inverse is
ever taken). ``python -m experiments.apo.precond`` writes ``precond.png`` and ``precond_results.md``.
"""

from __future__ import annotations

import functools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from experiments.apo.common import HERE, digits_autoencoder, markdown_table, train  # noqa: E402
from metaopt.optim import APO  # noqa: E402

STEPS = 3000
GRIDS = {
    "SGD+momentum": (functools.partial(torch.optim.SGD, momentum=0.9), [0.03, 0.1, 0.3, 1.0]),
    "Adam": (torch.optim.Adam, [1e-3, 3e-3, 1e-2, 3e-2]),
}
APO_PRECOND = functools.partial(APO, base=functools.partial(torch.optim.SGD, lr=0.1), mode="precond",
                                lambda_fsd=1.0, meta_interval=10, meta_lr=0.1, divergence="mse")


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
    for dtype in (torch.float32, torch.bfloat16):
        runs["APO-Precond", dtype] = train(task, APO_PRECOND, STEPS, "APO-Precond (SGD base, P₀ = 0.1·I)",
                                           dtype=dtype)
    _plot(runs)
    _write_table(runs)


def _smooth(values: list[float], width: int = 10) -> np.ndarray:
    values = np.asarray(values)
    return np.convolve(values, np.ones(width) / width, mode="valid") if len(values) > width else values


def _plot(runs) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = {"SGD+momentum": "tab:gray", "Adam": "tab:blue", "APO-Precond": "tab:red"}
    for (name, dtype), run in runs.items():
        style = "-" if dtype == torch.float32 else "--"
        ax = axes[0] if dtype == torch.float32 else axes[1]
        for target in (ax, axes[2]):
            if target is axes[2] and name != "APO-Precond":
                continue
            smoothed = _smooth(run.losses)
            target.plot(run.steps[len(run.steps) - len(smoothed):], smoothed, style, color=colors[name],
                        label=f"{run.label}, {str(dtype).split('.')[-1]}")
    for ax, title in zip(axes, ("float32", "bfloat16", "APO-Precond: float32 vs bfloat16")):
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
            + markdown_table(["optimizer", "dtype", "train loss", "test loss", "seconds"], rows) + "\n")
    (HERE / "precond_results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
