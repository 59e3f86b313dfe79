"""Adam against complex Adam on a GAN for a ring of 8 Gaussians, at equal steps.

Both players use the same optimizer (the discriminator with ``maximize=True``), simultaneous updates,
the same seeds and the same number of steps; we report mode coverage and the fraction of
high-quality samples (``GANMixture.evaluate``) and draw the samples (Lorraine et al., 2022, Section 4.3).
Run: ``python -m experiments.complex_momentum.gan_mixture``.
"""

from __future__ import annotations

import functools
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from experiments.complex_momentum.common import FOLDER, markdown_table  # noqa: E402
from metaopt.optim import ComplexAdam  # noqa: E402
from metaopt.outer import GameLoop  # noqa: E402
from metaopt.tasks import GANMixture  # noqa: E402
from metaopt.tasks.games.gan import draw_samples  # noqa: E402

STEPS = 3000
SEEDS = (0, 1, 2)
LR = 1e-3


def _complex_adam(beta1: float, angle: float):
    return functools.partial(ComplexAdam, lr=LR, betas=(beta1, 0.999), angle=angle)


OPTIMIZERS = {
    "Adam β₁=0.5": functools.partial(torch.optim.Adam, lr=LR, betas=(0.5, 0.999)),
    "Adam β₁=0.9": functools.partial(torch.optim.Adam, lr=LR, betas=(0.9, 0.999)),
    "complex Adam 0.5·exp(iπ/8)": _complex_adam(0.5, math.pi / 8),
    "complex Adam 0.9·exp(iπ/16)": _complex_adam(0.9, math.pi / 16),
    "complex Adam 0.9·exp(iπ/8)": _complex_adam(0.9, math.pi / 8),
}


def main() -> None:
    torch.set_num_threads(1)
    game = GANMixture()
    fig, axes = plt.subplots(len(OPTIMIZERS), len(SEEDS), figsize=(2.6 * len(SEEDS), 2.6 * len(OPTIMIZERS)))
    rows = []
    for r, (name, optimizer) in enumerate(OPTIMIZERS.items()):
        results = []
        for c, seed in enumerate(SEEDS):
            torch.manual_seed(seed)
            loop = GameLoop(game, optimizer, steps=STEPS, generator=torch.Generator().manual_seed(seed))
            for _ in range(STEPS):
                loop.step()
            metrics = loop.evaluate()
            results.append(metrics)
            ax = axes[r, c]
            with torch.no_grad():
                draw_samples(ax, game.eval_samples(loop.players), game.modes, game.std)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"seed {seed}: {metrics['modes_covered']:.0f}/8 modes, "
                         f"{metrics['high_quality_fraction']:.0%} HQ", fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
            print(name, seed, metrics, flush=True)
        modes = torch.tensor([m["modes_covered"] for m in results])
        quality = torch.tensor([m["high_quality_fraction"] for m in results])
        rows.append([name, " ".join(f"{m:.0f}" for m in modes), f"{modes.mean():.2f}",
                     " ".join(f"{q:.2f}" for q in quality), f"{quality.mean():.2f}"])
    fig.suptitle(f"GAN on 8 Gaussians, {STEPS} simultaneous steps, lr {LR} (circles: 3 std)", fontsize=10)
    fig.tight_layout()
    fig.savefig(FOLDER / "gan_mixture.png", dpi=80)
    table = markdown_table(["optimizer (both players)", "modes covered per seed", "mean",
                            "high-quality fraction per seed", "mean"], rows)
    (FOLDER / "gan_mixture.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
