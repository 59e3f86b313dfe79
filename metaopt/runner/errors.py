"""One-line messages for configuration errors: the field, the value and what is allowed, no traceback.

A ``ValueError`` or ``TypeError`` raised while the runner validates the config or builds the task,
the optimizer and the loop is the user's input, not a bug: the runner prints one line and exits
non-zero. One raised while training is a bug and keeps its traceback. ``HYDRA_FULL_ERROR=1`` shows
the traceback of every error.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from types import TracebackType

__all__ = ["TRAINING_FUNCTIONS", "config_error_message", "full_error_requested"]

# Frames of these functions (in metaopt/run.py) mean the error happened while training.
TRAINING_FUNCTIONS = frozenset({"_train"})
_RUN_FILE = os.path.join("metaopt", "run.py")

# The config group a module's error belongs to, by the module's prefix.
_GROUPS = (("metaopt.tasks", "task"), ("metaopt.optim", "optimizer"), ("metaopt.outer", "outer"),
           ("metaopt.unrolled", "outer"), ("metaopt.bilevel", "outer"), ("metaopt.games", "task"))


def full_error_requested() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")


def _frames(tb: TracebackType | None):
    while tb is not None:
        yield tb.tb_frame
        tb = tb.tb_next


def _unwrap(error: BaseException) -> BaseException:
    """Hydra's ``InstantiationException`` wraps the builder's own error; that one says what went wrong."""
    from hydra.errors import InstantiationException

    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return error


def _raised_while_training(error: BaseException) -> bool:
    seen = error
    while seen is not None:
        if any(f.f_code.co_name in TRAINING_FUNCTIONS and f.f_code.co_filename.endswith(_RUN_FILE)
               for f in _frames(seen.__traceback__)):
            return True
        seen = seen.__cause__
    return False


def _signature(cls: type) -> str | None:
    """``Name(arg: type = default, …)``, annotations as written (they are strings under PEP 563)."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return None
    parts = []
    for p in parameters:
        part = p.name if p.kind is not p.VAR_KEYWORD else f"**{p.name}"
        if p.annotation is not p.empty:
            part += f": {p.annotation if isinstance(p.annotation, str) else inspect.formatannotation(p.annotation)}"
        if p.default is not p.empty:
            part += f" = {p.default!r}"
        parts.append(part)
    return f"{cls.__name__}({', '.join(parts)})"


def _builder(error: BaseException) -> tuple[str | None, str | None]:
    """The config group and the signature of the metaopt constructor that raised ``error``, if any."""
    group, signature = None, None
    for frame in _frames(error.__traceback__):
        module = frame.f_globals.get("__name__", "")
        for prefix, name in _GROUPS:
            if module.startswith(prefix):
                group = name
                owner = frame.f_locals.get("self")
                if frame.f_code.co_name == "__init__" and owner is not None:
                    signature = _signature(type(owner))
    return group, signature


def config_error_message(error: BaseException, overrides: Sequence[str] = ()) -> str | None:
    """``error`` as one line if it is a configuration error, else ``None`` (a bug: keep the traceback)."""
    from hydra.errors import InstantiationException

    if not isinstance(error, (ValueError, TypeError, InstantiationException)) or _raised_while_training(error):
        return None
    cause = _unwrap(error)
    if not isinstance(cause, (ValueError, TypeError)):
        return None
    text = " ".join(str(cause).split())
    if text.startswith("invalid "):  # metaopt's own checks already name the field, value and what is allowed
        return f"error: {text}"
    group, signature = _builder(cause)
    kind = f"{type(cause).__name__}: " if type(cause).__module__ == "builtins" else ""
    if group is None:  # not raised by a constructor: the message is all there is to say
        return f"error: {kind}{text}"
    involved = [o for o in overrides if o.lstrip("+~").startswith(group)]
    message = f"error: {' '.join(involved)}: {kind}{text}" if involved else f"error: {group}: {kind}{text}"
    if signature:
        message += f" (allowed: {signature})"
    return message
