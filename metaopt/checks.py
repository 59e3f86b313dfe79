"""Argument validation with messages that name the field, the value and what is allowed."""

from __future__ import annotations

import math
import pkgutil
from collections.abc import Mapping
from typing import Any


def require(name: str, value: Any, valid: bool, allowed: str) -> None:
    """Raise ``ValueError("invalid <name>: <value> (allowed: <allowed>)")`` unless ``valid``."""
    if not valid:
        raise ValueError(f"invalid {name}: {value!r} (allowed: {allowed})")


def is_finite_number(value: Any) -> bool:
    """A finite real number: an int or float (not a bool), or a one-element tensor (a tensor lr)."""
    if hasattr(value, "numel") and hasattr(value, "isfinite"):  # a tensor, without importing torch
        return value.numel() == 1 and not value.is_complex() and bool(value.isfinite().all())
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def target_class(node: Any) -> type | None:
    """The class a config node's ``_target_`` names; ``None`` for no node, a function (a user's factory,
    whose product is known only once built) or an unknown name (``instantiate`` reports it)."""
    target = node.get("_target_") if isinstance(node, Mapping) else None
    if not isinstance(target, str):
        return None
    try:
        located = pkgutil.resolve_name(target)
    except (ImportError, AttributeError, ValueError):
        return None
    return located if isinstance(located, type) else None
