"""Tasks: the inner problems that optimizers train and outer loops tune."""

from metaopt.tasks import data
from metaopt.tasks.autoencoder import Autoencoder
from metaopt.tasks.influence_balancing import InfluenceBalancing
from metaopt.tasks.linreg import LinearRegression
from metaopt.tasks.models import MLP
from metaopt.tasks.supervised import SupervisedTask
from metaopt.tasks.toy2d_schedule import Toy2DSchedule
from metaopt.tasks.training_run import TrainingRun

__all__ = ["SupervisedTask", "LinearRegression", "MLP", "data", "InfluenceBalancing", "Toy2DSchedule",
           "TrainingRun", "Autoencoder"]
