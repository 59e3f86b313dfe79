"""GRR on the 8-Gaussian GAN against independent restarts with the same compute: modes covered.

GRR (``+experiment=grr_gan``): one start per seed, the start ascends the top-2 Lyapunov exponents of
simultaneous gradient descent's update map (10 ascent steps over 8 rounds), then ± 4 eigen-directions of
the game Jacobian (Arnoldi on JVPs), 8 branches followed with Adam for 400 rounds. Restarts: the same
players and optimizer from independent initialisations, 400 rounds each, as many as GRR's compute.

Compute is counted in game rounds: one round is one gradient of every player on one batch and one
optimizer step. GRR's ascent and eigen-decomposition are converted into rounds by their measured
wall-clock time (both GRR's branches and the restarts play their rounds in one vmapped batch, so a
round costs the same in both). The number of restarts is GRR's total rounded up.

    python -m experiments.games.grr_gan   # writes grr_gan.md, grr_gan.png, grr_gan_branches.png and
                                          # grr_gan_solutions.md here (~2 min on one thread)
"""

from __future__ import annotations

import functools
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.func import vmap

from metaopt.tasks.games.gan import draw_samples

HERE = Path(__file__).resolve().parent
CONF = HERE.parents[1] / "metaopt" / "conf"
SEEDS = (0, 1, 2, 3, 4)
POOL = 16   # restarts simulated per seed (more if GRR's compute allows more)


def config(seed: int):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["+experiment=grr_gan", "logger=none", "progress=false", f"seed={seed}"])


def covered(game, dynamics, theta: torch.Tensor) -> set[int]:
    """The modes holding at least ``min_mode_fraction`` of the evaluation samples as high-quality ones."""
    with torch.no_grad(), dynamics.players_at(theta) as players:
        histogram = game.strategy(players)
    return {i for i, v in enumerate(histogram.tolist()) if v >= game.min_mode_fraction}


def samples(game, dynamics, theta: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), dynamics.players_at(theta) as players:
        return game.eval_samples(players)


def grr(seed: int):
    """The GRR loop of ``+experiment=grr_gan`` as the runner builds it, stepped here; returns the loop, the
    seconds of its ascent and branching, and of its following."""
    cfg = config(seed)
    torch.manual_seed(cfg.seed)
    task = instantiate(cfg.task)
    loop = instantiate(cfg.outer)(task=task, optimizer=instantiate(cfg.optimizer),
                                  generator=torch.Generator().manual_seed(cfg.seed))
    began = time.perf_counter()
    for _ in range(loop.ascent_steps):
        loop.step()
    loop._branch()   # what the first following step does, timed with the ascent
    ascent_seconds = time.perf_counter() - began
    began = time.perf_counter()
    for _ in range(loop.ascent_steps, loop.num_steps):
        loop.step()
    return cfg, loop, ascent_seconds, time.perf_counter() - began


def restarts(cfg, loop, num: int, rounds: int, seed: int) -> list[torch.Tensor]:
    """``num`` independent runs of the same game and optimizer (fresh players from their own seeds, fresh
    optimizer state, their own data), ``rounds`` rounds each, played as one vmapped batch like GRR's branches."""
    dynamics = loop.dynamics
    starts = []
    for i in range(num):
        torch.manual_seed(10_000 * (seed + 1) + i)
        players = loop.game.build_players()
        starts.append(dynamics.initial_state(torch.cat([p.detach().reshape(-1) for player in players.values()
                                                        for p in player.parameters() if p.requires_grad])))
    generator = torch.Generator().manual_seed(10_000 * (seed + 1))

    def play(omega, step):
        params, states = dynamics.split(omega, step=step)
        params, states = dynamics.play(params, states, generator)
        return dynamics.join(params, states)

    omegas = torch.stack(starts)
    with torch.no_grad():
        for step in range(rounds):
            omegas = vmap(functools.partial(play, step=step), randomness="different")(omegas)
    return [dynamics.params(omega) for omega in omegas]


def main() -> None:
    torch.set_num_threads(1)
    rows, panels = [], None
    for seed in SEEDS:
        cfg, loop, ascent_seconds, follow_seconds = grr(seed)
        game, dynamics = loop.game, loop.dynamics
        branches = len(loop.branches)
        rounds = loop.rounds
        per_round = follow_seconds / (branches * rounds)
        ascent_rounds = ascent_seconds / per_round
        total = branches * rounds + ascent_rounds
        num_restarts = math.ceil(total / rounds)
        began = time.perf_counter()
        # A fixed pool, played as one batch, so that each restart's run (its data draws) does not depend on
        # how many the measured time allows; the first num_restarts of it are GRR's compute.
        pool = restarts(cfg, loop, max(POOL, num_restarts), rounds, seed)
        restart_seconds = time.perf_counter() - began
        restart_thetas = pool[:num_restarts]
        branch_thetas = [dynamics.params(b["omega"]) for b in loop.branches]
        grr_modes = [covered(game, dynamics, t) for t in branch_thetas]
        restart_modes = [covered(game, dynamics, t) for t in restart_thetas]
        rows.append({
            "seed": seed, "branches": branches, "rounds": rounds, "ascent_rounds": ascent_rounds,
            "total": total, "restarts": num_restarts, "solutions": len(loop.solutions()),
            "grr_union": set().union(*grr_modes), "restart_union": set().union(*restart_modes),
            "first_union": set().union(*restart_modes[:branches]),
            "grr_mean": sum(map(len, grr_modes)) / branches,
            "restart_mean": sum(map(len, restart_modes)) / num_restarts,
            "grr_sets": len({frozenset(m) for m in grr_modes}),
            "restart_sets": len({frozenset(m) for m in restart_modes}),
            "seconds": (ascent_seconds, follow_seconds, restart_seconds),
        })
        print(rows[-1], flush=True)
        if seed == SEEDS[0]:
            panels = ([("GRR", b, samples(game, dynamics, t), m) for b, t, m in
                       zip([loop._branch_name(i) for i in range(branches)], branch_thetas, grr_modes)],
                      [("restart", str(i), samples(game, dynamics, t), m) for i, (t, m) in
                       enumerate(zip(restart_thetas, restart_modes))], game)
            with tempfile.TemporaryDirectory() as folder:   # the loop's own outputs of the first seed
                loop.plots(Path(folder))
                for name in ("grr_branches.png", "grr_solutions.md"):
                    shutil.copy(Path(folder) / name, HERE / f"grr_gan_{name.removeprefix('grr_')}")
    write_table(rows)
    plot(*panels)


def write_table(rows: list[dict]) -> None:
    def modes(s: set[int]) -> str:
        return "{" + ", ".join(map(str, sorted(s))) + "}"

    lines = ["# GRR vs independent restarts on the 8-Gaussian GAN (`+experiment=grr_gan`)", "",
             "Compute in game rounds (one round: every player's gradient on one batch and an optimizer step); "
             "GRR's ascent and Arnoldi eigen-decomposition converted by measured wall-clock time.", "",
             "| seed | GRR rounds (ascent + branches) | GRR: distinct solutions | GRR: modes per branch | "
             "GRR: modes covered by any branch | restarts (same compute) | restarts: modes per run | "
             "restarts: modes covered by any run | … by the first 8 runs (GRR's following compute) | "
             "distinct mode sets GRR / restarts |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['total']:.0f} ({r['ascent_rounds']:.0f} + {r['branches']}×{r['rounds']}) | "
            f"{r['solutions']} | {r['grr_mean']:.2f} | {len(r['grr_union'])} {modes(r['grr_union'])} | "
            f"{r['restarts']}×{r['rounds']} | {r['restart_mean']:.2f} | "
            f"{len(r['restart_union'])} {modes(r['restart_union'])} | {len(r['first_union'])} | "
            f"{r['grr_sets']} / {r['restart_sets']} |")
    grr_union = sum(len(r["grr_union"]) for r in rows) / len(rows)
    restart_union = sum(len(r["restart_union"]) for r in rows) / len(rows)
    first_union = sum(len(r["first_union"]) for r in rows) / len(rows)
    lines += ["", f"Mean over {len(rows)} seeds: modes covered by any GRR branch {grr_union:.2f}, by any restart "
              f"{restart_union:.2f}, by the first 8 restarts {first_union:.2f} (of 8).", "",
              "Seconds (ascent + branching, following, restarts) per seed: " +
              "; ".join(", ".join(f"{s:.0f}" for s in r["seconds"]) for r in rows), ""]
    (HERE / "grr_gan.md").write_text("\n".join(lines))
    print("\n".join(lines))


def plot(grr_panels, restart_panels, game) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(grr_panels), 8)
    rows = 1 + math.ceil(len(restart_panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    cells = [(0, j, p) for j, p in enumerate(grr_panels)] + [
        (1 + i // columns, i % columns, p) for i, p in enumerate(restart_panels)]
    for row, column, (kind, name, points, modes) in cells:
        ax = axes[row, column]
        ax.set_axis_on()
        draw_samples(ax, points, game.modes, game.std)
        ax.set_xticks([])
        ax.set_yticks([])
        label = name.split("(")[0] if kind == "GRR" else f"restart {name}"
        ax.set_title(f"{label}: {len(modes)} modes", fontsize=7)
    axes[0, 0].set_ylabel("GRR branches", fontsize=8)
    if rows > 1:
        axes[1, 0].set_ylabel("restarts", fontsize=8)
    fig.suptitle("Seed 0: GRR's branches (top row, one start) and independent restarts (same compute)", fontsize=9)
    fig.tight_layout()
    fig.savefig(HERE / "grr_gan.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
