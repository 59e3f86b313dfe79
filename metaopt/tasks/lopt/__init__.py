"""Learned optimizers' inner problems: the task distribution they are meta-trained and tested on, and
meta-training as an unrolled problem (``LearnedOptimizerTraining``)."""

from metaopt.tasks.lopt.distribution import InnerTask, digits_tasks
from metaopt.tasks.lopt.meta_training import LearnedOptimizerTraining

__all__ = ["InnerTask", "digits_tasks", "LearnedOptimizerTraining"]
