"""Variance of PES and ES-Single estimates against the unroll index on a long horizon (θ fixed).

Influence balancing (no resets) unrolled in truncations of K=10 steps, 100 truncations: each antithetic
pair gives an independent estimate, so the spread over 2000 pairs at each unroll index measures the
variance of a one-pair estimate, ``E‖ĝ − E ĝ‖²``. ES-Single's stays flat; PES's grows with the number of
unrolls, because its accumulator ``ξ_τ`` sums τ perturbations (Vicol et al., 2023).

python -m experiments.unrolled.variance   (a few seconds)
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from experiments.unrolled._common import HERE, write
from metaopt.runner.report import markdown_table
from metaopt.tasks import InfluenceBalancing
from metaopt.unrolled import PES, ESSingle

PAIRS, K, UNROLLS, SIGMA = 2000, 10, 100, 0.01


def pair_variances(estimator, theta: torch.Tensor) -> list[float]:
    variances = []
    for _ in range(UNROLLS):
        _, info = estimator.estimate(theta)
        rows = info["particle_estimates"]
        pairs = 0.5 * (rows[:PAIRS] + rows[PAIRS:])
        variances.append(float(((pairs - pairs.mean(0)) ** 2).sum(1).mean()))
    return variances


def main() -> None:
    torch.set_num_threads(1)
    problem = InfluenceBalancing()
    theta = torch.tensor([problem.optimum + 0.1])
    results = {
        label: pair_variances(cls(problem, 2 * PAIRS, sigma=SIGMA, truncation_length=K, seed=0), theta)
        for label, cls in (("PES", PES), ("ES-Single", ESSingle))
    }
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, variances in results.items():
        ax.plot(range(1, UNROLLS + 1), variances, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("unroll index τ")
    ax.set_ylabel("variance of a one-pair estimate")
    ax.set_title(f"Influence balancing, K={K}, σ={SIGMA}, θ fixed")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "variance.png", dpi=100)
    plt.close(fig)
    rows = [[label, v[0], v[9], v[UNROLLS - 1], v[UNROLLS - 1] / v[0]] for label, v in results.items()]
    header = ["estimator", "τ=1", "τ=10", f"τ={UNROLLS}", f"τ={UNROLLS} / τ=1"]
    write("variance.md", markdown_table(header, rows))


if __name__ == "__main__":
    main()
