"""Matplotlib figures of a run's metrics (headless: the Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_curves", "plot_comparison"]


def _pyplot():
    """``matplotlib.pyplot`` on the Agg backend, imported on the first plot (it costs ~0.5 s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for record in history:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            steps.append(record["step"])
            values.append(float(value))
    return steps, values


def _panels(keys: Sequence[str]) -> list[tuple[str, list[str], bool]]:
    losses = [k for k in keys if "loss" in k]
    accuracies = [k for k in keys if "accuracy" in k]
    others = [k for k in keys if k not in losses and k not in accuracies]
    return [(t, ks, log) for t, ks, log in (("loss", losses, True), ("accuracy", accuracies, False),
                                            ("other", others, False)) if ks]


def _save(fig, path: str | Path, title: str) -> Path:
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """One panel for losses (log scale), one for accuracies, one for everything else, over steps."""
    keys = sorted({k for record in history for k in record if k != "step"})
    panels = _panels(keys) or [("metrics", [], False)]
    fig, axes = _pyplot().subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (name, panel_keys, log) in zip(axes[0], panels):
        for key in panel_keys:
            steps, values = _series(history, key)
            if steps:
                ax.plot(steps, values, label=key, marker="." if len(steps) < 30 else None)
        if log and all(v > 0 for k in panel_keys for v in _series(history, k)[1]):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(name)
        if panel_keys:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, path, title)


def plot_comparison(histories: dict[str, Sequence[dict[str, Any]]], keys: Sequence[str], path: str | Path,
                    title: str = "") -> Path:
    """Overlay the same metrics from several runs (one line per run), one panel per metric."""
    fig, axes = _pyplot().subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, history in histories.items():
            steps, values = _series(history, key)
            if steps:
                ax.plot(steps, values, label=label)
        if "loss" in key:
            ax.set_yscale("log")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path, title)
