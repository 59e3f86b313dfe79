"""Several fine-tuning seeds of the sample-efficiency comparison (``compare.py``'s methods), each method at
every learning rate of a small grid, the same grid for all: one JSON per (method, lr, seed) in
``results/seeds/`` (skipped when present, so an interrupted run resumes), then ``--table`` picks each
method's lr by its mean final evaluation reward over the seeds and writes the table of queries to fixed
rewards (mean and spread over seeds).

python -m experiments.diffusion.seeds --seeds 0 1 2 --lrs 1e-3 3e-3        # runs (about an hour on one core)
python -m experiments.diffusion.seeds --table                                # results/seeds.md, seeds.png
python -m experiments.diffusion.seeds --table --fixed-lr 1e-3                # one lr for all: seeds_lr0.001.md
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

from experiments.diffusion.compare import RESULTS, methods, run_method
from metaopt.tasks.diffusion import DigitsDiffusion

FOLDER = RESULTS / "seeds"
ORDER = ("DRaFT", "DRaFT-K (K=1)", "DRaFT-K (K=5)", "DRaFT-LV (n=2)", "DDPO", "ES-Single (8 pairs)")


def file_for(name: str, lr: float, seed: int) -> Path:
    slug = name.replace(" ", "").replace("(", "_").replace(")", "").replace("=", "")
    return FOLDER / f"{slug}_lr{lr:g}_s{seed}.json"


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    task = DigitsDiffusion(reward="digit_logprob")
    FOLDER.mkdir(parents=True, exist_ok=True)
    for lr in args.lrs:
        builders = methods(lr)
        for seed in args.seeds:
            for name in args.only or ORDER:
                path = file_for(name, lr, seed)
                if path.exists() or name not in builders:
                    continue
                steps = args.es_steps if name.startswith("ES") else args.steps
                result = run_method(name, builders[name], task, steps, args.eval_every, seed)
                path.write_text(json.dumps({"method": name, "lr": lr, "seed": seed, "steps": steps,
                                            "curve": result["curve"]}, indent=1))


def queries_to(curve: list[dict], key: str, level: float, count: str = "reward_queries") -> float:
    """Reward queries (or ``count``) at the first evaluation where ``key`` ≥ ``level`` (inf when never)."""
    return next((c[count] for c in curve if c[key] >= level), math.inf)


def at_queries(curve: list[dict], key: str, budget: int) -> float:
    """``key`` at the last evaluation with at most ``budget`` queries."""
    return [c[key] for c in curve if c["reward_queries"] <= budget][-1]


def spread(values: list[float], digits: int = 2, integer: bool = False) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "not reached"
    fmt = (lambda v: f"{v:.0f}") if integer else (lambda v: f"{v:.{digits}f}")
    text = f"{fmt(statistics.mean(finite))} ± {fmt(statistics.stdev(finite) if len(finite) > 1 else 0.0)}"
    text += f" [{fmt(min(finite))}, {fmt(max(finite))}]"
    if len(finite) < len(values):
        text += f" ({len(values) - len(finite)}/{len(values)} seeds never)"
    return text


def table(args: argparse.Namespace) -> None:
    runs: dict[str, dict[float, list[dict]]] = {}
    for path in sorted(FOLDER.glob("*.json")):
        data = json.loads(path.read_text())
        runs.setdefault(data["method"], {}).setdefault(data["lr"], []).append(data)
    budget = args.budget
    lines = [f"Reward `digit_logprob`, batch 16, {budget} reward queries per method (DRaFT-LV: n=2 re-noisings, so "
             "32 queries per step); each method at the lr of the grid with the best mean final eval reward; "
             "mean ± standard deviation [min, max] over seeds.", "",
             "| method | lr (grid) | seeds | eval reward at "
             f"{budget} queries | accuracy at {budget} | queries to reward ≥ {args.level:g} | "
             f"steps to reward ≥ {args.level:g} | queries to accuracy ≥ 0.7 | distance to data at {budget} |",
             "|---|---|---|---|---|---|---|---|---|"]
    chosen = {}
    for name in ORDER:
        if name not in runs:
            continue
        by_lr = runs[name]
        if args.fixed_lr is not None:
            by_lr = {lr: r for lr, r in by_lr.items() if math.isclose(lr, args.fixed_lr)}
            if not by_lr:
                continue
        best = max(by_lr, key=lambda lr: statistics.mean(at_queries(r["curve"], "eval_reward", budget)
                                                           for r in by_lr[lr]))
        chosen[name] = by_lr[best]
        rs = by_lr[best]
        grid = ", ".join(
            f"{lr:g}: {statistics.mean(at_queries(r['curve'], 'eval_reward', budget) for r in by_lr[lr]):.2f}"
            for lr in sorted(by_lr))
        lines.append(
            f"| {name} | **{best:g}** ({grid}) | {len(rs)} | "
            f"{spread([at_queries(r['curve'], 'eval_reward', budget) for r in rs])} | "
            f"{spread([at_queries(r['curve'], 'eval_accuracy', budget) for r in rs])} | "
            f"{spread([queries_to(r['curve'], 'eval_reward', args.level) for r in rs], integer=True)} | "
            f"{spread([queries_to(r['curve'], 'eval_reward', args.level, 'step') for r in rs], integer=True)} | "
            f"{spread([queries_to(r['curve'], 'eval_accuracy', 0.7) for r in rs], integer=True)} | "
            f"{spread([at_queries(r['curve'], 'data_distance', budget) for r in rs])} |")
    if "DDPO" in chosen:
        ddpo_final = statistics.mean(at_queries(r["curve"], "eval_reward", budget) for r in chosen["DDPO"])
        lines += ["", f"DDPO's mean eval reward at its full budget ({budget} queries): {ddpo_final:.2f}. Queries each "
                  "method needs to reach it (per seed; ratio to DDPO's budget):", ""]
        for name, rs in chosen.items():
            reached = [queries_to(r["curve"], "eval_reward", ddpo_final) for r in rs]
            ratios = ", ".join("never" if not math.isfinite(q) else f"{q:.0f} ({budget / q:.1f}×)" if q else "0"
                               for q in reached)
            lines.append(f"- {name}: {ratios}")
    suffix = "" if args.fixed_lr is None else f"_lr{args.fixed_lr:g}"
    (RESULTS / f"seeds{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(chosen, budget, suffix)


def plot(chosen: dict[str, list[dict]], budget: int, suffix: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, rs in chosen.items():
        queries = [c["reward_queries"] for c in rs[0]["curve"]]
        for axis, key in zip(axes, ("eval_reward", "eval_accuracy")):
            values = torch.tensor([[c[key] for c in r["curve"]] for r in rs])
            mean = values.mean(0)
            line, = axis.plot(queries, mean, marker="o", markersize=3, label=f"{name} (lr {rs[0]['lr']:g})")
            axis.fill_between(queries, values.min(0).values, values.max(0).values, alpha=0.15,
                              color=line.get_color())
    for axis, title in zip(axes, ("eval reward (digit_logprob)", "eval accuracy (target digit 3)")):
        axis.set_xscale("symlog", linthresh=100)
        axis.axvline(budget, color="gray", lw=0.5)
        axis.set_xlabel("reward queries")
        axis.set_title(f"{title}: mean, band = min..max over seeds")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"seeds{suffix}_reward_vs_queries.png", dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--es-steps", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--table", action="store_true", help="only write the table from the saved runs")
    parser.add_argument("--budget", type=int, default=960, help="reward queries at which methods are compared")
    parser.add_argument("--level", type=float, default=-1.0, help="the fixed eval reward of the queries column")
    parser.add_argument("--fixed-lr", type=float, default=None, help="table of this lr for every method")
    args = parser.parse_args()
    if args.table:
        table(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
