"""A user cache for pretrained weights (the digits DDPM, the digits classifier), keyed by a config hash."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["cache_dir", "cached_state"]


def cache_dir() -> Path:
    """``$METAOPT_CACHE`` when set, else ``~/.cache/metaopt``."""
    return Path(os.environ.get("METAOPT_CACHE") or Path.home() / ".cache" / "metaopt").expanduser()


def cached_state(name: str, key: dict[str, Any], build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, Any]:
    """The state dict saved under ``name`` for the config ``key``; ``build()`` it (and save it) when absent.

    The file name holds a hash of ``key``, so that a change of architecture or training budget never
    reads weights trained for another config. Written atomically: a crash leaves no half file.
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"{name}-{digest}.pt"
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    state = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(state, partial)
    os.replace(partial, path)
    return state
