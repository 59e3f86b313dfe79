"""Influence balancing with the PES paper's settings: every estimator's θ and loss over outer steps.

python -m experiments.unrolled.influence_balancing   (about 10 s)
"""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import torch

from experiments.unrolled._common import HERE, optimize, write
from metaopt.runner.report import markdown_table
from metaopt.tasks import InfluenceBalancing
from metaopt.unrolled import PES, TBPTT, ESSingle, TruncatedES

STEPS = 3000


def main() -> None:
    torch.set_num_threads(1)
    problem = InfluenceBalancing()
    runs = {
        "PES (K=1)": PES(problem, 1000, sigma=0.1, truncation_length=1, seed=0),
        "ES-Single (K=1)": ESSingle(problem, 1000, sigma=0.1, truncation_length=1, seed=0),
        "truncated ES (K=1)": TruncatedES(problem, 1000, sigma=0.1, truncation_length=1, seed=0),
        "TBPTT (K=1)": TBPTT(problem, 1, truncation_length=1),
        "TBPTT (K=100)": TBPTT(problem, 1, truncation_length=100),
    }
    fig, (ax_theta, ax_loss) = plt.subplots(1, 2, figsize=(11, 3.8))
    rows = []
    for label, estimator in runs.items():
        began = time.perf_counter()
        trajectory, losses = optimize(estimator, problem.initial_theta(), STEPS,
                                      lambda p: torch.optim.SGD(p, lr=1e-4))
        seconds = time.perf_counter() - began
        theta = trajectory[:, 0]
        ax_theta.plot(theta, label=label)
        ax_loss.plot(torch.tensor(losses).clamp_min(1e-8), label=label)
        reached = (theta + 1 / 6).abs() < 1e-3
        first = int(reached.nonzero()[0]) if reached.any() else None
        rows.append([label, float(theta[-1]), abs(float(theta[-1]) + 1 / 6),
                     first if first is not None else "never", losses[0], losses[-1], seconds])
    ax_theta.axhline(problem.optimum, color="k", ls="--", lw=0.8, label="θ* = −1/6")
    ax_theta.set_ylim(-0.5, 2.0)
    ax_theta.set_xlabel("outer step")
    ax_theta.set_title("θ (outer SGD, lr 1e-4)")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("outer step")
    ax_loss.set_title("unroll loss ½(s[0]−1)²")
    for ax in (ax_theta, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Influence balancing: N=1000, σ=0.1, 23-dim state")
    fig.tight_layout()
    fig.savefig(HERE / "influence_balancing.png", dpi=100)
    plt.close(fig)
    write("influence_balancing.md", markdown_table(
        ["estimator", "final θ", "distance to θ*", "first step within 1e-3 of θ*", "first loss", "final loss",
         "seconds"], rows))


if __name__ == "__main__":
    main()
