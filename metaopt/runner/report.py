"""A Hydra callback that checks a sweep's jobs before the first starts, then gathers their runs into one
table and one comparison plot, marking the jobs that failed."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from metaopt.runner.loggers import read_records

__all__ = ["SweepReport", "collect_runs", "format_table", "markdown_table", "record_failure", "sweep_jobs"]

ERROR_FILE = "error.txt"


def record_failure(folder: str | Path, message: str, overrides: list[str] | None = None) -> None:
    """Mark a sweep job's folder as failed: ``error.txt`` holds ``message`` (one line), then the job's overrides
    (the report's label for a job that failed before writing ``.hydra/``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = " ".join(message.split()) + "\n"
    if overrides is not None:
        text += "overrides: " + json.dumps(list(overrides)) + "\n"
    (folder / ERROR_FILE).write_text(text)


def _job_order(folder: Path) -> tuple[int, str]:
    """Sweep job folders (``<job number>-<overrides>``) in job order: 2 before 10."""
    number = folder.name.split("-", 1)[0]
    return (int(number) if number.isdigit() else -1, folder.name)


def collect_runs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Each job folder under ``sweep_dir``: its overrides, summary and history, and ``error`` (``None``
    for a job that finished; the recorded error, or the fact that it has no summary, for one that did not)."""
    from omegaconf import OmegaConf

    runs = []
    folders = {p.parent for p in Path(sweep_dir).glob("*/summary.json")}
    folders |= {p.parent.parent for p in Path(sweep_dir).glob("*/.hydra/overrides.yaml")}
    folders |= {p.parent for p in Path(sweep_dir).glob(f"*/{ERROR_FILE}")}
    for folder in sorted(folders, key=_job_order):
        overrides_path = folder / ".hydra" / "overrides.yaml"
        summary_path, error_path = folder / "summary.json", folder / ERROR_FILE
        error_lines = error_path.read_text().splitlines() if error_path.exists() else []
        overrides = []
        if overrides_path.exists():
            overrides = list(OmegaConf.load(overrides_path))
        elif len(error_lines) > 1 and error_lines[1].startswith("overrides: "):
            overrides = json.loads(error_lines[1][len("overrides: "):])
        overrides = [o for o in overrides if not str(o).startswith("+experiment")]
        metrics = folder / "metrics.jsonl"
        history = read_records(metrics) if metrics.exists() else []
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        error = None
        if error_lines:
            error = error_lines[0].strip()
        elif not summary:
            error = "no summary.json (the job did not finish)"
        runs.append({"folder": folder, "label": " ".join(map(str, overrides)) or folder.name,
                     "summary": summary, "history": history, "error": error})
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
    """The summaries of ``collect_runs`` as a Markdown table, one row per run; a failed run shows its error."""
    any_failed = bool(_failed(runs))
    rows = []
    for r in runs:
        if r.get("error"):
            cells = ["FAILED", *[""] * (len(columns) - 1)] if columns else []
            rows.append([r["label"], *cells, r["error"].replace("|", "\\|")])
        else:
            rows.append([r["label"], *(r["summary"].get(c, "") for c in columns), *([""] if any_failed else [])])
    return markdown_table([label, *columns, *(["error"] if any_failed else [])], rows)


def _failed(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if r.get("error")]


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The override lists of a basic-sweeper sweep's jobs, in launch order (as ``BasicSweeper`` expands them)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    overrides = OverridesParser.create().parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


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
    """Around ``-m`` sweeps. Before the first job: compose and validate every job's config (basic sweeper)
    and name the invalid ones at once. After the last: ``report.md`` (a table of every run's summary, failed
    jobs marked with their error) and ``comparison.png``; exit non-zero if a job failed."""

    def __init__(self, columns: list[str] | None = None, plot_keys: list[str] | None = None,
                 validate: bool = True):
        self.columns = list(columns) if columns else None
        self.plot_keys = list(plot_keys or ["val_loss", "val_accuracy"])
        self.validate = validate

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        if not self.validate or "BasicSweeper" not in str(config.hydra.sweeper.get("_target_", "")):
            return  # other sweepers (Optuna) choose their jobs' values as they go
        from hydra import compose

        from metaopt.runner.errors import config_error_message
        from metaopt.runner.validate import validate_config

        jobs = sweep_jobs(config)
        invalid = []
        for num, overrides in enumerate(jobs):
            try:
                validate_config(compose(config_name, overrides=overrides))
            except Exception as error:  # a job's own run reports what cannot be checked here
                message = config_error_message(error, overrides)
                if message is not None:
                    invalid.append(f"  job {num} ({' '.join(overrides)}): {message}")
        if invalid:
            print(f"{len(invalid)} of {len(jobs)} jobs have an invalid config; they will fail at once, the others "
                  f"run, and report.md marks them:\n" + "\n".join(invalid), file=sys.stderr, flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        runs = collect_runs(sweep_dir)
        if not runs:
            return
        finished = [r for r in runs if not r.get("error")]
        columns = self.columns or _default_columns(finished or runs)
        table = format_table(runs, columns)
        (sweep_dir / "report.md").write_text(table)
        keys = [k for k in self.plot_keys if any(k in rec for r in runs for rec in r["history"])]
        if keys:
            from metaopt.runner.plots import plot_comparison

            plot_comparison({r["label"]: r["history"] for r in runs if r["history"]}, keys,
                            sweep_dir / "comparison.png", title=sweep_dir.name)
        print(f"\nSweep summary ({sweep_dir}):\n{table}\n")
        if keys:
            print(f"Comparison plot: {sweep_dir / 'comparison.png'}")
        failed = _failed(runs)
        if failed:
            print(f"{len(failed)} of {len(runs)} jobs failed (see report.md)", file=sys.stderr)
            # Hydra's callbacks turn an exception into a warning; SystemExit ends the sweep non-zero.
            raise SystemExit(1)
