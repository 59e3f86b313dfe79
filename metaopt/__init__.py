"""metaopt: meta-optimization for PyTorch.

Drop-in optimizers (``metaopt.optim``), tasks (``metaopt.tasks``), games (``metaopt.games``), outer
loops (``metaopt.outer``), gradient estimators for unrolled computation graphs (``metaopt.unrolled``),
bilevel outer loops (``metaopt.bilevel``) and a Hydra experiment runner (``python -m metaopt.run``).
"""

from metaopt import bilevel, games, optim, outer, tasks, unrolled

__version__ = "0.1.0"
__all__ = ["bilevel", "games", "optim", "outer", "tasks", "unrolled", "__version__"]
