"""Checks of a composed config that run before anything is built."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from metaopt.checks import require

__all__ = ["validate_config", "validate_optimizer_config"]

_NONNEGATIVE = ("lr", "weight_decay", "momentum", "dampening", "meta_lr")
_UNIT_INTERVAL = ("momentum", "dampening")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_optimizer_config(cfg: DictConfig | dict, prefix: str = "optimizer") -> None:
    """Common hyperparameters of any optimizer config, including nested ones (``base``, ``outer_optimizer``)."""
    for key, value in cfg.items():
        name = f"{prefix}.{key}"
        if isinstance(value, (DictConfig, dict)):
            validate_optimizer_config(value, name)
        elif key in _NONNEGATIVE:
            require(name, value, _number(value) and value >= 0, "a finite number >= 0")
            if key in _UNIT_INTERVAL:
                require(name, value, value < 1, "a number in [0, 1)")
        elif key == "eps":
            require(name, value, _number(value) and value > 0, "a finite number > 0")
        elif key == "betas":
            pair = isinstance(value, Sequence) and not isinstance(value, str)
            ok = pair and len(value) == 2 and all(_number(b) and 0 <= b < 1 for b in value)
            require(name, list(value) if pair else value, ok, "two numbers in [0, 1)")


def validate_config(cfg: DictConfig) -> None:
    require("seed", cfg.seed, isinstance(cfg.seed, int) and cfg.seed >= 0, "a non-negative integer")
    for key in ("log_every", "checkpoint_every"):
        require(key, cfg[key], isinstance(cfg[key], int) and cfg[key] >= 0, "a non-negative integer (0: never)")
    threads = cfg.get("threads")
    require("threads", threads, threads is None or (isinstance(threads, int) and threads > 0),
            "null or a positive integer")
    validate_optimizer_config(cfg.optimizer)
