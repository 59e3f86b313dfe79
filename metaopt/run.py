"""The experiment runner: ``python -m metaopt.run task=… optimizer=… outer=… logger=… seed=…``.

Every object is built with ``hydra.utils.instantiate`` from ``metaopt/conf/``. The runner owns what is not
math: seeding, the progress bar, the NaN/Inf guard, logging (``metrics.jsonl``, ``summary.json``,
plots, wandb) and atomic checkpoints with exact resume.
"""

from __future__ import annotations

import math
import os
import random
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from metaopt.checks import require
from metaopt.runner.folder import RESULT_FILES, RunFolderLock
from metaopt.runner.validate import check_config_pairing, validate_config

# torch, numpy, tqdm, matplotlib, wandb, the checkpoints and the tasks are imported by the functions that
# use them: `metaopt --help` and an invalid override answer before any of them has loaded.


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


# Keys that cannot change what a run computes: a resumed run may differ from its checkpoint in these
# (and in a larger outer.steps). log_every changes only which averages metrics.jsonl holds.
RESUME_FREE_KEYS = ("logger", "progress", "resume", "overwrite", "checkpoint_every", "log_every", "threads",
                    "suggested_threads", "name", "objective")
_FLOAT32_MAX = 3.4028234663852886e38  # float(numpy.finfo(numpy.float32).max), without importing numpy
_ABSENT = "<absent>"


def _check_numbers(container: dict[str, Any]) -> None:
    """Every number in the config, before anything is written."""
    # The tensors these numbers scale are float32 (mostly): inf, NaN or a number past float32's range
    # (e.g. lr=1e300, which becomes inf) can only give NaNs a few steps in.
    for path, value in _leaves(container):
        if isinstance(value, float):
            require(path, value, math.isfinite(value), "a finite number")
            require(path, value, abs(value) <= _FLOAT32_MAX,
                    f"a number within float32 range (|x| <= {_FLOAT32_MAX:.3g}); larger ones overflow to inf")


def _leaves(node: Any, prefix: str = ""):
    """``(dotted path, value)`` of every leaf of a plain (resolved) config; lists are leaves."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def _with_config_path(error: Exception, container: dict[str, Any], root: str) -> Exception | None:
    """``error`` ("invalid <field>: …", raised while building ``root``) renamed to the field's config path.

    Classes name their arguments (``invalid sigma``); the config path (``outer.estimator.sigma``) is
    the unique leaf of the config node being built (else of the whole config) with that last name.
    ``None`` when the name is already a path of the config or no unique leaf has it.
    """
    match = re.match(r"invalid (\S+): ", str(error))
    if match is None:
        return None
    name = match.group(1)
    # every node's path: leaves and the mappings above them (an argument may be a whole mapping)
    paths = sorted({".".join(parts[:i]) for path, _ in _leaves(container)
                    for parts in [path.split(".")] for i in range(1, len(parts) + 1)})
    if name in paths:
        return None
    last = name.rsplit(".", 1)[-1]
    for scope in (root + ".", ""):
        found = [p for p in paths if p.startswith(scope) and p.rsplit(".", 1)[-1] == last]
        if len(found) == 1:
            return ValueError(f"invalid {found[0]}" + str(error)[len(f"invalid {name}"):])
        if found:
            return None
    return None


def _build(root: str, container: dict[str, Any], build):
    """``build()``, its argument errors naming the config path of the bad field."""
    try:
        return build()
    except (ValueError, InstantiationException) as error:
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, ValueError):
            cause = cause.__cause__
        renamed = _with_config_path(cause, container, root) if cause is not None else None
        if renamed is None:
            raise
        raise renamed from error


def _claim_fresh_start(cfg: DictConfig, folder: Path) -> None:
    """A run that starts from step 0 in ``folder``: refuse to replace an earlier run's results unless asked."""
    existing = [name for name in RESULT_FILES if (folder / name).exists()]
    if not existing:
        return
    requeued = cfg.resume in (True, "true", "True") and not (folder / "summary.json").exists()
    if cfg.get("overwrite", False):
        for name in existing:  # no stale summary or checkpoint of the old run next to the new one
            (folder / name).unlink()
    elif not requeued:  # resume=true before the first checkpoint: the job starts again, as documented
        raise FileExistsError(
            f"run folder {folder} holds the results of an earlier run ({', '.join(existing)}): refusing to "
            "overwrite them. Pass overwrite=true to replace them, or choose another hydra.run.dir")


def _check_resume(cfg: DictConfig, container: dict[str, Any], checkpoint: dict[str, Any], path: Path) -> None:
    """Refuse to resume ``checkpoint`` under a config that could change the result, or with nothing to run."""
    from metaopt.runner.checkpoint import CheckpointError

    step = int(checkpoint["step"])
    steps = cfg.outer.get("steps") if isinstance(cfg.get("outer"), DictConfig) else None
    if isinstance(steps, int) and step >= steps:
        raise CheckpointError(f"cannot resume from {path}: checkpoint at step {step} but outer.steps={steps}: "
                              f"nothing left to run (set outer.steps above {step} to continue the run)")
    saved = checkpoint.get("config")
    if saved is None:
        print(f"warning: {path} holds no config (written by an older metaopt): cannot check that this run's "
              "config matches it", file=sys.stderr)
        return
    old, new = dict(_leaves(saved)), dict(_leaves(container))
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if key.split(".")[0] in RESUME_FREE_KEYS or before == after:
            continue
        if key == "outer.steps" and isinstance(before, int) and isinstance(after, int) and after > before:
            continue
        changes.append(f"{key}: {before} -> {after}")
    if changes:
        raise CheckpointError(
            f"cannot resume from {path}: this run's config differs from the one the checkpoint was written "
            "with:\n  " + "\n  ".join(changes) + f"\nOnly {', '.join(RESUME_FREE_KEYS)} and a larger outer.steps "
            "may change on resume; start a new run (another hydra.run.dir) to change the others")


def _param_groups_mismatch(fresh: Any, saved: Any, path: str = "loop") -> str | None:
    """Where an optimizer state in ``saved`` has other param groups than the same one in ``fresh``."""
    if not (isinstance(fresh, dict) and isinstance(saved, dict)):
        return None
    for key, value in fresh.items():
        if key not in saved:
            continue
        if key == "param_groups" and isinstance(value, list) and isinstance(saved[key], list):
            if len(value) != len(saved[key]):
                return f"{path}.param_groups: {len(saved[key])} groups saved, {len(value)} here"
            for mine, theirs in zip(value, saved[key]):
                if isinstance(mine, dict) and isinstance(theirs, dict) and set(mine) != set(theirs):
                    return (f"{path}.param_groups: the saved optimizer has hyperparameters "
                            f"{sorted(set(theirs) - set(mine))} that this one lacks and lacks "
                            f"{sorted(set(mine) - set(theirs))}")
        else:
            found = _param_groups_mismatch(value, saved[key], f"{path}.{key}")
            if found:
                return found
    return None


def _save_hydra_files(cfg: DictConfig, output_dir: Path) -> None:
    """``.hydra/`` (config, hydra config, overrides), written once the run owns its folder.

    Hydra would write them before the run starts (``hydra.output_subdir`` is null in config.yaml), that
    is into a folder another run may own.
    """
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir) / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (("config.yaml", cfg), ("hydra.yaml", OmegaConf.create({"hydra": hydra_cfg})),
                          ("overrides.yaml", hydra_cfg.overrides.task)):
        (folder / name).write_text(OmegaConf.to_yaml(content))


def run(cfg: DictConfig, output_dir: Path, names: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the task, optimizer and loop from ``cfg``, train, and return the summary.

    The run owns its folder while it runs (``RunFolderLock``); a second run into it fails at once.
    """
    origin = _startup_origin.pop() if _startup_origin else time.time()
    validate_config(cfg)
    check_config_pairing(cfg)
    container = OmegaConf.to_container(cfg, resolve=True)
    _check_numbers(container)
    folder, checkpoint_path = _resume_folder(cfg, output_dir)
    rank = int(os.environ.get("RANK", "0"))
    if rank > 0:
        # torchrun: rank 0 owns the run folder; each other rank logs locally and checkpoints its own
        # share of the state (e.g. its particles) in a subfolder, and resumes from there.
        folder = folder / f"rank{rank}"
        checkpoint_path = folder / CHECKPOINT if checkpoint_path else None
    from metaopt.runner.checkpoint import load_checkpoint

    with RunFolderLock(folder):
        checkpoint = load_checkpoint(checkpoint_path) if checkpoint_path else None
        if checkpoint is None:
            _claim_fresh_start(cfg, folder)
        else:
            _check_resume(cfg, container, checkpoint, checkpoint_path)
        if rank == 0:
            _save_hydra_files(cfg, output_dir)
        return _run_owned(cfg, container, folder, checkpoint_path, checkpoint, rank, names, origin)


def _run_owned(cfg: DictConfig, container: dict[str, Any], folder: Path, checkpoint_path: Path | None,
               checkpoint: dict[str, Any] | None, rank: int, names: dict[str, Any] | None,
               origin: float) -> dict[str, Any]:
    import numpy as np
    import torch

    from metaopt.runner.checkpoint import CheckpointError, set_rng_state

    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)

    # Everything is built (and validated) before the first step.
    task = _build("task", container, lambda: instantiate(cfg.task))
    check_config_pairing(cfg, task)
    loop = _build("outer", container, lambda: instantiate(cfg.outer)(
        task=task, optimizer=instantiate(cfg.optimizer), generator=generator))
    start = 0
    elapsed = 0.0
    if checkpoint is not None:
        start, elapsed = int(checkpoint["step"]), checkpoint["train_seconds"]  # past the end: _check_resume
        try:
            # torch optimizers load another optimizer's param groups without a word (and fail at the first
            # step): compare their hyperparameter names first.
            mismatch = _param_groups_mismatch(loop.state_dict(), checkpoint["loop"])
            if mismatch:
                raise ValueError(mismatch)
            loop.load_state_dict(checkpoint["loop"])
            set_rng_state(checkpoint["rng"])
        except (KeyError, ValueError, RuntimeError, IndexError, TypeError) as error:
            raise CheckpointError(
                f"checkpoint {checkpoint_path} does not fit this run ({type(error).__name__}: {error}); it was "
                "written by a run with another task, optimizer or outer loop") from error

    logger_kwargs = dict(names or {})
    if checkpoint is not None and checkpoint.get("wandb_id"):
        logger_kwargs["run_id"] = checkpoint["wandb_id"]
    logger_cfg = cfg.logger if rank == 0 else {"_target_": "metaopt.runner.loggers.LocalLogger",
                                               "_partial_": True}
    logger = instantiate(logger_cfg)(folder=folder, run_config=container,
                                     resume_step=start if checkpoint is not None else None, **logger_kwargs)
    exit_code = 1
    try:
        summary = _train(cfg, loop, logger, folder, start, elapsed, origin, checkpoint, container)
        exit_code = 0
        return summary
    finally:
        logger.finish(exit_code)


def _train(cfg: DictConfig, loop, logger, folder: Path, start: int, elapsed: float,
           origin: float, checkpoint: dict[str, Any] | None, container: dict[str, Any]) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from metaopt.runner.checkpoint import rng_state, save_checkpoint
    from metaopt.runner.plots import plot_curves

    log_every, checkpoint_every, eval_every = cfg.log_every, cfg.checkpoint_every, loop.eval_every
    eval_images = getattr(loop, "eval_images", None)
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
            if is_eval and eval_images is not None:  # e.g. a diffusion loop's grid of samples at every evaluation
                logger.log_images(eval_images(folder, step), step=step)
            bar.set_postfix({k: f"{v:.4g}" for k, v in list(record.items())[:3]}, refresh=False)
            window, count = {}, 0
        bar.update(1)
        if checkpoint_every and step % checkpoint_every == 0 and step < loop.num_steps:
            seconds = elapsed + time.perf_counter() - began
            save_checkpoint(folder / CHECKPOINT, {
                "step": step, "loop": loop.state_dict(), "rng": rng_state(), "train_seconds": seconds,
                "wandb_id": logger.run_id, "window": window, "window_count": count,
                "config": container,  # what a resumed run is checked against
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

        record_failure(output_dir, message, list(hydra_cfg.overrides.task))
        print(f"job {hydra_cfg.job.num} failed: {message}", file=sys.stderr)
        return None
    objective = summary.get(cfg.get("objective") or "")
    return float(objective) if isinstance(objective, (int, float)) else None


if __name__ == "__main__":
    main()
