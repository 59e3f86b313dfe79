"""The experiment runner: ``python -m metaopt.run task=… optimizer=… outer=… logger=… seed=…``.

Every object is built with ``hydra.utils.instantiate`` from ``metaopt/conf/``. The runner owns what is not
math: seeding, the progress bar, the NaN/Inf guard, logging (``metrics.jsonl``, ``summary.json``,
plots, wandb) and atomic checkpoints with exact resume.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

# torch, numpy, tqdm, matplotlib, wandb and the tasks are imported by the functions that use them:
# `metaopt --help`, a bad override or a config error then answer before any of them has loaded.


def _process_start_time() -> float:
    """When this process started (Linux ``/proc``), else when this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


# Startup is counted from process start for the first run of a process, from run() for later ones
# (the basic launcher runs a sweep's jobs one after another in one process).
_startup_origin = [_process_start_time()]
CHECKPOINT = "checkpoint.pt"

__all__ = ["main", "run", "DivergenceError"]


class DivergenceError(RuntimeError):
    """A step produced a NaN or Inf metric."""


def _resume_folder(cfg: DictConfig, output_dir: Path) -> tuple[Path, Path | None]:
    """The folder to write into and the checkpoint to resume from (``None``: start fresh)."""
    resume = cfg.resume
    if resume in (None, False, "false", "False"):
        return output_dir, None
    if resume in (True, "true", "True"):
        checkpoint = output_dir / CHECKPOINT
        if not checkpoint.exists():
            print(f"resume=true: no checkpoint in {output_dir}, starting from scratch")
            return output_dir, None
        return output_dir, checkpoint
    folder = Path(str(resume)).expanduser()
    if not (folder / CHECKPOINT).exists():
        raise ValueError(f"invalid resume: {str(resume)!r} (allowed: true, false, or a run folder holding "
                         f"{CHECKPOINT}; {folder / CHECKPOINT} does not exist)")
    return folder, folder / CHECKPOINT


def _wandb_names(cfg: DictConfig) -> dict[str, Any]:
    """A sweep's runs share a wandb group named after the sweep (``multirun/<date>/<time>``: ``<date>/<time>``,
    prefixed with the experiment's name when one was chosen); each run is named by its overrides."""
    hydra_cfg = HydraConfig.get()
    name = hydra_cfg.job.override_dirname or None
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return {"name": name}
    group = "/".join(Path(hydra_cfg.sweep.dir).parts[-2:])
    experiment = hydra_cfg.runtime.choices.get("experiment")
    return {"group": f"{experiment}/{group}" if experiment else group, "name": name}


def _nonfinite(metrics: dict[str, float]) -> str | None:
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            return key
    return None


def run(cfg: DictConfig, output_dir: Path, names: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the task, optimizer and loop from ``cfg``, train, and return the summary."""
    origin = _startup_origin.pop() if _startup_origin else time.time()
    import random

    import numpy as np
    import torch

    from metaopt.runner.checkpoint import load_checkpoint, set_rng_state
    from metaopt.runner.validate import validate_config

    validate_config(cfg)
    folder, checkpoint_path = _resume_folder(cfg, output_dir)
    rank = int(os.environ.get("RANK", "0"))
    if rank > 0:
        # torchrun: rank 0 owns the run folder; each other rank logs locally and checkpoints its own
        # share of the state (e.g. its particles) in a subfolder, and resumes from there.
        folder = folder / f"rank{rank}"
        checkpoint_path = folder / CHECKPOINT if checkpoint_path else None
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)

    # Everything is built (and validated) before the first step.
    task = instantiate(cfg.task)
    loop = instantiate(cfg.outer)(task=task, optimizer=instantiate(cfg.optimizer), generator=generator)
    checkpoint = load_checkpoint(checkpoint_path) if checkpoint_path else None
    start = 0
    elapsed = 0.0
    if checkpoint is not None:
        loop.load_state_dict(checkpoint["loop"])
        set_rng_state(checkpoint["rng"])
        start, elapsed = checkpoint["step"], checkpoint["train_seconds"]

    logger_kwargs = dict(names or {})
    if checkpoint is not None and checkpoint.get("wandb_id"):
        logger_kwargs["run_id"] = checkpoint["wandb_id"]
    logger_cfg = cfg.logger if rank == 0 else {"_target_": "metaopt.runner.loggers.LocalLogger",
                                               "_partial_": True}
    logger = instantiate(logger_cfg)(folder=folder, run_config=OmegaConf.to_container(cfg, resolve=True),
                                     resume_step=start if checkpoint is not None else None, **logger_kwargs)
    exit_code = 1
    try:
        summary = _train(cfg, loop, logger, folder, start, elapsed, origin, checkpoint)
        exit_code = 0
        return summary
    finally:
        logger.finish(exit_code)


def _train(cfg: DictConfig, loop, logger, folder: Path, start: int, elapsed: float,
           origin: float, checkpoint: dict[str, Any] | None) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from metaopt.runner.checkpoint import rng_state, save_checkpoint
    from metaopt.runner.plots import plot_curves

    log_every, checkpoint_every, eval_every = cfg.log_every, cfg.checkpoint_every, loop.eval_every
    # The metrics averaged since the last logged step travel in checkpoints, so that a checkpoint
    # between two logged steps resumes into the same averages.
    window: dict[str, float] = dict(checkpoint.get("window", {})) if checkpoint else {}
    count = int(checkpoint.get("window_count", 0)) if checkpoint else 0
    startup_seconds = None
    bar = tqdm(total=loop.num_steps, initial=start, desc=cfg.get("name") or "train", mininterval=0.5,
               dynamic_ncols=True,
               disable=cfg.get("progress") is False or int(os.environ.get("RANK", "0")) > 0)
    began = time.perf_counter()
    for step in range(start + 1, loop.num_steps + 1):
        if startup_seconds is None:
            startup_seconds = time.time() - origin
        metrics = loop.step()
        bad = _nonfinite(metrics)
        if bad is not None:
            logger.log(step, metrics)
            bar.close()
            raise DivergenceError(f"{bad} is {metrics[bad]} at step {step}: stopping. Metrics logged up to "
                                  f"this step are in {logger.metrics_path}")
        for key, value in metrics.items():
            window[key] = window.get(key, 0.0) + value
        count += 1
        is_eval = (eval_every and step % eval_every == 0) or step == loop.num_steps
        if (log_every and step % log_every == 0) or is_eval:
            record = {k: v / count for k, v in window.items()}
            if is_eval:
                record.update(loop.evaluate())
            logger.log(step, record, evaluation=bool(is_eval))
            bar.set_postfix({k: f"{v:.4g}" for k, v in list(record.items())[:3]}, refresh=False)
            window, count = {}, 0
        bar.update(1)
        if checkpoint_every and step % checkpoint_every == 0 and step < loop.num_steps:
            seconds = elapsed + time.perf_counter() - began
            save_checkpoint(folder / CHECKPOINT, {
                "step": step, "loop": loop.state_dict(), "rng": rng_state(), "train_seconds": seconds,
                "wandb_id": logger.run_id, "window": window, "window_count": count,
            })
    bar.close()
    train_seconds = elapsed + time.perf_counter() - began
    summary = {**loop.summary(), "train_seconds": train_seconds, "steps": loop.num_steps, "seed": cfg.seed}
    if startup_seconds is not None:
        summary["startup_seconds"] = startup_seconds
    logger.log_summary(summary)
    plots = [plot_curves(logger.history, folder / "curves.png", title=cfg.get("name") or "")]
    plots += loop.plots(folder)
    logger.log_images(plots)
    _print_summary(summary, folder)
    return summary


def _print_summary(summary: dict[str, Any], folder: Path) -> None:
    width = max(len(k) for k in summary)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    for key, value in summary.items():
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {shown}")
    print("\n" + "\n".join(lines) + f"\n\nrun folder: {folder}")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """``metaopt …`` (``python -m metaopt.run …``): one Hydra job; returns the summary's ``objective``.

    A configuration error (a bad value, an object that cannot be built) prints one line, without a
    traceback, and exits non-zero; ``HYDRA_FULL_ERROR=1`` shows the traceback. In a ``-m`` sweep a
    failed job does not stop the others: its error goes to ``error.txt`` in its folder, the sweep's
    ``report.md`` marks it, the sweeper gets ``None`` (Optuna records a failed trial and goes on), and
    the sweep exits non-zero at the end.
    """
    from metaopt.runner.errors import config_error_message, full_error_requested

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        summary = run(cfg, output_dir, _wandb_names(cfg))
    except Exception as error:
        if full_error_requested():
            raise
        message = config_error_message(error, list(hydra_cfg.overrides.task))
        if not sweep:
            if message is None:
                raise
            print(message, file=sys.stderr)
            print("(HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
            sys.exit(2)
        if message is None:
            traceback.print_exc()
            message = f"error: {type(error).__name__}: {' '.join(str(error).split())}"
        from metaopt.runner.report import record_failure

        record_failure(output_dir, message)
        print(f"job {hydra_cfg.job.num} failed: {message}", file=sys.stderr)
        return None
    objective = summary.get(cfg.get("objective") or "")
    return float(objective) if isinstance(objective, (int, float)) else None


if __name__ == "__main__":
    main()
