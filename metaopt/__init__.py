"""metaopt: meta-optimization for PyTorch.

Drop-in optimizers (``metaopt.optim``), tasks (``metaopt.tasks``), games (``metaopt.games``), outer
loops (``metaopt.outer``) and a Hydra experiment runner (``python -m metaopt.run``).
"""

from metaopt import games, optim, outer, tasks

__version__ = "0.1.0"
__all__ = ["games", "optim", "outer", "tasks", "__version__"]
