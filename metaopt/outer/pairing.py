"""Which tasks and optimizers each outer loop accepts, checked from the config before anything is built.

Each loop class declares ``accepts`` (the kinds of task it drives) and ``optimizer_refusal(optimizer,
kind, outer)`` (why it cannot use an optimizer class with the outer config ``outer``, or ``None``);
``check_pairing`` turns a refusal into an error that names the pairing, the reason and what to use instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from metaopt.checks import target_class
from metaopt.tasks.bilevel.problem import BilevelProblem
from metaopt.tasks.diffusion.base import DiffusionTask
from metaopt.tasks.games.game import Game
from metaopt.tasks.supervised import SupervisedTask
from metaopt.tasks.unrolled.problem import UnrolledProblem

__all__ = ["PairingError", "check_pairing", "task_kind", "target_class", "LOOPS_FOR"]

KINDS = {"supervised": SupervisedTask, "game": Game, "bilevel": BilevelProblem, "unrolled": UnrolledProblem,
         "diffusion": DiffusionTask}
ES_LOOPS = "an ES/TBPTT loop (outer=pes, es_single, truncated_es, full_es, tbptt)"
LOOPS_FOR = {
    "supervised": f"outer=none or outer=apo to train it, {ES_LOOPS} to tune its optimizer's hyperparameters",
    "game": f"outer=game to play it, outer=grr for diverse solutions, {ES_LOOPS} to tune the players' optimizer",
    "bilevel": "outer=bilevel_cold or outer=bilevel_warm",
    "unrolled": ES_LOOPS,
    "diffusion": "outer=draft (DRaFT, DRaFT-K, DRaFT-LV), outer=ddpo, outer=draft_es, or an ES loop over its "
                 "sampling chain (outer=es_single, pes, truncated_es, full_es) to fine-tune it on its reward",
}


class PairingError(ValueError):
    """An outer loop that cannot drive this task or use this optimizer."""


def task_kind(task_type: type | None) -> str | None:
    """``supervised``, ``game``, ``bilevel``, ``unrolled`` or ``diffusion``; ``None`` when unknown (e.g. a
    factory function)."""
    if not isinstance(task_type, type):
        return None
    return next((kind for kind, base in KINDS.items() if issubclass(task_type, base)), None)


def check_pairing(loop_type: type, task_type: type | None, optimizer_type: type | None,
                  outer: Mapping[str, Any] | None = None, names: str = "") -> None:
    """Raise ``PairingError`` when ``loop_type`` cannot drive a ``task_type`` task with ``optimizer_type``
    under the outer config ``outer``, or when that config holds keys the loop does not take (e.g. a
    hypergradient on an ES loop)."""
    where = f"invalid pairing {names}: " if names else "invalid pairing: "
    loop = loop_type.__name__
    kind = task_kind(task_type)
    if kind is not None and kind not in loop_type.accepts:
        drives = " or ".join(f"{k} tasks" for k in loop_type.accepts)
        raise PairingError(f"{where}{loop} drives {drives}, and {task_type.__name__} is a {kind} task "
                           f"(use {LOOPS_FOR[kind]})")
    if optimizer_type is not None:
        refusal = loop_type.optimizer_refusal(optimizer_type, kind, outer)
        if refusal is not None:
            raise PairingError(f"{where}{refusal}")
    parameters = inspect.signature(loop_type.__init__).parameters
    built_by_runner = {"task", "optimizer", "generator", "self"}
    allowed = sorted(set(parameters) - built_by_runner)
    unknown = sorted(k for k in (outer or {}) if not k.startswith("_") and k not in parameters)
    if unknown:
        raise PairingError(f"{where}outer.{unknown[0]} is not an argument of {loop} (a config group of another "
                           f"outer loop? {loop} takes: {', '.join(allowed)})")
