"""What the runner drives: plain training (``outer=none``) and the outer loops of later modules."""

from metaopt.outer.apo_training import APOTraining
from metaopt.outer.loop import Loop
from metaopt.outer.plain import PlainTraining
from metaopt.outer.unrolled import UnrolledLoop

__all__ = ["Loop", "PlainTraining", "UnrolledLoop", "APOTraining"]
