"""The chaotic 2-D learning-rate schedule task: the meta-loss surface over θ and each estimator's path on it.

python -m experiments.unrolled.toy2d_schedule   (about a minute)
"""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import torch

from experiments.unrolled._common import HERE, optimize, write
from metaopt.runner.report import markdown_table
from metaopt.tasks import Toy2DSchedule
from metaopt.unrolled import PES, TBPTT, ESSingle, FullES, TruncatedES

GRID = 150
STEPS = 2000
LIMITS = (-6.0, 3.0)


def main() -> None:
    torch.set_num_threads(1)
    problem = Toy2DSchedule()
    axis = torch.linspace(*LIMITS, GRID)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    surface = problem.meta_loss(grid).reshape(GRID, GRID)
    best = grid[surface.argmin()]

    def adam(params):
        return torch.optim.Adam(params, lr=0.03)

    K, N, sigma = 10, 100, 0.1
    runs = {
        "TBPTT (K=10)": (TBPTT(problem, 1, truncation_length=K), STEPS),
        "truncated ES (K=10)": (TruncatedES(problem, N, sigma=sigma, truncation_length=K, seed=0), STEPS),
        "PES (K=10)": (PES(problem, N, sigma=sigma, truncation_length=K, seed=0), STEPS),
        "ES-Single (K=10)": (ESSingle(problem, N, sigma=sigma, truncation_length=K, seed=0), STEPS),
        # One full-ES step costs T/K truncations: the same inner-step budget.
        "full ES (T=100)": (FullES(problem, N, sigma=sigma, seed=0), STEPS * K // problem.horizon),
    }
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    mesh = ax.pcolormesh(axis, axis, surface.log10(), cmap="viridis", shading="auto")
    fig.colorbar(mesh, ax=ax, label="log10 meta-loss (sum of the 100 inner losses)")
    rows = []
    for label, (estimator, steps) in runs.items():
        began = time.perf_counter()
        trajectory, _ = optimize(estimator, problem.initial_theta(), steps, adam)
        seconds = time.perf_counter() - began
        ax.plot(trajectory[:, 0], trajectory[:, 1], label=label, lw=1.5)
        final = trajectory[-1]
        rows.append([label, steps, f"({final[0]:.2f}, {final[1]:.2f})",
                     float(problem.meta_loss(final[None])[0]), seconds])
    ax.plot(*problem.initial_theta(), "wo", ms=6, label="start θ₀")
    ax.plot(*best, "r*", ms=12, label="grid optimum")
    ax.set_xlabel("θ₀ (log lr at t=0)")
    ax.set_ylabel("θ₁ (log lr at t=T)")
    ax.set_xlim(*LIMITS)
    ax.set_ylim(*LIMITS)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Toy 2-D schedule: meta-loss and outer trajectories (Adam 0.03)")
    fig.tight_layout()
    fig.savefig(HERE / "toy2d_schedule.png", dpi=100)
    plt.close(fig)
    rows.append(["grid optimum", "", f"({best[0]:.2f}, {best[1]:.2f})", float(surface.min()), ""])
    start = float(problem.meta_loss(problem.initial_theta()[None])[0])
    rows.append(["start", "", "(-4.00, -4.00)", start, ""])
    write("toy2d_schedule.md", markdown_table(["estimator", "outer steps", "final θ", "meta-loss", "seconds"],
                                              rows))


if __name__ == "__main__":
    main()
