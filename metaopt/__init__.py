"""metaopt: meta-optimization for PyTorch.

Drop-in optimizers (``metaopt.optim``), tasks (``metaopt.tasks``), outer loops (``metaopt.outer``),
gradient estimators for unrolled computation graphs (``metaopt.unrolled``)
and a Hydra experiment runner (``python -m metaopt.run``).
"""

from metaopt import optim, outer, tasks, unrolled

__version__ = "0.1.0"
__all__ = ["optim", "outer", "tasks", "unrolled", "__version__"]
