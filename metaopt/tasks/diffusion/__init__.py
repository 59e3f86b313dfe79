"""Diffusion fine-tuning tasks (``diffusers`` and ``peft`` are the optional ``diffusion`` extra, imported only
when a task is built): a pretrained denoiser, its sampler and a reward."""

from metaopt.tasks.diffusion.base import DiffusionTask
from metaopt.tasks.diffusion.chain import SamplingChain
from metaopt.tasks.diffusion.digits import DigitsDiffusion
from metaopt.tasks.diffusion.rewards import REWARDS

__all__ = ["DiffusionTask", "DigitsDiffusion", "SamplingChain", "REWARDS"]
