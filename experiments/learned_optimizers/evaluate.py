"""Does the shipped learned optimizer work? Held-out tasks, against Adam at its default lr and against Adam
with the best lr of a 7-point log grid chosen per task; and past the meta-training horizon.

Every run trains a held-out task of ``metaopt.tasks.lopt.digits_tasks("test")`` (architectures, sizes and
batch sizes meta-training never saw) from the same initialisation and minibatches for each optimizer,
with the learned optimizer used as any ``torch.optim`` optimizer. Final losses average the last 50
steps' minibatch losses (training) and the full validation split at the end (validation), over seeds.

    python -m experiments.learned_optimizers.evaluate [--weights digits_pes] [--steps 1000] [--seeds 2]
        [--first-seed 0] [--cache adam_runs.json]

``--first-seed``: the seeds are ``first-seed … first-seed + seeds - 1`` (fresh seeds: ones no choice was
made on; the tuned lr is chosen per task on those seeds too).

``--cache``: a JSON file that keeps Adam's runs (they do not depend on the learned weights), so that a
second evaluation (other weights) trains only the learned optimizer.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from metaopt.optim import LearnedOptimizer
from metaopt.tasks.lopt import digits_tasks

HERE = Path(__file__).resolve().parent
GRID = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


def train(task, make_optimizer, steps: int, seed: int) -> tuple[list[float], float]:
    """Minibatch training losses over ``steps`` and the final validation loss."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = task.build_model()
    optimizer = make_optimizer(model.parameters())
    generator = torch.Generator().manual_seed(1000 + seed)
    losses = []
    for _ in range(steps):
        inputs, targets = task.sample_batch(generator)
        optimizer.zero_grad(set_to_none=True)
        loss = task.loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        losses.append(value if math.isfinite(value) else float("inf"))
        if not math.isfinite(value):
            losses += [float("inf")] * (steps - len(losses))
            break
    with torch.no_grad():
        inputs, targets = task.data.val
        val = float(task.loss(model(inputs), targets))
    return losses, val if math.isfinite(val) else float("inf")


class AdamRuns:
    """Adam's runs (losses, validation loss) by task, lr, steps and seed, kept in ``path`` if given."""

    def __init__(self, path: Path | None):
        self.path = path
        self.runs = json.loads(path.read_text()) if path is not None and path.is_file() else {}

    def __call__(self, name: str, task, lr: float, steps: int, seed: int) -> tuple[list[float], float]:
        key = f"{name}|{lr:g}|{steps}|{seed}"
        if key not in self.runs:
            self.runs[key] = train(task, lambda p: torch.optim.Adam(p, lr=lr), steps, seed)
            if self.path is not None:
                self.path.write_text(json.dumps(self.runs))
        losses, val = self.runs[key]
        return list(losses), val


def final(losses: list[float]) -> float:
    tail = losses[-50:]
    return sum(tail) / len(tail)


def main(weights: str = "digits_pes", steps: int = 1000, long_steps: int = 2000, seeds: int = 2,
         out: Path = HERE, cache: Path | None = None, adam_only: bool = False, first_seed: int = 0) -> dict | None:
    torch.set_num_threads(1)
    adam = AdamRuns(cache)
    lopt = lambda params: LearnedOptimizer(params, weights=weights)  # noqa: E731
    meta = LearnedOptimizer(torch.nn.Linear(1, 1).parameters(), weights=weights).meta
    rows, curves = [], {}
    started = time.perf_counter()
    for inner in digits_tasks("test"):
        runs: dict[str, list[tuple[list[float], float]]] = {"learned": [], **{f"adam_{lr:g}": [] for lr in GRID}}
        for seed in range(first_seed, first_seed + seeds):
            for lr in GRID:
                runs[f"adam_{lr:g}"].append(adam(inner.name, inner.task, lr, steps, seed))
            if not adam_only:
                runs["learned"].append(train(inner.task, lopt, steps, seed))

        def summary(name: str, runs=runs) -> tuple[float, float]:
            return (sum(final(l) for l, _ in runs[name]) / seeds, sum(v for _, v in runs[name]) / seeds)

        best = min((f"adam_{lr:g}" for lr in GRID), key=lambda name: summary(name)[0])
        if adam_only:
            adam(inner.name, inner.task, float(best.split("_")[1]), long_steps, first_seed)
            print(f"{inner.name}: Adam's runs done [{time.perf_counter() - started:.0f} s]", flush=True)
            continue
        learned, default, tuned = summary("learned"), summary("adam_0.001"), summary(best)
        rows.append({"task": inner.name, "learned_train": learned[0], "learned_val": learned[1],
                     "adam_default_train": default[0], "adam_default_val": default[1],
                     "adam_tuned_lr": float(best.split("_")[1]), "adam_tuned_train": tuned[0],
                     "adam_tuned_val": tuned[1]})
        long_learned, _ = train(inner.task, lopt, long_steps, first_seed)
        long_tuned, _ = adam(inner.name, inner.task, rows[-1]["adam_tuned_lr"], long_steps, first_seed)
        curves[inner.name] = {"learned": long_learned, "adam_default": runs["adam_0.001"][0][0],
                              "adam_tuned": long_tuned}
        print(f"{inner.name}: learned {learned[0]:.4f}  adam(1e-3) {default[0]:.4f}  "
              f"adam({best.split('_')[1]}) {tuned[0]:.4f}  [{time.perf_counter() - started:.0f} s]", flush=True)
    if adam_only:
        return None
    beats_default = sum(r["learned_train"] < r["adam_default_train"] for r in rows)
    at_tuned = sum(r["learned_train"] <= r["adam_tuned_train"] for r in rows)
    past = {name: {"at_horizon": final(c["learned"][:meta.get("horizon", 200)]),
                   "at_1000": final(c["learned"][:1000]), "at_2000": final(c["learned"])}
            for name, c in curves.items()}
    result = {"weights": weights, "meta": meta, "steps": steps, "seeds": seeds, "first_seed": first_seed,
              "rows": rows,
              "beats_default_adam": beats_default, "at_or_below_tuned_adam": at_tuned, "past_horizon": past}
    write(result, curves, out)
    return result


def write(result: dict, curves: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "held_out.json").write_text(json.dumps(result, indent=1))
    first = result.get("first_seed", 0)
    lines = [f"Held-out tasks, {result['steps']} steps, mean over {result['seeds']} seeds ({first}-"
             f"{first + result['seeds'] - 1}; training loss: mean "
             "minibatch loss of the last 50 steps; validation: full split at the end; bold: at or below tuned "
             "Adam). Weights "
             f"`{result['weights']}` (meta-trained by {result['meta'].get('estimator', '?')} on "
             f"{len(result['meta'].get('tasks', []))} tasks, horizon {result['meta'].get('horizon', '?')}).", "",
             "| task | learned train | Adam 1e-3 train | tuned Adam train (lr) | learned val | Adam 1e-3 val | "
             "tuned Adam val |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:  # bold: at or below tuned Adam
        mark = "**" if r["learned_train"] <= r["adam_tuned_train"] else ""
        lines.append(f"| {r['task']} | {mark}{r['learned_train']:.3g}{mark} | {r['adam_default_train']:.3g} | "
                     f"{r['adam_tuned_train']:.3g} ({r['adam_tuned_lr']:g}) | {r['learned_val']:.4f} | "
                     f"{r['adam_default_val']:.4f} | {r['adam_tuned_val']:.4f} |")
    lines += ["", f"Lower final training loss than default Adam on {result['beats_default_adam']} of "
              f"{len(result['rows'])} tasks; at or below per-task-tuned Adam on {result['at_or_below_tuned_adam']}.",
              "", "Past the meta-training horizon (seed 0, mean minibatch loss of the 50 steps before each point):", "",
              "| task | at the horizon | at 1000 steps | at 2000 steps |", "|---|---|---|---|"]
    for name, p in result["past_horizon"].items():
        lines.append(f"| {name} | {p['at_horizon']:.3g} | {p['at_1000']:.3g} | {p['at_2000']:.3g} |")
    (out / "held_out.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.4), squeeze=False)
    for ax, (name, c) in zip(axes[0], curves.items()):
        for label, losses in c.items():
            smooth = torch.tensor(losses).unfold(0, 20, 20).mean(1) if len(losses) >= 20 else torch.tensor(losses)
            ax.plot(torch.arange(len(smooth)) * 20, smooth, label=label)
        ax.axvline(result["meta"].get("horizon", 200), color="gray", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("training loss")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "held_out.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="digits_pes")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--long-steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--cache", type=Path, default=None, help="a JSON file keeping Adam's runs")
    parser.add_argument("--adam-only", action="store_true", help="only Adam's runs (to fill --cache)")
    args = parser.parse_args()
    main(args.weights, args.steps, args.long_steps, args.seeds, args.out, args.cache, args.adam_only,
         args.first_seed)
