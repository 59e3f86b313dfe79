"""metaopt optimizers: ``torch.optim.Optimizer`` subclasses and their functional cores."""

from metaopt.optim import functional
from metaopt.optim.apo import APO
from metaopt.optim.optimizer import Optimizer, check_hyperparameter

__all__ = ["APO", "Optimizer", "check_hyperparameter", "functional"]
