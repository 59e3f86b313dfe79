"""Gradient estimators for unrolled computation graphs, over one inner-problem interface.

``UnrolledProblem`` (initial state, unroll K steps under per-particle outer parameters, losses, resets)
is driven by ``TBPTT``, ``FullES``, ``TruncatedES``, ``PES`` and ``ESSingle``, each
``estimate(theta) -> (gradient, info)``, advancing every particle by one truncation.
"""

from metaopt.tasks.unrolled.problem import ParticleState, UnrolledProblem
from metaopt.unrolled.base import GradientEstimator
from metaopt.unrolled.es_single import ESSingle
from metaopt.unrolled.full_es import FullES
from metaopt.unrolled.pes import PES
from metaopt.unrolled.tbptt import TBPTT
from metaopt.unrolled.truncated_es import TruncatedES

__all__ = ["UnrolledProblem", "ParticleState", "GradientEstimator", "TBPTT", "FullES", "TruncatedES", "PES",
           "ESSingle"]
