"""Argument validation with messages that name the field, the value and what is allowed."""

from __future__ import annotations

from typing import Any


def require(name: str, value: Any, valid: bool, allowed: str) -> None:
    """Raise ``ValueError("invalid <name>: <value> (allowed: <allowed>)")`` unless ``valid``."""
    if not valid:
        raise ValueError(f"invalid {name}: {value!r} (allowed: {allowed})")
