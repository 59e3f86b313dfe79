"""``outer=draft``: DRaFT, DRaFT-K and DRaFT-LV (Clark et al., 2024) fine-tuning of a diffusion task's
LoRA adapters on its differentiable reward."""

from __future__ import annotations

from collections.abc import Callable

import torch

from metaopt.checks import require
from metaopt.diffusion.draft import draft_lv_sample, draft_sample
from metaopt.outer.diffusion import DiffusionLoop
from metaopt.tasks.diffusion.base import DiffusionTask

__all__ = ["DRaFTLoop", "VARIANTS"]

VARIANTS = ("full", "truncated", "lv")


class DRaFTLoop(DiffusionLoop):
    """Each step: ``task.batch_size`` noises, loss −mean r(x₀) backpropagated through the DDIM chain
    (``variant``: ``full`` every step; ``truncated`` the last ``truncation_length`` = K; ``lv`` K = 1 with
    ``num_noises`` re-noisings of the detached x₀), one optimizer step on the LoRA parameters.
    ``checkpoint``: recompute each UNet call in the backward pass (memory flat in the number of steps)."""

    name = "outer=draft"

    def __init__(self, task: DiffusionTask, optimizer: Callable, steps: int = 200, eval_every: int = 50,
                 variant: str = "full", truncation_length: int = 1, num_noises: int = 2, checkpoint: bool = True,
                 lora_rank: int = 4, lora_alpha: float = 4.0, lora_scale: float = 1.0, eval_samples: int = 64,
                 eval_seed: int = 0, generator: torch.Generator | None = None):
        common = dict(task=task, optimizer=optimizer, steps=steps, eval_every=eval_every, lora_rank=lora_rank,
                      lora_alpha=lora_alpha, lora_scale=lora_scale, eval_samples=eval_samples, eval_seed=eval_seed,
                      generator=generator)
        super().__init__(**common)
        require("outer.variant", variant, variant in VARIANTS, ", ".join(VARIANTS))
        if variant == "truncated":
            require("outer.truncation_length", truncation_length, isinstance(truncation_length, int)
                    and 1 <= truncation_length <= task.num_inference_steps,
                    f"an integer K in [1, task.num_inference_steps={task.num_inference_steps}]")
        if variant == "lv":
            require("outer.num_noises", num_noises, isinstance(num_noises, int) and num_noises >= 1,
                    "a positive integer")
        require("task.reward", task.reward_name, task.reward_differentiable,
                "a differentiable reward: DRaFT backpropagates through it (use outer=ddpo or outer=draft_es "
                "for a reward without gradients)")
        self.variant = variant
        self.truncation_length = truncation_length
        self.num_noises = num_noises
        self.checkpoint = checkpoint
        self._build(**common)

    def step(self) -> dict[str, float]:
        noise = self.draw_noise()
        self.optimizer.zero_grad(set_to_none=True)
        if self.variant == "lv":
            images, _ = draft_lv_sample(self.eps, self.chain, noise, self.num_noises, self.generator, self.checkpoint)
        else:
            truncation = self.truncation_length if self.variant == "truncated" else None
            images = draft_sample(self.eps, self.chain, noise, truncation, self.checkpoint)
        rewards = self.task.reward(images)
        (-rewards.mean()).backward()
        self.optimizer.step()
        self.reward_queries += len(images)
        return {"train_reward": rewards.mean().item(), "reward_queries": float(self.reward_queries)}
