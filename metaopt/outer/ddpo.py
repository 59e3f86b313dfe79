"""``outer=ddpo``: the DDPO policy-gradient baseline (Black et al., 2024) on a diffusion task's reward."""

from __future__ import annotations

from collections.abc import Callable

import torch

from metaopt.checks import require
from metaopt.diffusion.ddpo import normalized_advantages, ppo_loss, sample_trajectory, step_log_prob
from metaopt.outer.diffusion import DiffusionLoop
from metaopt.tasks.diffusion.base import DiffusionTask

__all__ = ["DDPOLoop"]


class DDPOLoop(DiffusionLoop):
    """Each step: sample ``task.batch_size`` trajectories of the stochastic DDIM chain (noise level ``eta``)
    with the current adapters, score x₀, normalise the rewards over the batch into advantages, then
    ``ppo_epochs`` optimizer steps on the clipped importance-weighted objective summed over the chain's
    stochastic steps (gradients accumulated one step at a time). Works with any reward, differentiable
    or not."""

    name = "outer=ddpo"

    def __init__(self, task: DiffusionTask, optimizer: Callable, steps: int = 200, eval_every: int = 50,
                 eta: float = 1.0, clip_range: float = 1e-4, ppo_epochs: int = 1, lora_rank: int = 4,
                 lora_alpha: float = 4.0, lora_scale: float = 1.0, eval_samples: int = 64, eval_seed: int = 0,
                 generator: torch.Generator | None = None):
        common = dict(task=task, optimizer=optimizer, steps=steps, eval_every=eval_every, lora_rank=lora_rank,
                      lora_alpha=lora_alpha, lora_scale=lora_scale, eval_samples=eval_samples, eval_seed=eval_seed,
                      generator=generator)
        super().__init__(**common)
        require("outer.eta", eta, isinstance(eta, (int, float)) and 0 < eta <= 1,
                "a number in (0, 1]: the sampler must be stochastic to have log-probabilities")
        require("outer.clip_range", clip_range, isinstance(clip_range, (int, float)) and clip_range > 0,
                "a number > 0")
        require("outer.ppo_epochs", ppo_epochs, isinstance(ppo_epochs, int) and ppo_epochs >= 1, "a positive integer")
        require("task.batch_size", task.batch_size, task.batch_size >= 2,
                "at least 2: advantages are normalised over the batch")
        self.eta = float(eta)
        self.clip_range = float(clip_range)
        self.ppo_epochs = ppo_epochs
        self._build(**common)

    def step(self) -> dict[str, float]:
        trajectory = sample_trajectory(self.eps, self.chain, self.draw_noise(), self.eta, self.generator)
        with torch.no_grad():
            rewards = self.task.reward(trajectory.states[-1])
        advantages = normalized_advantages(rewards)
        self.reward_queries += len(rewards)
        steps = trajectory.stochastic
        for _ in range(self.ppo_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            loss_total = 0.0
            for index in steps:
                log_probs = step_log_prob(self.eps, self.chain, index, trajectory.states[index],
                                          trajectory.states[index + 1], self.eta)
                loss = ppo_loss(log_probs, trajectory.log_probs[index], advantages, self.clip_range) / len(steps)
                loss.backward()
                loss_total += loss.item()
            self.optimizer.step()
        return {"train_reward": rewards.mean().item(), "ppo_loss": loss_total,
                "reward_queries": float(self.reward_queries)}
