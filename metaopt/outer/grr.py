"""``outer=grr``: Generalized Ridge Rider, diverse solutions of a game from one start (Lorraine,
Parker-Holder et al., 2022, "Lyapunov Exponents for Diversity in Differentiable Games", Algorithm 1)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.func import vmap

from metaopt.checks import is_finite_number, require
from metaopt.games.branching import branch_directions, deduplicate, eigenpairs
from metaopt.games.dynamics import GameDynamics
from metaopt.games.lyapunov import initial_frame, lyapunov_exponents
from metaopt.optim.specs import SPECS, spec_for
from metaopt.tasks.games.game import UPDATES, Game

__all__ = ["GRRLoop"]

# (ascent_steps, lyapunov_steps) when unset: for games whose ω has at most ``large_size`` numbers, and above.
SMALL_GAME = (10, 8)
LARGE_GAME = (4, 4)


def _positive_int(name: str, value: Any) -> None:
    require(name, value, isinstance(value, int) and not isinstance(value, bool) and value > 0, "a positive integer")


class GRRLoop:
    r"""Generalized Ridge Rider on ``task`` (a :class:`~metaopt.tasks.games.Game`), the players learning
    with ``optimizer``'s functional core (:class:`~metaopt.games.GameDynamics`, update map F on ω).

    The ``steps`` runner steps are two phases:

    1. **Finding a branching point** (the first ``ascent_steps`` steps): gradient ascent on the start
       parameters θ₀ of the sum of the top ``num_exponents`` finite-time Lyapunov exponents of F over
       ``lyapunov_steps`` rounds from ω₀ = (θ₀, fresh optimizer state), differentiated through the
       unrolled estimate; each step moves θ₀ by ``ascent_lr`` along the normalised gradient (a step with
       a non-finite gradient is skipped and counted in ``ascent_skipped``).
    2. **Branching and following** (the remaining steps, one round of play each): at the final θ₀ the
       eigenvectors of the game Jacobian ∂ĝ/∂θ, least stable first (``metaopt.games.eigenpairs``),
       give ``num_directions`` unit directions d (a complex eigenvector gives its real and its imaginary
       part at a fixed phase: the two orthogonal, the real part the longer, its largest entry positive;
       ``metaopt.games.branch_directions``). Each branch starts at θ₀ ± ``branch_scale``·d with a fresh
       optimizer state and plays on with fresh draws of the game's data (``generator``).

    The branches' end points are deduplicated by the distance of their ``game.strategy`` (the IPD's
    cooperation probabilities, the GAN's mode histogram, the parameters by default), within
    ``dedup_threshold``. ``evaluate``/``summary`` report ``num_solutions`` and each solution's game
    metrics (``solution<j>_<metric>``); ``plots`` writes ``grr_branches.png`` (exponents during the
    ascent; the branches in the players' objective plane) and ``grr_solutions.md``/``.json`` (the table).
    ``eigen_dense_limit``: up to this many parameters the Jacobian is decomposed densely, past it by
    Arnoldi's method on Jacobian-vector products (a Krylov basis of max(4·num, 20) of them).

    ``ascent_optimizer`` (default: ``optimizer``): the optimizer whose update map's exponents the start
    ascends (the branches are still followed with ``optimizer``). Adam's map from a fresh state divides
    by the square root of tiny second moments: its finite-time exponents are huge and rough in θ, and
    their gradient is no ascent direction (experiments/games/README.md); SGD's map, I − α·J on θ, is
    smooth and its exponents are those of the game.

    ``ascent_steps`` and ``lyapunov_steps`` left unset (``None``) are chosen by the size of ω: 10 ascent
    steps over 8 rounds for a game whose ω has at most ``large_size`` numbers, 4 over 4 rounds past it
    (each ascent round differentiates ``num_exponents`` JVPs through a round of play: for the GAN mixture
    under Adam, ω has ~10⁵ numbers and one ascent round costs ~20 rounds of play).
    """

    accepts = ("game",)

    @staticmethod
    def optimizer_refusal(optimizer: type, kind: str | None, outer: Any = None) -> str | None:
        if spec_for(optimizer) is not None:
            return None
        known = ", ".join(s.optimizer.__name__ for s in SPECS.values())
        return (f"{optimizer.__name__} has no functional core: GRR differentiates the Lyapunov exponents "
                f"through the players' update map, which runs on one (use one of {known}; declare yours "
                "with metaopt.optim.specs.register)")

    def __init__(self, task: Game, optimizer: Callable, steps: int = 200, ascent_steps: int | None = None,
                 num_exponents: int = 2, lyapunov_steps: int | None = None, ascent_lr: float = 0.5,
                 num_directions: int = 2, branch_scale: float = 1.0, dedup_threshold: float = 0.5,
                 updates: str = "simultaneous", eval_every: int = 50, eigen_dense_limit: int = 512,
                 large_size: int = 10_000, ascent_optimizer: Callable | None = None, seed: int = 0,
                 generator: torch.Generator | None = None):
        require("task", type(task).__name__, isinstance(task, Game), "a metaopt.tasks.games.Game")
        for name, value in (("steps", steps), ("num_exponents", num_exponents), ("num_directions", num_directions),
                            ("large_size", large_size)):
            _positive_int(f"outer.{name}", value)
        for name, value in (("ascent_lr", ascent_lr), ("branch_scale", branch_scale),
                            ("dedup_threshold", dedup_threshold)):
            require(f"outer.{name}", value, is_finite_number(value) and value >= 0, "a finite number >= 0")
        require("outer.updates", updates, updates in UPDATES, " or ".join(UPDATES))
        require("outer.eval_every", eval_every, isinstance(eval_every, int) and eval_every >= 0,
                "a non-negative integer (0: only at the end)")
        self.game = task
        self.dynamics = GameDynamics(task, optimizer, updates=updates, seed=seed)
        # The map whose exponents the start ascends: the players' own, or (ascent_optimizer) another
        # optimizer's on the same players, e.g. SGD's for players that follow their branches with Adam.
        self.ascent_dynamics = self.dynamics if ascent_optimizer is None else GameDynamics(
            task, ascent_optimizer, players=self.dynamics.players, updates=updates, seed=seed)
        require("outer.num_exponents", num_exponents, num_exponents <= self.ascent_dynamics.size,
                f"at most the size of the dynamics' state ({self.ascent_dynamics.size}: parameters and optimizer "
                "buffers)")
        # Unset (None): the loop's choice by the size of ω. Every ascent round differentiates k JVPs through
        # a round of play, so a large game (a GAN: ω of ~10⁵ numbers with Adam) gets a short estimate.
        self.large = self.ascent_dynamics.size > large_size
        if lyapunov_steps is None:
            lyapunov_steps = LARGE_GAME[1] if self.large else SMALL_GAME[1]
        if ascent_steps is None:
            ascent_steps = min(LARGE_GAME[0] if self.large else SMALL_GAME[0], steps - 1)
        _positive_int("outer.lyapunov_steps", lyapunov_steps)
        require("outer.ascent_steps", ascent_steps,
                isinstance(ascent_steps, int) and not isinstance(ascent_steps, bool) and 0 <= ascent_steps < steps,
                f"an integer from 0 to steps - 1 = {steps - 1} (the remaining steps follow the branches)")
        self.num_steps, self.eval_every, self.ascent_steps = steps, eval_every, ascent_steps
        self.num_exponents, self.lyapunov_steps, self.ascent_lr = num_exponents, lyapunov_steps, float(ascent_lr)
        self.num_directions, self.branch_scale = num_directions, float(branch_scale)
        self.dedup_threshold, self.eigen_dense_limit = float(dedup_threshold), eigen_dense_limit
        self.generator = generator if generator is not None else torch.Generator()
        self.frame = initial_frame(self.ascent_dynamics.size, num_exponents, self.dynamics.dtype, self.dynamics.device,
                                   seed)
        self.start = self.dynamics.initial_params.clone()
        self.initial_start = self.start.clone()
        self.exponents: list[list[float]] = []   # per ascent step, the top exponents before it moved
        self.skipped = 0
        self.steps_done = 0
        self.branches: list[dict[str, Any]] | None = None
        self.rounds = 0                           # rounds every branch has played

    # -- phase 1: the branching point ---------------------------------------------------------------
    def exponents_at(self, theta: torch.Tensor) -> torch.Tensor:
        """The top ``num_exponents`` Lyapunov exponents of the learning dynamics from (θ, fresh state)
        (of ``ascent_optimizer``'s dynamics where one is given)."""
        dynamics = self.ascent_dynamics
        return lyapunov_exponents(dynamics.update, dynamics.initial_state(theta), self.num_exponents,
                                  self.lyapunov_steps, frame=self.frame)

    def _ascend(self) -> torch.Tensor:
        theta = self.start.clone().requires_grad_(True)
        exponents = self.exponents_at(theta)
        (gradient,) = torch.autograd.grad(exponents.sum(), theta)
        norm = gradient.norm()
        if torch.isfinite(norm) and norm > 0:
            self.start = (self.start + self.ascent_lr * gradient / norm).detach()
        else:
            self.skipped += 1
        exponents = exponents.detach()
        self.exponents.append(exponents.tolist())
        return exponents

    # -- phase 2: branches ----------------------------------------------------------------------------
    def _branch(self) -> None:
        dynamics = self.dynamics
        num = min(dynamics.num_params, 2 * self.num_directions + 2)
        values, vectors = eigenpairs(dynamics.vector_field, self.start, num, dense_limit=self.eigen_dense_limit)
        self.branches = []
        for found in branch_directions(values, vectors, self.num_directions):
            direction = found["direction"].to(self.start.dtype)
            for sign in (1.0, -1.0):
                theta = self.start + sign * self.branch_scale * direction
                self.branches.append({
                    "omega": dynamics.initial_state(theta), "sign": sign, "part": found["part"],
                    "eigenvalue": [found["eigenvalue"].real, found["eigenvalue"].imag], "direction": direction,
                    "objectives": [],
                })
        self.rounds = 0

    def _play_branch(self, omega: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One round of one branch from ``omega``: its new ω and each player's objective before it moved
        (on a draw of its own), counters at ``self.rounds``."""
        dynamics = self.dynamics
        params, states = dynamics.split(omega, step=self.rounds)
        with dynamics.players_at(params) as players:
            values = self.game.objectives(players, self.generator)
        params, states = dynamics.play(params, states, self.generator)
        return dynamics.join(params, states), torch.stack([values[name].detach() for name in dynamics.player_names])

    def _follow(self) -> dict[str, float]:
        # Every branch in one vectorised call (torch.func.vmap over the branches' ω): one batched round
        # instead of a Python loop of small ones; each branch still draws its own data.
        with torch.no_grad():
            omegas, values = vmap(self._play_branch, randomness="different")(
                torch.stack([branch["omega"] for branch in self.branches]))
        for branch, omega, row in zip(self.branches, omegas, values.tolist()):
            branch["omega"] = omega
            branch["objectives"].append(row)
        self.rounds += 1
        return {name: float(value) for name, value in zip(self.dynamics.player_names, values.mean(0))}

    def step(self) -> dict[str, float]:
        if self.steps_done < self.ascent_steps:
            exponents = self._ascend()
            objectives = self.dynamics.objectives(self.start, self.generator)
        else:
            if self.branches is None:
                self._branch()
            objectives = self._follow()
            exponents = torch.tensor(self.exponents[-1]) if self.exponents else None
        self.steps_done += 1
        metrics = {f"{name}_objective": value for name, value in objectives.items()}
        if exponents is not None:
            metrics.update(lyapunov_top=float(exponents[0]), lyapunov_sum=float(exponents.sum()))
        return metrics

    # -- solutions ------------------------------------------------------------------------------------
    def solutions(self) -> list[dict[str, Any]]:
        """The distinct solutions the branches reached so far: per solution its branches, each player's
        objective (on the fixed draw ``seed``), the game's metrics, the strategy and the parameter norms
        of each player. Before branching: the start point alone."""
        points = [b["omega"] for b in self.branches] if self.branches else [self.dynamics.initial_state(self.start)]
        thetas = [self.dynamics.params(omega) for omega in points]
        strategies = []
        for theta in thetas:
            with torch.no_grad(), self.dynamics.players_at(theta) as players:
                strategies.append(self.game.strategy(players).reshape(-1).double())
        representatives, labels = deduplicate(torch.stack(strategies), self.dedup_threshold)
        out = []
        for label, index in enumerate(representatives):
            theta = thetas[index]
            fixed = torch.Generator().manual_seed(self.dynamics.seed)
            params = self.dynamics.unflatten_params(theta)
            row = {
                "branches": [self._branch_name(i) for i, j in enumerate(labels) if j == label],
                "objectives": self.dynamics.objectives(theta, fixed),
                "metrics": self.dynamics.evaluate(theta),
                "strategy": [round(v, 4) for v in strategies[index].tolist()],
                "param_norms": {name: float(torch.sqrt(sum(p.square().sum() for p in
                                                          params[self.dynamics._slices[name]])))
                                for name in self.dynamics.player_names},
            }
            out.append(row)
        return out

    def _branch_name(self, index: int) -> str:
        if not self.branches:
            return "start"
        branch = self.branches[index]
        real, imag = branch["eigenvalue"]
        sign = "+" if branch["sign"] > 0 else "-"
        return f"{sign}{branch['part']}(λ={real:.3g}{imag:+.3g}i)"

    def evaluate(self) -> dict[str, float]:
        solutions = self.solutions()
        metrics: dict[str, float] = {"num_solutions": float(len(solutions)), "ascent_skipped": float(self.skipped)}
        if self.exponents:
            metrics["lyapunov_top_start"] = self.exponents[0][0]
            metrics["lyapunov_top_final"] = self.exponents[-1][0]
        for j, solution in enumerate(solutions):
            metrics[f"solution{j}_num_branches"] = float(len(solution["branches"]))
            for key, value in solution["metrics"].items():
                if is_finite_number(value):
                    metrics[f"solution{j}_{key}"] = float(value)
        return metrics

    def summary(self) -> dict[str, Any]:
        return self.evaluate()

    # -- checkpoints ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        branches = None
        if self.branches is not None:
            branches = [{**b, "objectives": torch.tensor(b["objectives"], dtype=torch.float64).reshape(-1, len(
                self.dynamics.player_names))} for b in self.branches]
        return {"ascent_steps": self.ascent_steps, "lyapunov_steps": self.lyapunov_steps,
                "start": self.start, "exponents": torch.tensor(self.exponents, dtype=torch.float64),
                "skipped": self.skipped, "steps_done": self.steps_done, "rounds": self.rounds,
                "branches": branches, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        require("state['start']", tuple(state["start"].shape), state["start"].shape == self.start.shape,
                f"the start of this game ({tuple(self.start.shape)})")
        for key in ("ascent_steps", "lyapunov_steps"):  # resolved settings (unset ones depend on outer.steps)
            if key in state:
                require(f"outer.{key}", getattr(self, key), getattr(self, key) == state[key],
                        f"{state[key]}, as in the checkpoint (a resumed GRR run keeps its phases; set "
                        f"outer.{key}={state[key]} explicitly)")
        self.start = state["start"].to(self.start)
        self.exponents = state["exponents"].tolist()
        self.skipped, self.steps_done = int(state["skipped"]), int(state["steps_done"])
        self.rounds = int(state["rounds"])
        self.branches = None
        if state["branches"] is not None:
            self.branches = [{**b, "objectives": b["objectives"].tolist()} for b in state["branches"]]
        self.generator.set_state(state["generator"])

    # -- outputs -----------------------------------------------------------------------------------------
    def plots(self, folder: Path) -> list[Path]:
        folder = Path(folder)
        solutions = self.solutions()
        self._write_table(solutions, folder)
        return [self._plot(solutions, folder / "grr_branches.png"), *self.game_plots(folder)]

    def game_plots(self, folder: Path) -> list[Path]:
        """The game's own plots at the first solution."""
        theta = self.dynamics.params(self.branches[0]["omega"]) if self.branches else self.start
        with torch.no_grad(), self.dynamics.players_at(theta) as players:
            return self.game.plots(players, folder)

    def _write_table(self, solutions: list[dict[str, Any]], folder: Path) -> None:
        names = self.dynamics.player_names
        metric_keys = list(solutions[0]["metrics"]) if solutions else []
        header = ["solution", "branches", *[f"{n} objective" for n in names], *[f"‖{n}‖" for n in names],
                  *metric_keys, "strategy"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for j, row in enumerate(solutions):
            cells = [str(j), ", ".join(row["branches"]), *[f"{row['objectives'][n]:.4g}" for n in names],
                     *[f"{row['param_norms'][n]:.3g}" for n in names],
                     *[f"{row['metrics'][k]:.4g}" if is_finite_number(row["metrics"][k]) else str(row["metrics"][k])
                       for k in metric_keys],
                     "[" + ", ".join(f"{v:.2f}" for v in row["strategy"][:12]) +
                     (", …]" if len(row["strategy"]) > 12 else "]")]
            lines.append("| " + " | ".join(cells) + " |")
        text = (f"# GRR solutions: {len(solutions)} distinct (strategy distance > {self.dedup_threshold:g}) from "
                f"{len(self.branches or [])} branches after {self.rounds} rounds\n\n" + "\n".join(lines) + "\n")
        (folder / "grr_solutions.md").write_text(text)
        (folder / "grr_solutions.json").write_text(json.dumps(solutions, indent=1))

    def _plot(self, solutions: list[dict[str, Any]], path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        if self.exponents:
            exponents = torch.tensor(self.exponents)
            for i in range(exponents.shape[1]):
                left.plot(exponents[:, i], label=f"λ{i + 1}")
            left.legend(fontsize=8)
        left.set_xlabel("ascent step")
        left.set_ylabel("finite-time Lyapunov exponent")
        left.set_title("phase 1: towards a branching point")
        names = self.dynamics.player_names
        label_of = {b: j for j, s in enumerate(solutions) for b in s["branches"]}
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, branch in enumerate(self.branches or []):
            history = torch.tensor(branch["objectives"]).reshape(-1, len(names))
            if len(history) == 0:
                continue
            solution = label_of.get(self._branch_name(i), 0)
            color = colors[solution % len(colors)]
            if len(names) >= 2:
                right.plot(history[:, 0], history[:, 1], color=color, alpha=0.7, lw=1)
                right.scatter(history[-1, 0], history[-1, 1], color=color, s=30, zorder=3)
                right.scatter(history[0, 0], history[0, 1], color=color, marker="x", s=20)
            else:
                right.plot(history[:, 0], color=color)
        right.set_xlabel(f"{names[0]} objective")
        if len(names) >= 2:
            right.set_ylabel(f"{names[1]} objective")
        right.set_title(f"phase 2: {len(self.branches or [])} branches, {len(solutions)} solutions")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
