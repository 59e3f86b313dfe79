"""From cooperative to adversarial games: which momentum converges fastest?

``MixedGame`` mixes a symmetric Jacobian (a shared quadratic, adversarial = 0) with an antisymmetric
one (a bilinear zero-sum game, adversarial = 1) (Lorraine et al., 2022, Section 4.2). For each mix,
the best spectral radius of the simultaneous update map over a grid of step sizes and |β| for gradient
descent (β = 0), positive real momentum (arg β = 0), negative momentum (arg β = π) and complex β
(0 < arg β < π); the best settings are then run with ``ComplexMomentum`` and their rates measured.
Run: ``python -m experiments.complex_momentum.adversarial_sweep``.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from experiments.complex_momentum.common import FOLDER, markdown_table, play, rate_of  # noqa: E402
from metaopt.games import spectral_radius, update_matrix  # noqa: E402
from metaopt.tasks import MixedGame  # noqa: E402

LRS = torch.logspace(-2, 0.5, 30, dtype=torch.float64)
MODULI = torch.linspace(0, 0.95, 20, dtype=torch.float64)
ANGLES = torch.linspace(0, math.pi, 17, dtype=torch.float64)
METHODS = {  # (|β| indices, angle indices) searched by each method
    "gradient descent": (slice(0, 1), slice(0, 1)),
    "positive momentum": (slice(None), slice(0, 1)),
    "negative momentum": (slice(None), slice(-1, None)),
    "complex momentum": (slice(None), slice(1, -1)),
}


def best_settings(game: MixedGame) -> dict[str, tuple[float, float, float, float]]:
    """Per method: (spectral radius, lr, |β|, arg β) of its best grid point."""
    radii = spectral_radius(update_matrix(game.jacobian(), LRS[:, None, None], MODULI[None, :, None],
                                          ANGLES[None, None, :]))
    best = {}
    for name, (moduli, angles) in METHODS.items():
        sub = radii[:, moduli, angles]
        i, j, k = torch.unravel_index(sub.argmin(), sub.shape)
        best[name] = (sub.min().item(), LRS[i].item(), MODULI[moduli][j].item(), ANGLES[angles][k].item())
    return best


def main() -> None:
    torch.set_num_threads(1)
    mixes = torch.linspace(0, 1, 21).tolist()
    curves = {name: [] for name in METHODS}
    rows = []
    for mix in mixes:
        game = MixedGame(dim=3, adversarial=mix, condition_number=4.0)
        for name, (radius, lr, modulus, angle) in best_settings(game).items():
            curves[name].append(radius)
            if round(mix * 20) in (0, 10, 16, 20):
                measured = rate_of(play(game, lr, modulus, angle, 600)) if radius < 1.2 else math.nan
                rows.append([f"{mix:.2f}", name, f"{lr:.3f}", f"{modulus:.2f}", f"{math.degrees(angle):.0f}°",
                             f"{radius:.5f}", f"{measured:.5f}"])

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, curve in curves.items():
        ax.plot(mixes, curve, marker="o", markersize=3, label=name)
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set_ylim(min(min(c) for c in curves.values()) - 0.02, 1.1)
    ax.set_xlabel("adversarial mix γ  (0: shared quadratic, 1: bilinear zero-sum)")
    ax.set_ylabel("best spectral radius over lr, |β|")
    ax.set_title("MixedGame (dim 3, κ 4): best convergence rate\n(below 1 converges, lower is faster)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(FOLDER / "adversarial_sweep.png", dpi=100)
    table = markdown_table(["γ", "method", "lr", "abs β", "arg β", "spectral radius", "measured rate"], rows)
    (FOLDER / "adversarial_sweep.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
