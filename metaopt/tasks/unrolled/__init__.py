"""Unrolled inner problems: dynamics ``s_{t+1} = f(s_t, x_t; θ)`` that the estimators of
``metaopt.unrolled`` drive in truncations (whole training runs, game runs, synthetic systems)."""

from metaopt.tasks.unrolled.game_run import GameRun
from metaopt.tasks.unrolled.influence_balancing import InfluenceBalancing
from metaopt.tasks.unrolled.problem import ParticleState, UnrolledProblem, where_particles
from metaopt.tasks.unrolled.toy2d_schedule import Toy2DSchedule
from metaopt.tasks.unrolled.training_run import TrainingRun
from metaopt.tasks.unrolled.tuning import TunedHyperparameters, TunedRun

__all__ = ["UnrolledProblem", "ParticleState", "where_particles", "TunedRun", "TunedHyperparameters",
           "TrainingRun", "GameRun", "InfluenceBalancing", "Toy2DSchedule"]
