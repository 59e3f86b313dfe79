"""``outer=draft_es``: antithetic ES (ES-Single on a one-step problem) over a diffusion task's LoRA
parameters, for rewards without gradients."""

from __future__ import annotations

from collections.abc import Callable

import torch

from metaopt.checks import require
from metaopt.diffusion.es import antithetic_es_gradient
from metaopt.diffusion.sampler import sample
from metaopt.outer.diffusion import DiffusionLoop
from metaopt.tasks.diffusion.base import DiffusionTask

__all__ = ["DiffusionESLoop"]


class DiffusionESLoop(DiffusionLoop):
    """Each step: one batch of sampler noise shared by ``num_pairs`` antithetic perturbations of the LoRA
    parameters (common random numbers), each scored by the mean reward of its deterministic DDIM samples;
    the ES estimate of −∇ mean reward is the LoRA parameters' gradient for one optimizer step."""

    name = "outer=draft_es"

    def __init__(self, task: DiffusionTask, optimizer: Callable, steps: int = 200, eval_every: int = 50,
                 num_pairs: int = 8, sigma: float = 0.02, lora_rank: int = 4, lora_alpha: float = 4.0,
                 lora_scale: float = 1.0, eval_samples: int = 64, eval_seed: int = 0,
                 generator: torch.Generator | None = None):
        common = dict(task=task, optimizer=optimizer, steps=steps, eval_every=eval_every, lora_rank=lora_rank,
                      lora_alpha=lora_alpha, lora_scale=lora_scale, eval_samples=eval_samples, eval_seed=eval_seed,
                      generator=generator)
        super().__init__(**common)
        require("outer.num_pairs", num_pairs, isinstance(num_pairs, int) and num_pairs >= 1, "a positive integer")
        require("outer.sigma", sigma, isinstance(sigma, (int, float)) and sigma > 0, "a number > 0")
        self.num_pairs = num_pairs
        self.sigma = float(sigma)
        self._build(**common)

    def step(self) -> dict[str, float]:
        noise = self.draw_noise()
        scores = []

        def objective() -> float:
            scores.append(self.task.reward(sample(self.eps, self.chain, noise)).mean().item())
            return scores[-1]

        gradient = antithetic_es_gradient(self.lora_params, objective, self.num_pairs, self.sigma, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.lora_params, gradient):
            p.grad = -g
        self.optimizer.step()
        self.reward_queries += len(scores) * len(noise)
        return {"train_reward": sum(scores) / len(scores), "reward_queries": float(self.reward_queries)}
