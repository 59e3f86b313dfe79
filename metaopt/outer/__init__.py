"""Every loop the runner drives, in one place: plain training (``TrainingLoop``), APO's online
meta-steps (``APOLoop``), games (``GameLoop``), Generalized Ridge Rider on games (``GRRLoop``), ES/TBPTT
estimators over unrolled problems (``UnrolledLoop``), bilevel hypergradients (``BilevelLoop``) and reward
fine-tuning of diffusion models (``DRaFTLoop``, ``DDPOLoop``, ``DiffusionESLoop``).

Each loop is imported when it is first used (``metaopt.outer.GRRLoop`` imports ``metaopt.outer.grr``), so
that a run's startup pays only for its own loop (a config's ``_target_: metaopt.outer.TrainingLoop``
imports ``metaopt.outer.plain`` alone, not the games, diffusion and bilevel machinery).
"""

import importlib
from typing import TYPE_CHECKING, Any

# name -> the module (in this package) that defines it
_LAZY = {
    "Loop": "loop",
    "TrainingLoop": "plain",
    "APOLoop": "apo",
    "GameLoop": "game",
    "GRRLoop": "grr",
    "UnrolledLoop": "unrolled",
    "BilevelLoop": "bilevel",
    "MODES": "bilevel",
    "DRaFTLoop": "draft",
    "DDPOLoop": "ddpo",
    "DiffusionESLoop": "diffusion_es",
}

__all__ = ["Loop", "TrainingLoop", "APOLoop", "GameLoop", "GRRLoop", "UnrolledLoop", "BilevelLoop", "MODES",
           "DRaFTLoop", "DDPOLoop", "DiffusionESLoop"]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from metaopt.outer.apo import APOLoop
    from metaopt.outer.bilevel import MODES, BilevelLoop
    from metaopt.outer.ddpo import DDPOLoop
    from metaopt.outer.diffusion_es import DiffusionESLoop
    from metaopt.outer.draft import DRaFTLoop
    from metaopt.outer.game import GameLoop
    from metaopt.outer.grr import GRRLoop
    from metaopt.outer.loop import Loop
    from metaopt.outer.plain import TrainingLoop
    from metaopt.outer.unrolled import UnrolledLoop


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'metaopt.outer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"metaopt.outer.{module}"), name)
    globals()[name] = value  # (later look-ups skip this function)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
