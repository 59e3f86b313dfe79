"""Fine-tuning diffusion models on rewards: DRaFT / DRaFT-K / DRaFT-LV (backprop through the sampler),
DDPO (policy gradient over the stochastic sampler), antithetic ES, and LoRA adapters. Tensor math only;
the loops that drive them are ``metaopt.outer.DRaFTLoop``, ``DDPOLoop`` and ``DiffusionESLoop``."""

from metaopt.diffusion.ddpo import Trajectory, normalized_advantages, ppo_loss, sample_trajectory, step_log_prob
from metaopt.diffusion.draft import draft_lv_sample, draft_sample
from metaopt.diffusion.es import antithetic_es_gradient
from metaopt.diffusion.lora import LORA_TARGETS, add_lora, lora_file, mix_loras, set_lora_scale
from metaopt.diffusion.sampler import DDIMChain, ddim_step, denoiser, gaussian_log_prob, sample

__all__ = ["DDIMChain", "ddim_step", "denoiser", "gaussian_log_prob", "sample", "draft_sample", "draft_lv_sample",
           "Trajectory", "sample_trajectory", "step_log_prob", "normalized_advantages", "ppo_loss",
           "antithetic_es_gradient", "LORA_TARGETS", "add_lora", "set_lora_scale", "mix_loras", "lora_file"]
