"""A Hydra callback that gathers a sweep's runs into one table and one comparison plot."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from metaopt.runner.plots import plot_comparison

__all__ = ["SweepReport", "collect_runs", "format_table", "markdown_table"]


def collect_runs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Each run folder under ``sweep_dir`` with a ``summary.json``: its overrides, summary and history."""
    runs = []
    for summary_path in sorted(Path(sweep_dir).glob("*/summary.json"), key=lambda p: p.parent.name):
        folder = summary_path.parent
        overrides_path = folder / ".hydra" / "overrides.yaml"
        overrides = []
        if overrides_path.exists():
            from omegaconf import OmegaConf

            overrides = [o for o in OmegaConf.load(overrides_path) if not str(o).startswith("+experiment")]
        history = []
        metrics = folder / "metrics.jsonl"
        if metrics.exists():
            history = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        runs.append({"folder": folder, "label": " ".join(map(str, overrides)) or folder.name,
                     "summary": json.loads(summary_path.read_text()), "history": history})
    return runs


def markdown_table(columns: list[str], rows: list[list[Any]],
                   float_format: str | Callable[[float], str] = "{:.4g}") -> str:
    """A Markdown table (also readable in a terminal), floats written with ``float_format``; ends in a newline."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return float_format(value) if callable(float_format) else float_format.format(value)
        return str(value)

    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def format_table(runs: list[dict[str, Any]], columns: list[str], label: str = "run") -> str:
    """The summaries of ``collect_runs`` as a Markdown table, one row per run."""
    return markdown_table([label, *columns], [[r["label"], *(r["summary"].get(c, "") for c in columns)]
                                              for r in runs])


def _default_columns(runs: list[dict[str, Any]]) -> list[str]:
    """Numeric summary keys: task metrics first (test, val, train), then everything else but bookkeeping."""
    keys = {k for r in runs for k, v in r["summary"].items() if isinstance(v, (int, float))}
    keys -= {"seed", "steps", "startup_seconds"}

    def rank(key: str) -> tuple[int, str]:
        for i, prefix in enumerate(("test_", "val_", "train_loss", "train_acc")):
            if key.startswith(prefix):
                return i, key
        return 9, key

    return sorted(keys, key=rank)


class SweepReport(Callback):
    """At the end of ``-m`` sweeps: ``report.md`` (a table of every run's summary) and ``comparison.png``."""

    def __init__(self, columns: list[str] | None = None, plot_keys: list[str] | None = None):
        self.columns = list(columns) if columns else None
        self.plot_keys = list(plot_keys or ["val_loss", "val_accuracy"])

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        runs = collect_runs(sweep_dir)
        if not runs:
            return
        columns = self.columns or _default_columns(runs)
        table = format_table(runs, columns)
        (sweep_dir / "report.md").write_text(table)
        keys = [k for k in self.plot_keys if any(k in rec for r in runs for rec in r["history"])]
        if keys:
            plot_comparison({r["label"]: r["history"] for r in runs}, keys, sweep_dir / "comparison.png",
                            title=sweep_dir.name)
        print(f"\nSweep summary ({sweep_dir}):\n{table}\n")
        if keys:
            print(f"Comparison plot: {sweep_dir / 'comparison.png'}")
