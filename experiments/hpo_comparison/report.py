"""Tables (``results.md``) and curves (``curves.png``) from the JSON files of ``run.py``."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments.hpo_comparison.run import ES_METHODS as ES  # noqa: E402
from experiments.hpo_comparison.run import LABELS, METHODS  # noqa: E402
from metaopt.runner.report import markdown_table  # noqa: E402

COLOURS = {"es_single": "C0", "pes": "C1", "es_single_cosine": "C4", "es_single_lr01": "C5", "random": "C2",
           "tpe": "C3"}
PLOTTED = tuple(COLOURS)  # the other one-factor ES variants are in the tables only
SEARCH_SEEDS = (0, 1, 2)  # the seeds every method ran; later seeds confirm a variant chosen on these


def _load(folder: Path) -> dict[str, dict[str, list[dict]]]:
    runs: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(folder.glob("p*_*_seed*.json")):
        result = json.loads(path.read_text())
        runs[result["problem"]][result["method"]].append(result)
    return runs


def _seeds(methods: dict[str, list[dict]], keep) -> dict[str, list[dict]]:
    kept = {m: [r for r in results if keep(r["seed"])] for m, results in methods.items()}
    return {m: results for m, results in kept.items() if results}


def _curve(results: list[dict], key: str = "meta_objective") -> list[list[float | None]]:
    """Per checkpoint, the measured value of every seed (None where nothing fitted yet)."""
    return [[r["measured"][i][key] if r["measured"][i] else None for r in results]
            for i in range(len(results[0]["checkpoints"]))]


def _cell(values: list[float | None], digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def _tables(problem: str, runs: dict[str, list[dict]], note: str = "") -> list[str]:
    methods = [m for m in METHODS if m in runs]
    first = runs[methods[0]][0]
    horizon, checkpoints = first["horizon"], first["checkpoints"]
    shown = [i for i, c in enumerate(checkpoints) if c // horizon in (4, 16, 64, 128) or i == len(checkpoints) - 1]
    seeds = sorted({r["seed"] for m in methods for r in runs[m]})
    lines = [f"### Problem {problem}: {first['dim']} numbers, {horizon}-step runs "
             f"(seeds {', '.join(map(str, seeds))}){note}", "",
             "Measured meta-objective (mean validation loss over the run, averaged over 3 held-out data seeds) "
             "of each method's best-found setting, mean ± standard deviation over search seeds, at each "
             "budget in inner training steps (= training runs' worth × horizon). Lower is better.", ""]
    header = ["method", *(f"{checkpoints[i]:,} steps ({checkpoints[i] // horizon} runs)" for i in shown)]
    rows = []
    curves = {m: _curve(runs[m]) for m in methods}
    best_mean = {i: min(statistics.fmean([v for v in curves[m][i] if v is not None] or [float("inf")])
                        for m in methods) for i in shown}
    for method in methods:
        cells = []
        for i in shown:
            cell = _cell(curves[method][i])
            values = [v for v in curves[method][i] if v is not None]
            if values and statistics.fmean(values) == best_mean[i]:
                cell = f"**{cell}**"
            cells.append(cell)
        rows.append([f"{LABELS[method]} (n={len(runs[method])})", *cells])
    lines += [markdown_table(header, rows).rstrip(), ""]

    # Paired by seed: ES against TPE (same search seed index).
    if "tpe" in runs:
        tpe = {r["seed"]: r for r in runs["tpe"]}
        pair_rows = []
        for method in ES:
            if method not in runs:
                continue
            cells = []
            for i in shown:
                wins = total = 0
                for r in runs[method]:
                    if r["seed"] in tpe and r["measured"][i] and tpe[r["seed"]]["measured"][i]:
                        total += 1
                        wins += r["measured"][i]["meta_objective"] < tpe[r["seed"]]["measured"][i]["meta_objective"]
                cells.append(f"{wins}/{total}")
            pair_rows.append([f"{LABELS[method]} better than TPE", *cells])
        lines += ["Seeds on which the ES method's setting measures better than TPE's at the same budget:", "",
                  markdown_table(header, pair_rows).rstrip(), ""]

    final = len(checkpoints) - 1
    acc_rows = [[LABELS[m], _cell(_curve(runs[m])[final]), _cell(_curve(runs[m], "val_accuracy")[final]),
                 _cell(_curve(runs[m], "test_accuracy")[final]),
                 f"{statistics.fmean(r['steps_spent'] for r in runs[m]):,.0f}",
                 f"{statistics.fmean(r['search_seconds'] for r in runs[m]):.0f}"] for m in methods]
    lines += [f"At the full budget ({checkpoints[final]:,} steps): the measured setting's accuracy, the steps "
              "actually spent (an ES outer step costs 320, so ES stops at the last whole step that fits) and "
              "the search's wall time on this shared 2-core machine (one thread):", "",
              markdown_table(["method", "meta-objective", "val accuracy", "test accuracy", "steps spent",
                              "search s"], acc_rows).rstrip(), ""]
    if "random" in runs or "tpe" in runs:
        search_rows = []
        for m in ("random", "tpe"):
            if m in runs:
                values = [[r["in_search_best"][i] for r in runs[m]] for i in shown]
                search_rows.append([LABELS[m], *(_cell(v) for v in values)])
        lines += ["For reference, the best trial value as the search saw it (its own data seed, the value it "
                  "selected on, optimistically biased by the selection):", "",
                  markdown_table(header, search_rows).rstrip(), ""]
    return lines


def _plot(panels: list[tuple[str, dict[str, list[dict]]]], path: Path) -> Path:
    """One panel per (title suffix, {method: results}) of one problem."""
    columns = 2 if len(panels) == 4 else len(panels)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4.2 * rows), squeeze=False)
    for ax, (suffix, runs) in zip(axes.flat, panels):
        first = next(iter(runs.values()))[0]
        for method in PLOTTED:
            if method not in runs:
                continue
            checkpoints = runs[method][0]["checkpoints"]
            curve = _curve(runs[method])
            xs = [c for c, v in zip(checkpoints, curve) if any(x is not None for x in v)]
            values = [[x for x in v if x is not None] for v in curve if any(x is not None for x in v)]
            ax.plot(xs, [statistics.fmean(v) for v in values], "o-", ms=3, color=COLOURS[method],
                    label=f"{LABELS[method]} ({len(runs[method])} seeds)")
            ax.fill_between(xs, [min(v) for v in values], [max(v) for v in values], color=COLOURS[method],
                            alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("inner training steps spent")
        ax.set_ylabel("meta-objective of best found (held-out seeds)")
        ax.set_title(f"{first['dim']} numbers, {first['horizon']}-step runs{suffix}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        low = min(min(v for v in vs if v is not None) for m in runs.values() for vs in _curve(m))
        ax.set_ylim(low * 0.95, min(1.0, ax.get_ylim()[1]))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(results: Path, out: Path) -> None:
    loaded = _load(results)
    if not loaded:
        raise SystemExit(f"no results in {results}: run python -m experiments.hpo_comparison.run first")
    runs = {problem: _seeds(methods, lambda seed: seed in SEARCH_SEEDS) for problem, methods in loaded.items()}
    confirming = {problem: _seeds(methods, lambda seed: seed not in SEARCH_SEEDS)
                  for problem, methods in loaded.items()}
    lines = ["# Compute-matched search: results", "",
             "Written by `python -m experiments.hpo_comparison.run --report` from `results/*.json`.", ""]
    for problem in ("3", "12", "20"):
        if runs.get(problem):
            lines += _tables(problem, runs[problem])
        if confirming.get(problem):
            lines += _tables(problem, confirming[problem], note=": confirmation on fresh search seeds")
    (out / "results.md").write_text("\n".join(lines))
    panels = [(" (seeds 0-2)" if confirming.get(p) else "", runs[p]) for p in ("3", "12", "20") if runs.get(p)]
    panels += [(", fresh seeds", confirming[p]) for p in ("3", "12", "20") if confirming.get(p)]
    _plot(panels, out / "curves.png")
    print("\n".join(lines))
