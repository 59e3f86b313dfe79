"""Every loop the runner drives, in one place: plain training (``TrainingLoop``), APO's online
meta-steps (``APOLoop``), games (``GameLoop``), Generalized Ridge Rider on games (``GRRLoop``), ES/TBPTT
estimators over unrolled problems (``UnrolledLoop``), bilevel hypergradients (``BilevelLoop``) and reward
fine-tuning of diffusion models (``DRaFTLoop``, ``DDPOLoop``, ``DiffusionESLoop``)."""

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

__all__ = ["Loop", "TrainingLoop", "APOLoop", "GameLoop", "GRRLoop", "UnrolledLoop", "BilevelLoop", "MODES",
           "DRaFTLoop", "DDPOLoop", "DiffusionESLoop"]
