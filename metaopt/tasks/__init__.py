"""Tasks: the inner problems that optimizers train and outer loops tune."""

from metaopt.tasks import data
from metaopt.tasks.autoencoder import Autoencoder
from metaopt.tasks.linreg import LinearRegression
from metaopt.tasks.models import MLP
from metaopt.tasks.supervised import SupervisedTask

__all__ = ["Autoencoder", "SupervisedTask", "LinearRegression", "MLP", "data"]
