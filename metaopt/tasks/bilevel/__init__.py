"""Bilevel problems: an inner objective f(λ, w) and an outer objective F(λ, w) (Vicol et al., 2022)."""

from metaopt.tasks.bilevel.augment import LearnedAugmentation
from metaopt.tasks.bilevel.distill import DatasetDistillation
from metaopt.tasks.bilevel.l2 import PerParameterL2
from metaopt.tasks.bilevel.problem import BilevelProblem, SupervisedBilevelProblem

__all__ = ["BilevelProblem", "SupervisedBilevelProblem", "PerParameterL2", "DatasetDistillation",
           "LearnedAugmentation"]
