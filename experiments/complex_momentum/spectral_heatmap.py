"""The convergence rate of complex momentum over the phase of β on a bilinear game.

Heatmap of the spectral radius of the simultaneous update map over |β| × arg β at a fixed step size
(Lorraine et al., 2022, Figure 2), with the measured linear rates of real runs of
``metaopt.optim.ComplexMomentum`` drawn on it.
Run: ``python -m experiments.complex_momentum.spectral_heatmap``.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402

from experiments.complex_momentum.common import FOLDER, markdown_table, play, rate_of  # noqa: E402
from metaopt.games import spectral_radius, update_matrix  # noqa: E402
from metaopt.tasks import BilinearGame  # noqa: E402

LR = 0.3
STEPS = 600


def main() -> None:
    torch.set_num_threads(1)
    game = BilinearGame(dim=4, condition_number=2.0)
    moduli = torch.linspace(0, 0.98, 50, dtype=torch.float64)
    angles = torch.linspace(0, math.pi, 61, dtype=torch.float64)
    radii = spectral_radius(update_matrix(game.jacobian(), LR, moduli[:, None], angles[None, :]))

    runs = []
    for modulus in moduli[::7].tolist():
        for angle in angles[::8].tolist():
            predicted = spectral_radius(update_matrix(game.jacobian(), LR, modulus, angle))
            runs.append((modulus, angle, predicted, rate_of(play(game, LR, modulus, angle, STEPS))))

    fig, (ax, ax_check) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [1.4, 1]})
    norm = TwoSlopeNorm(vcenter=1.0, vmin=0.97, vmax=1.15)
    extent = [0, 180, float(moduli[0]), float(moduli[-1])]
    image = ax.imshow(radii.clamp(0.97, 1.15), origin="lower", aspect="auto", extent=extent, cmap="RdBu_r",
                      norm=norm)
    ax.contour(torch.rad2deg(angles), moduli, radii, levels=[1.0], colors="k", linewidths=1)
    finite = [r for r in runs if math.isfinite(r[3])]
    ax.scatter([math.degrees(r[1]) for r in finite], [r[0] for r in finite],
               c=[min(max(r[3], 0.97), 1.15) for r in finite], cmap="RdBu_r", norm=norm, edgecolors="k", s=40,
               label="measured rate of a run (same colours)")
    best = divmod(int(radii.argmin()), len(angles))
    ax.plot(math.degrees(angles[best[1]]), moduli[best[0]], "*", color="gold", markersize=14,
            markeredgecolor="k", label=f"best: ρ = {radii.min():.3f}")
    ax.set_xlabel("arg β (degrees)")
    ax.set_ylabel("|β|")
    ax.set_title(f"spectral radius, bilinear game (dim 4, κ 2), lr = {LR}\n"
                 "(black line: ρ = 1; inside it converges)")
    ax.legend(loc="lower right", fontsize=8)
    fig.colorbar(image, ax=ax, label="spectral radius ρ")
    ax_check.scatter([r[2] for r in finite], [r[3] for r in finite], s=15)
    low, high = min(r[2] for r in finite), max(r[2] for r in finite)
    ax_check.plot([low, high], [low, high], "k--", linewidth=1, label="measured = predicted")
    ax_check.set_xlabel("predicted rate (spectral radius)")
    ax_check.set_ylabel(f"measured rate of a {STEPS}-step run")
    ax_check.legend()
    fig.tight_layout()
    fig.savefig(FOLDER / "spectral_heatmap.png", dpi=100)

    errors = torch.tensor([abs(r[2] - r[3]) for r in finite])
    converging = torch.tensor([abs(r[2] - r[3]) for r in finite if r[2] < 1])
    special = {"gradient descent-ascent (β = 0)": radii[0].min(),
               "best real positive momentum (arg β = 0)": radii[:, 0].min(),
               "best negative momentum (arg β = π)": radii[:, -1].min(), "best complex β": radii.min()}
    rows = [[name, float(value)] for name, value in special.items()]
    table = markdown_table(["method (lr = 0.3)", "best spectral radius"], rows)
    table += (f"\nBest β: |β| = {moduli[best[0]]:.3f}, arg β = {math.degrees(angles[best[1]]):.1f}°. "
              f"{len(finite)} runs of {STEPS} steps, |measured rate − spectral radius|: "
              f"median {errors.median():.1e}, max {errors.max():.1e}; "
              f"over the {len(converging)} converging runs max {converging.max():.1e}.\n")
    (FOLDER / "spectral_heatmap.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
