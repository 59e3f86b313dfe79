"""What the runner drives: plain training (``outer=none``) and the outer loops of later modules."""

from metaopt.outer.loop import Loop
from metaopt.outer.plain import PlainTraining

__all__ = ["Loop", "PlainTraining"]
