"""A small GAN on a 2-D mixture of Gaussians on a ring (Metz et al., 2017; Lorraine et al., 2022,
Section 4.3)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from metaopt.checks import require
from metaopt.tasks.games.game import Game
from metaopt.tasks.models import MLP

__all__ = ["GANMixture", "draw_samples"]

_LOSSES = ("non_saturating", "minimax")


class GANMixture(Game):
    """Generator against discriminator on ``num_modes`` Gaussians (std ``std``) evenly spaced on a circle.

    The discriminator (logit D) maximizes ``V = E log σ(D(x)) + E log(1 − σ(D(G(z))))`` (its optimizer
    gets ``maximize=True``); the generator minimizes V (``loss="minimax"``) or ``−E log σ(D(G(z)))``
    (``"non_saturating"``, Goodfellow et al., 2014). ``evaluate`` draws ``num_eval_samples`` samples:
    a sample is of high quality within 3 std of a mode, and a mode is covered when it holds at least
    ``min_mode_fraction`` of all samples as high-quality samples.
    """

    maximize = {"generator": False, "discriminator": True}

    def __init__(self, num_modes: int = 8, radius: float = 2.0, std: float = 0.05, latent_dim: int = 16,
                 hidden_sizes: Sequence[int] = (128, 128), batch_size: int = 256,
                 loss: str = "non_saturating", num_eval_samples: int = 2000, min_mode_fraction: float = 0.02,
                 eval_seed: int = 0):
        for name, value in (("num_modes", num_modes), ("batch_size", batch_size), ("latent_dim", latent_dim),
                            ("num_eval_samples", num_eval_samples)):
            require(f"task.{name}", value, isinstance(value, int) and value > 0, "a positive integer")
        require("task.std", std, std > 0, "a number > 0")
        require("task.loss", loss, loss in _LOSSES, " or ".join(_LOSSES))
        angles = torch.arange(num_modes) * (2 * math.pi / num_modes)
        self.modes = radius * torch.stack([angles.cos(), angles.sin()], 1)
        self.std, self.latent_dim, self.hidden_sizes = std, latent_dim, tuple(hidden_sizes)
        self.batch_size, self.loss = batch_size, loss
        self.num_eval_samples, self.min_mode_fraction = num_eval_samples, min_mode_fraction
        self.eval_seed = eval_seed
        # Fixed draws of the meta-loss (the same for every round, particle and setting).
        meta_generator = torch.Generator().manual_seed(eval_seed + 1)
        self._meta_latent = torch.randn(256, latent_dim, generator=meta_generator)
        self._meta_data = self.sample_data(256, meta_generator)

    def build_players(self) -> dict[str, nn.Module]:
        return {"generator": MLP(self.latent_dim, 2, self.hidden_sizes, activation="relu"),
                "discriminator": MLP(2, 1, self.hidden_sizes, activation="relu")}

    def sample_data(self, num: int, generator: torch.Generator) -> torch.Tensor:
        which = torch.randint(len(self.modes), (num,), generator=generator)
        return self.modes[which] + self.std * torch.randn(num, 2, generator=generator)

    def sample_generator(self, players: Mapping[str, nn.Module], num: int, generator: torch.Generator):
        return players["generator"](torch.randn(num, self.latent_dim, generator=generator))

    def eval_samples(self, players: Mapping[str, nn.Module]) -> torch.Tensor:
        """``num_eval_samples`` generated points from the fixed latent draw ``eval_seed``."""
        latent_generator = torch.Generator().manual_seed(self.eval_seed)
        return self.sample_generator(players, self.num_eval_samples, latent_generator)

    def objectives(self, players, generator):
        real_logits = players["discriminator"](self.sample_data(self.batch_size, generator))
        fake_logits = players["discriminator"](self.sample_generator(players, self.batch_size, generator))
        # log σ(D) = −softplus(−D), log(1 − σ(D)) = −softplus(D).
        value = -F.softplus(-real_logits).mean() - F.softplus(fake_logits).mean()
        generator_loss = F.softplus(-fake_logits).mean() if self.loss == "non_saturating" else value
        return {"generator": generator_loss, "discriminator": value}

    def meta_loss(self, players) -> torch.Tensor:
        """The generator's fit to the mixture: the squared maximum mean discrepancy (Gretton et al., 2012)
        between 256 generated points (a fixed latent draw) and 256 fixed data points, with Gaussian kernels
        of widths 2·std, 0.5 and 2 (mode shapes, neighbouring modes, the ring). Zero only when the
        distributions match, so mode collapse and off-mode samples both cost."""
        samples = players["generator"](self._meta_latent)
        points = torch.cat([samples, self._meta_data])
        squared = (points[:, None] - points[None]).square().sum(-1)
        n = len(samples)
        sign = torch.cat([torch.ones(n), -torch.ones(n)]).to(samples.dtype) / n
        total = samples.new_zeros(())
        for width in (2 * self.std, 0.5, 2.0):
            total = total + sign @ torch.exp(-squared / (2 * width**2)) @ sign
        return total

    @torch.no_grad()
    def strategy(self, players) -> torch.Tensor:
        """The fraction of the evaluation samples of high quality at each mode (``num_modes`` numbers):
        two generators differ here when they cover different modes."""
        samples = self.eval_samples(players)
        distances, nearest = torch.cdist(samples, self.modes).min(1)
        counts = torch.bincount(nearest[distances < 3 * self.std], minlength=len(self.modes))
        return counts.float() / self.num_eval_samples

    @torch.no_grad()
    def evaluate(self, players) -> dict[str, float]:
        samples = self.eval_samples(players)
        distances, nearest = torch.cdist(samples, self.modes).min(1)
        good = distances < 3 * self.std
        counts = torch.bincount(nearest[good], minlength=len(self.modes))
        covered = counts >= self.min_mode_fraction * self.num_eval_samples
        return {"modes_covered": float(covered.sum()), "high_quality_fraction": good.float().mean().item()}

    def plots(self, players, folder: Path) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with torch.no_grad():
            samples = self.eval_samples(players)
        fig, ax = plt.subplots(figsize=(4, 4))
        draw_samples(ax, samples, self.modes, self.std)
        metrics = self.evaluate(players)
        ax.set_title(f"{metrics['modes_covered']:.0f}/{len(self.modes)} modes, "
                     f"{metrics['high_quality_fraction']:.0%} high quality")
        path = Path(folder) / "gan_samples.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return [path]


def draw_samples(ax, samples: torch.Tensor, modes: torch.Tensor, std: float) -> None:
    """Generated samples (dots) over the modes (circles of radius 3 std) of the mixture."""
    import matplotlib.pyplot as plt

    ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, color="tab:blue")
    for mode in modes:
        ax.add_patch(plt.Circle(mode.tolist(), 3 * std, fill=False, color="tab:red"))
    limit = float(modes.abs().max()) * 1.5
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
