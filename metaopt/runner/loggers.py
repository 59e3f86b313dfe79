"""Run loggers: plain local files always, wandb on top (offline unless WANDB_MODE says otherwise).

Local files (the public file contract, see README): ``metrics.jsonl`` with one JSON object per logged
step, flushed line by line so that a crash keeps what was logged, and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

__all__ = ["LocalLogger", "WandbLogger", "read_records"]


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, skipping a line cut short by a kill."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class LocalLogger:
    """Writes ``metrics.jsonl`` and ``summary.json`` into ``folder``; keeps the history for plots."""

    def __init__(self, folder: str | Path, run_config: dict | None = None, resume_step: int | None = None,
                 name: str | None = None, group: str | None = None, run_id: str | None = None):
        # name, group and run_id identify a run on a dashboard; local files need none of them.
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.folder / "metrics.jsonl"
        self.history: list[dict[str, Any]] = []
        if resume_step is not None and self.metrics_path.exists():
            # Lines written after the checkpoint we resume from will be written again.
            self.history = [r for r in read_records(self.metrics_path) if r.get("step", 0) <= resume_step]
            self._rewrite()
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        self._file = open(self.metrics_path, "a", buffering=1)

    def _rewrite(self) -> None:
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            for record in self.history:
                f.write(json.dumps(record) + "\n")
        os.replace(tmp, self.metrics_path)

    @property
    def run_id(self) -> str | None:
        return None

    def log(self, step: int, metrics: dict[str, Any], evaluation: bool | None = None) -> None:
        """Record ``metrics`` at ``step``; ``evaluation``: they include an evaluation's (dashboards send
        those at once; ``None``: guess from keys the previous record did not have)."""
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self.history.append(record)
        self._file.write(json.dumps(record) + "\n")

    def log_summary(self, summary: dict[str, Any]) -> None:
        tmp = self.folder / "summary.json.tmp"
        tmp.write_text(json.dumps({k: _jsonable(v) for k, v in summary.items()}, indent=2) + "\n")
        os.replace(tmp, self.folder / "summary.json")

    def log_images(self, paths: list[Path] | dict[str, Path], step: int | None = None) -> None:
        """Images already written into the run folder: ``paths`` (each under its file's stem) or
        ``{key: path}``, e.g. the same key at every evaluation so that a dashboard shows one image with a
        step slider. The local files are the record; a dashboard logger also sends them."""

    def finish(self, exit_code: int = 0) -> None:
        if not self._file.closed:
            self._file.close()


class WandbLogger(LocalLogger):
    """Local files plus a wandb run: curves, the plots as images, the final metrics as a table.

    ``mode`` defaults to ``$WANDB_MODE`` or ``"offline"`` (no network needed; sync later with
    ``wandb sync <run folder>/wandb/offline-run-*``). ``metadata=True`` also records the installed
    packages, the machine and the git state (off by default: it costs CPU while training starts).

    Each record sent costs wandb's service process about 0.7 ms of CPU, which a fast loop on a small
    machine feels, so step metrics reach wandb at most every ``min_interval`` seconds: the records in
    between are averaged (weighted by the steps each covers) into the next row sent, never dropped.
    Evaluations (``log(..., evaluation=True)``) are sent at once, with the average so far; the last
    record always arrives. ``metrics.jsonl`` keeps every record as logged.

    A resumed run (``run_id`` given) continues the same wandb run (``resume="allow"``). Offline, wandb
    writes each start into a new ``offline-run-*`` folder; the resumed run replays the history kept up
    to ``resume_step`` and removes the earlier folders of the same run, so one folder holds the whole run.
    """

    def __init__(self, folder: str | Path, run_config: dict | None = None, resume_step: int | None = None,
                 project: str = "metaopt", entity: str | None = None, group: str | None = None,
                 name: str | None = None, tags: list[str] | None = None, mode: str | None = None,
                 run_id: str | None = None, metadata: bool = False, min_interval: float = 0.1):
        super().__init__(folder, run_config, resume_step)
        import wandb

        mode = mode or os.environ.get("WANDB_MODE", "offline")
        self._wandb = wandb
        self.min_interval = float(min_interval)
        self._last_sent = -math.inf
        self._last_step = 0            # the last step logged (sent or pending)
        self._pending: dict[str, list] = {}  # key -> [weighted sum, weight] (numbers) or [value, None]
        self._pending_step: int | None = None
        self._previous_keys: set[str] = set()
        self.run = wandb.init(
            project=project, entity=entity, group=group, name=name, tags=list(tags or []),
            config=run_config, dir=str(self.folder), mode=mode, id=run_id,
            resume="allow" if run_id else None, reinit="finish_previous",
            # metadata=False keeps wandb's service idle during training: collecting the installed
            # packages, machine and git state cost a 2-core machine ~10% of a small run's steps.
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True,
                                    x_save_requirements=metadata, x_disable_machine_info=not metadata,
                                    disable_git=not metadata),
        )
        if run_id and mode == "offline":
            self._continue_offline_run(run_id)

    def _continue_offline_run(self, run_id: str) -> None:
        """Replay the kept history into this offline run and remove the earlier folders of the same run."""
        for record in self.history:
            step = record["step"]
            self.run.log({k: v for k, v in record.items() if k != "step"}, step=step)
            self._last_step = step
        current = Path(self.run.dir).parent.resolve()
        wandb_dir = self.folder / "wandb"
        # wandb appends -1, -2, ... to a folder started in the same second as an earlier one
        for earlier in [*wandb_dir.glob(f"offline-run-*-{run_id}"), *wandb_dir.glob(f"offline-run-*-{run_id}-*")]:
            if earlier.is_dir() and earlier.resolve() != current:
                shutil.rmtree(earlier, ignore_errors=True)

    @property
    def run_id(self) -> str | None:
        return self.run.id

    def log(self, step: int, metrics: dict[str, Any], evaluation: bool | None = None) -> None:
        super().log(step, metrics)
        if evaluation is None:  # a caller that does not say: new keys (val_loss, ...) mean an evaluation
            evaluation = not metrics.keys() <= self._previous_keys
        self._previous_keys = set(metrics)
        weight = max(step - self._last_step, 1)
        self._last_step = step
        for key, value in metrics.items():
            value = value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total = self._pending.setdefault(key, [0.0, 0])
                if total[1] is None:
                    total[:] = [0.0, 0]
                total[0] += weight * value
                total[1] += weight
            else:
                self._pending[key] = [value, None]
        self._pending_step = step
        now = time.monotonic()
        if evaluation or now - self._last_sent >= self.min_interval:
            self._send_pending()
            self._last_sent = now

    def _send_pending(self) -> None:
        if self._pending_step is None:
            return
        record = {k: _jsonable(v if weight is None else v / weight) for k, (v, weight) in self._pending.items()}
        self.run.log(record, step=self._pending_step)
        self._pending, self._pending_step = {}, None

    def log_summary(self, summary: dict[str, Any]) -> None:
        self._send_pending()
        super().log_summary(summary)
        rows = [[k, _jsonable(v)] for k, v in summary.items() if isinstance(_jsonable(v), (int, float, str))]
        self.run.summary.update({k: v for k, v in rows})
        # At the last step, so that the table and the plots do not add a row past the end of the curves.
        self.run.log({"summary_table": self._wandb.Table(columns=["metric", "value"],
                                                         data=[[k, str(v)] for k, v in rows])},
                     step=self._last_step)

    def log_images(self, paths: list[Path] | dict[str, Path], step: int | None = None) -> None:
        self._send_pending()
        named = paths.items() if isinstance(paths, dict) else ((Path(p).stem, p) for p in paths)
        images = {key: self._wandb.Image(str(p)) for key, p in named}
        if images:
            self.run.log(images, step=self._last_step if step is None else step)

    def finish(self, exit_code: int = 0) -> None:
        self._send_pending()
        super().finish(exit_code)
        self.run.finish(exit_code=exit_code)
