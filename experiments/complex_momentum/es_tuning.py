"""ES-Single and PES tune complex momentum over whole game runs (games as unrolled problems).

The runner's experiment configs ``tune_complex_momentum`` (the bilinear game of ``spectral_heatmap``:
dim 4, κ 2, lr 0.3; tuning |β| and arg β, or lr too) and ``tune_complex_momentum_gan`` (the 8-Gaussian
GAN; lr, |β|, arg β), composed here and driven step by step so that the θ trajectories can be drawn on the
spectral-radius heatmap. The tuned settings are compared with the paper's default β = 0.9·e^{iπ/8} and
with the heatmap's best point by the spectral radius of their update maps (closed form).
Run: ``python -m experiments.complex_momentum.es_tuning`` (about 8 minutes on 2 cores; ``--quick``
skips the GAN).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from experiments.complex_momentum.common import FOLDER, markdown_table, play  # noqa: E402
from metaopt.games import spectral_radius, update_matrix  # noqa: E402
from metaopt.tasks.games.gan import draw_samples  # noqa: E402

CONF = Path(__file__).resolve().parents[2] / "metaopt" / "conf"
SEEDS = (0, 1, 2)
DEFAULT = {"lr": 0.3, "momentum": 0.9, "angle": math.pi / 8}


def _loop(experiment: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={experiment}", *overrides])
    torch.manual_seed(cfg.seed)
    task = instantiate(cfg.task)
    generator = torch.Generator().manual_seed(cfg.seed)
    return instantiate(cfg.outer)(task=task, optimizer=instantiate(cfg.optimizer), generator=generator), task


def _tune(experiment: str, label: str, *overrides: str):
    loop, task = _loop(experiment, *overrides)
    for _ in tqdm(range(loop.num_steps), desc=label, leave=False):
        loop.step()
    described = [loop.problem.describe(torch.tensor(t)) for t in loop.trajectory]
    return loop, task, described


def _radius(jacobian, setting) -> float:
    return spectral_radius(update_matrix(jacobian, setting["lr"], setting["momentum"], setting["angle"]))


def bilinear(rows, axes) -> None:
    runs = []
    for seed in SEEDS:
        runs.append(("ES-Single", "|β|, arg β", seed, *_tune("tune_complex_momentum", f"es-single {seed}",
                                                             f"seed={seed}")))
    runs.append(("PES", "|β|, arg β", 0, *_tune("tune_complex_momentum", "pes", "outer=pes", "seed=0")))
    runs.append(("ES-Single", "lr, |β|, arg β", 0, *_tune("tune_complex_momentum", "es-single lr",
                                                           "outer.problem.tuned=[lr,momentum,angle]", "seed=0")))
    game = runs[0][4]
    jacobian = game.jacobian()
    moduli = torch.linspace(0, 0.98, 50, dtype=torch.float64)
    angles = torch.linspace(0, math.pi, 61, dtype=torch.float64)
    radii = spectral_radius(update_matrix(jacobian, 0.3, moduli[:, None], angles[None, :]))
    best_index = divmod(int(radii.argmin()), len(angles))
    best = {"lr": 0.3, "momentum": float(moduli[best_index[0]]), "angle": float(angles[best_index[1]])}

    rows.append(["bilinear", "paper default β = 0.9·e^{iπ/8}", "—", _fmt(DEFAULT), f"{_radius(jacobian, DEFAULT):.4f}",
                 _meta(runs[0][3], DEFAULT)])
    rows.append(["bilinear", "best point of the heatmap (grid 50×61)", "—", _fmt(best),
                 f"{_radius(jacobian, best):.4f}", _meta(runs[0][3], best)])
    for method, tuned, seed, loop, _, described in runs:
        setting = {"lr": 0.3, **described[-1]}
        label = f"{method} tunes {tuned} (seed {seed})".replace("|", "\\|")
        rows.append(["bilinear", label, str(loop.num_steps), _fmt(setting),
                     f"{_radius(jacobian, setting):.4f}", _meta(loop, setting)])

    ax = axes[0]
    norm = TwoSlopeNorm(vcenter=1.0, vmin=0.97, vmax=1.15)
    image = ax.imshow(radii.clamp(0.97, 1.15), origin="lower", aspect="auto", cmap="RdBu_r", norm=norm,
                      extent=[0, 180, float(moduli[0]), float(moduli[-1])])
    ax.contour(torch.rad2deg(angles), moduli, radii, levels=[1.0], colors="k", linewidths=1)
    colours = {"ES-Single": "tab:green", "PES": "tab:purple"}
    for method, tuned, seed, _, _, described in runs:
        if tuned != "|β|, arg β":
            continue
        ax.plot([math.degrees(d["angle"]) for d in described], [d["momentum"] for d in described],
                color=colours[method], lw=1, label=f"{method} (seed {seed})" if seed == 0 else None)
        ax.plot(math.degrees(described[-1]["angle"]), described[-1]["momentum"], "o", color=colours[method])
    ax.plot(math.degrees(DEFAULT["angle"]), DEFAULT["momentum"], "s", color="white", markeredgecolor="k",
            label="start: paper default")
    ax.plot(math.degrees(best["angle"]), best["momentum"], "*", color="gold", markersize=14, markeredgecolor="k",
            label=f"heatmap best ρ = {radii.min():.4f}")
    ax.set_xlim(0, 180)
    ax.set_xlabel("arg β (degrees)")
    ax.set_ylabel("|β|")
    ax.set_title("bilinear game (dim 4, κ 2), lr 0.3: θ over outer steps\non the spectral radius of the update map")
    ax.legend(fontsize=7, loc="lower right")
    plt.colorbar(image, ax=ax, label="spectral radius ρ")

    ax = axes[1]
    for label, setting in (("paper default", DEFAULT), ("heatmap best", best),
                           ("ES-Single tuned", {"lr": 0.3, **runs[0][5][-1]}),
                           ("ES-Single tuned (lr too)", {**runs[-1][5][-1]})):
        distances = play(game, setting["lr"], setting["momentum"], setting["angle"], 600)
        ax.semilogy(distances, label=f"{label}: ρ = {_radius(jacobian, setting):.4f}")
    ax.set_xlabel("round")
    ax.set_ylabel("distance to the equilibrium")
    ax.set_ylim(1e-6, 1e6)
    ax.set_title("runs of 600 rounds at each setting")
    ax.legend(fontsize=7)


def _fmt(setting) -> str:
    return f"lr {setting['lr']:.3g}, \\|β\\| {setting['momentum']:.3f}, arg β {math.degrees(setting['angle']):.1f}°"


def _meta(loop, setting) -> str:
    """The meta-objective (mean log distance over the 200 training rounds) of a setting."""
    names = {key for key, _, _ in loop.problem.tuning.entries}
    theta = loop.problem.theta_for(**{k: v for k, v in setting.items() if k in names})
    return f"{loop.problem.evaluate(theta)['meta_objective']:.3f}"


def gan(rows, axes) -> None:
    loop, task, described = _tune("tune_complex_momentum_gan", "gan")
    problem = loop.problem
    # A GAN run is noisy: each setting is played from the same start on 4 streams of draws, averaged.
    evaluations = [problem.evaluate_many(torch.stack([loop.theta_start, loop.theta.detach()]), seed=seed)
                   for seed in range(4)]
    for index, (name, theta, steps) in enumerate((("start", loop.theta_start, "—"),
                                                  ("ES-Single tuned (seed 0)", loop.theta.detach(),
                                                   str(loop.num_steps)))):
        mean = {key: sum(e[index][key] for e in evaluations) / len(evaluations) for key in evaluations[0][index]}
        rows.append(["GAN mixture", name, steps, _fmt(problem.describe(theta)), "—",
                     f"{mean['meta_objective']:.3f} (modes {mean['modes_covered']:.1f}/8, high quality "
                     f"{mean['high_quality_fraction']:.0%}; mean of 4 draws)"])
    for ax, theta, title in ((axes[2], loop.theta_start, "start"), (axes[3], loop.theta.detach(), "tuned")):
        state, _, _ = problem._run(problem.init_state(1), theta[None], problem.horizon,
                                   torch.Generator().manual_seed(0), reset=False)
        with torch.no_grad(), problem._playing([p[0] for p in state["params"]]) as players:
            samples = task.eval_samples(players)
        draw_samples(ax, samples, task.modes, task.std)
        setting = problem.describe(theta)
        ax.set_title(f"GAN after {problem.horizon} rounds, {title}:\n{_fmt(setting).replace(chr(92), '')}",
                     fontsize=8)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the bilinear game only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: list[list[str]] = []
    panels = 2 if args.quick else 4
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.5))
    bilinear(rows, axes)
    if not args.quick:
        gan(rows, axes)
    fig.tight_layout()
    fig.savefig(FOLDER / "es_tuning.png", dpi=100)
    table = markdown_table(["game", "setting", "outer steps", "value", "spectral radius ρ",
                            "meta-objective"], rows)
    (FOLDER / "es_tuning.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
