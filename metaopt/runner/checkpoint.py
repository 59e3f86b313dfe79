"""Atomic checkpoints with every RNG state, loaded with ``torch.load(weights_only=True)``.

A checkpoint that cannot be read or written raises ``CheckpointError`` naming the file and the cause;
a failed write removes its partial temporary file and leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]


class CheckpointError(RuntimeError):
    """A checkpoint could not be read, written, or does not fit the run resuming from it."""


def rng_state() -> dict[str, Any]:
    """Python's, numpy's and torch's global RNG states, in types ``weights_only`` loading accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _disk_full(error: BaseException) -> bool:
    # torch.save on a full disk raises a RuntimeError from its zip writer ("unexpected pos"), not ENOSPC.
    return getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "unexpected pos" in str(error)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to a temporary file in the same folder, fsync it, then rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as error:
        tmp.unlink(missing_ok=True)
        if _disk_full(error):
            free = shutil.disk_usage(path.parent).free / 2**20
            cause = f"the disk is full ({free:.0f} MiB free; {type(error).__name__}: {error})"
        else:
            cause = f"{type(error).__name__}: {error}"
        kept = "the previous checkpoint is kept" if path.exists() else "no previous checkpoint exists"
        raise CheckpointError(f"could not write checkpoint {path}: {cause}; {kept}") from error


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``; ``CheckpointError`` (naming the file and the cause) if it is unreadable."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: an empty file (a write that never finished?); "
                              "delete it to start from scratch")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or not a checkpoint ({size} bytes, "
                              "not the zip archive torch.save writes); delete it to start from scratch")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # torch's own message may advise weights_only=False, which would run code from the file.
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or not a checkpoint "
                              f"({type(error).__name__}: {first_line[:200]})") from None
    if not isinstance(checkpoint, dict) or "step" not in checkpoint:
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or not a checkpoint "
                              "(not the dict a run writes)")
    return checkpoint
