"""Unrolled inner problems: dynamics ``s_{t+1} = f(s_t, x_t; θ)`` that the estimators of
``metaopt.unrolled`` drive in truncations (whole training runs, game runs, synthetic systems)."""

from metaopt.tasks.unrolled.influence_balancing import InfluenceBalancing
from metaopt.tasks.unrolled.problem import ParticleState, UnrolledProblem, where_particles
from metaopt.tasks.unrolled.toy2d_schedule import Toy2DSchedule
from metaopt.tasks.unrolled.training_run import TrainingRun

__all__ = ["UnrolledProblem", "ParticleState", "where_particles", "TrainingRun", "InfluenceBalancing",
           "Toy2DSchedule"]
