"""Every inner problem, in one place: supervised tasks, unrolled problems (whole training runs and
synthetic systems, for the ES/TBPTT estimators), bilevel problems (for hypergradients), games and
diffusion fine-tuning tasks."""

from metaopt.tasks import data
from metaopt.tasks.arrays import from_arrays
from metaopt.tasks.autoencoder import Autoencoder
from metaopt.tasks.bilevel import (
    BilevelProblem,
    DatasetDistillation,
    LearnedAugmentation,
    PerParameterL2,
    SupervisedBilevelProblem,
)
from metaopt.tasks.diffusion import DiffusionTask, DigitsDiffusion
from metaopt.tasks.games import (
    BilinearGame,
    Game,
    GANMixture,
    IteratedPrisonersDilemma,
    MixedGame,
    QuadraticGame,
    Vector,
    game_step,
)
from metaopt.tasks.linreg import LinearRegression
from metaopt.tasks.models import MLP
from metaopt.tasks.supervised import SupervisedTask
from metaopt.tasks.unrolled import (
    GameRun,
    InfluenceBalancing,
    ParticleState,
    Toy2DSchedule,
    TrainingRun,
    UnrolledProblem,
)

__all__ = ["SupervisedTask", "LinearRegression", "MLP", "data", "Autoencoder",
           "UnrolledProblem", "ParticleState", "TrainingRun", "GameRun", "InfluenceBalancing", "Toy2DSchedule",
           "BilevelProblem", "SupervisedBilevelProblem", "PerParameterL2", "DatasetDistillation",
           "LearnedAugmentation", "Game", "Vector", "game_step", "QuadraticGame", "BilinearGame", "MixedGame",
           "GANMixture", "IteratedPrisonersDilemma", "from_arrays", "DiffusionTask", "DigitsDiffusion"]
