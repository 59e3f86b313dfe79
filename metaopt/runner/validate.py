"""Checks of a composed config that run before anything is built."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from metaopt.checks import is_finite_number, require, target_class

__all__ = ["validate_config", "validate_optimizer_config", "check_config_pairing"]

_NONNEGATIVE = ("lr", "weight_decay", "momentum", "dampening", "meta_lr")
_UNIT_INTERVAL = ("momentum", "dampening")


def validate_optimizer_config(cfg: DictConfig | dict, prefix: str = "optimizer") -> None:
    """An optimizer config, and the optimizer configs nested in it (APO's ``base``): an optimizer with a
    spec (``metaopt.optim.specs``) is checked against it (every argument known, every value in its
    domain); the others by the common names (lr, momentum, betas, eps, …)."""
    from metaopt.optim.specs import spec_for

    spec = spec_for(target_class(cfg))
    if spec is not None:
        kwargs = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        spec.functional_kwargs({k: v for k, v in kwargs.items() if not k.startswith("_")}, prefix)
        return
    for key, value in cfg.items():
        name = f"{prefix}.{key}"
        if isinstance(value, (DictConfig, dict)):
            validate_optimizer_config(value, name)
        elif key in _NONNEGATIVE:
            require(name, value, is_finite_number(value) and value >= 0, "a finite number >= 0")
            if key in _UNIT_INTERVAL:
                require(name, value, value < 1, "a number in [0, 1)")
        elif key == "eps":
            require(name, value, is_finite_number(value) and value > 0, "a finite number > 0")
        elif key == "betas":
            pair = isinstance(value, Sequence) and not isinstance(value, str)
            ok = pair and len(value) == 2 and all(is_finite_number(b) and 0 <= b < 1 for b in value)
            require(name, list(value) if pair else value, ok, "two numbers in [0, 1)")


def validate_config(cfg: DictConfig) -> None:
    require("seed", cfg.seed, isinstance(cfg.seed, int) and cfg.seed >= 0, "a non-negative integer")
    for key in ("log_every", "checkpoint_every"):
        value = cfg[key]
        require(key, value, isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                "a non-negative integer (0: never), not a bool")
    threads = cfg.get("threads")
    require("threads", threads, threads is None or (isinstance(threads, int) and threads > 0),
            "null or a positive integer")
    overwrite = cfg.get("overwrite", False)
    require("overwrite", overwrite, isinstance(overwrite, bool), "true or false")
    validate_optimizer_config(cfg.optimizer)
    outer_optimizer = cfg.outer.get("outer_optimizer") if isinstance(cfg.get("outer"), DictConfig) else None
    if isinstance(outer_optimizer, DictConfig):
        validate_optimizer_config(outer_optimizer, "outer.outer_optimizer")


def _choices() -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
        return ", ".join(f"{group}={choices[group]}" for group in ("outer", "optimizer", "task") if group in choices)
    except (ValueError, ImportError):  # not inside a Hydra run (the compose API, tests)
        return ""


def check_config_pairing(cfg: DictConfig, task: Any = None) -> None:
    """Refuse, before anything is built, an outer loop that cannot drive the task or use the optimizer
    (``metaopt.outer.pairing``); with the built ``task``, check what its config could not tell."""
    from metaopt.outer.pairing import check_pairing

    loop_type = target_class(cfg.outer)
    if loop_type is None or not hasattr(loop_type, "accepts"):
        return
    task_type = type(task) if task is not None else target_class(cfg.task)
    if task is not None and target_class(cfg.task) is type(task):
        return  # checked before it was built
    check_pairing(loop_type, task_type, target_class(cfg.optimizer), cfg.outer, _choices())
