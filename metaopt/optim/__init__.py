"""metaopt optimizers: ``torch.optim.Optimizer`` subclasses and their functional cores."""

from metaopt.optim import functional
from metaopt.optim.apo import APO
from metaopt.optim.complex_adam import ComplexAdam
from metaopt.optim.complex_momentum import ComplexMomentum
from metaopt.optim.differentiable import DifferentiableOptimizer
from metaopt.optim.learned import LearnedOptimizer
from metaopt.optim.optimizer import Optimizer, check_hyperparameter
from metaopt.optim.specs import SPECS, Hyperparameter, OptimizerSpec, register, spec_for

__all__ = ["Optimizer", "check_hyperparameter", "functional", "ComplexMomentum", "ComplexAdam", "APO",
           "LearnedOptimizer",
           "OptimizerSpec", "Hyperparameter", "SPECS", "register", "spec_for",
           "DifferentiableOptimizer"]
