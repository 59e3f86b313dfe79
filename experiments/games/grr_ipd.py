"""GRR on the iterated prisoner's dilemma against independent restarts of naive learning, same compute.

GRR (``+experiment=grr_ipd``): one start (uniform policies), 40 ascent steps of the top-2 exponents over
30 rounds, 6 branches followed for 300 rounds. Restarts: simultaneous gradient ascent (lr 1) from
N(0, 1) logits for 300 rounds each, as many as the rounds of play GRR used (ascent rounds counted
with their k JVP columns and the backward pass as 3·k rounds each). Writes grr_ipd.md and grr_ipd.png.

    python -m experiments.games.grr_ipd
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from metaopt.games import GameDynamics
from metaopt.run import run
from metaopt.tasks import IteratedPrisonersDilemma

HERE = Path(__file__).resolve().parent
CONF = HERE.parents[1] / "metaopt" / "conf"
ROUNDS = 300


def outcome(player1_value: float, player2_value: float) -> str:
    """``defect-defect`` (both near −2 per step), ``cooperate`` (both near −1), else ``other``."""
    if max(player1_value, player2_value) < -1.9:
        return "defect-defect"
    if min(player1_value, player2_value) > -1.1:
        return "cooperate"
    return "other"


def grr() -> tuple[list[dict], dict, float]:
    folder = Path(tempfile.mkdtemp())
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=grr_ipd", "logger=none", "progress=false", "name=grr_ipd"])
    began = time.perf_counter()
    run(cfg, folder)
    seconds = time.perf_counter() - began
    solutions = json.loads((folder / "grr_solutions.json").read_text())
    shutil.copy(folder / "grr_branches.png", HERE / "grr_ipd_branches.png")
    shutil.copy(folder / "grr_solutions.md", HERE / "grr_ipd_solutions.md")
    return solutions, {**cfg.outer}, seconds


def restarts(num: int) -> list[str]:
    game = IteratedPrisonersDilemma()
    dynamics = GameDynamics(game, functools.partial(torch.optim.SGD, lr=1.0))
    outcomes = []
    for seed in range(num):
        torch.manual_seed(seed)
        params, states = dynamics.split(dynamics.initial_state(torch.randn(10, dtype=torch.float64)), step=0)
        generator = torch.Generator()
        with torch.no_grad():
            for _ in range(ROUNDS):
                params, states = dynamics.play(params, states, generator)
        metrics = dynamics.evaluate(dynamics.flatten_params(params))
        outcomes.append(outcome(metrics["player1_value"], metrics["player2_value"]))
    return outcomes


def main() -> None:
    solutions, outer, seconds = grr()
    branches = 2 * outer["num_directions"]
    rounds = outer["ascent_steps"] * outer["lyapunov_steps"] * 3 * outer["num_exponents"] + branches * ROUNDS
    num_restarts = rounds // ROUNDS
    found = restarts(num_restarts)
    lines = ["# GRR vs restarts on the iterated prisoner's dilemma (naive learners, lr 1, γ = 0.96)", "",
             f"GRR: one start, {len(solutions)} distinct solutions from {branches} branches "
             f"({seconds:.0f} s, ≈{rounds} round-equivalents of compute):", "",
             "| solution | outcome | branches | player 1 reward/step | player 2 reward/step | "
             "P(C) player 1: start, CC, CD, DC, DD | P(C) player 2 |",
             "|---|---|---|---|---|---|---|"]
    for j, s in enumerate(solutions):
        m = s["metrics"]
        p = s["strategy"]
        lines.append(f"| {j} | {outcome(m['player1_value'], m['player2_value'])} | {len(s['branches'])} | "
                     f"{m['player1_value']:.3f} | {m['player2_value']:.3f} | {[round(v, 2) for v in p[:5]]} | "
                     f"{[round(v, 2) for v in p[5:]]} |")
    counts = {k: found.count(k) for k in ("defect-defect", "cooperate", "other")}
    lines += ["", f"Independent restarts (N(0, 1) logits, {ROUNDS} rounds each, {num_restarts} restarts for the "
              "same compute): " + ", ".join(f"{k}: {v}" for k, v in counts.items()), ""]
    (HERE / "grr_ipd.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
