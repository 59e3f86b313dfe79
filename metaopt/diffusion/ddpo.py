"""DDPO (Black et al., 2024): the stochastic DDIM chain as an MDP whose actions are its Gaussian steps,
trained with an importance-weighted, clipped (PPO) objective on per-batch normalised rewards."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from metaopt.diffusion.sampler import DDIMChain, Denoiser, ddim_step, gaussian_log_prob, randn

__all__ = ["Trajectory", "sample_trajectory", "step_log_prob", "normalized_advantages", "ppo_loss"]


class Trajectory(NamedTuple):
    """``states[i]`` is x before step i (``states[-1]`` = x₀); ``log_probs[i]`` the sampling policy's
    log-probability of step i (per image); ``stochastic`` the steps with σ > 0 (the actions)."""

    states: list[Tensor]
    log_probs: list[Tensor | None]
    stochastic: list[int]


@torch.no_grad()
def sample_trajectory(eps_fn: Denoiser, chain: DDIMChain, noise: Tensor, eta: float,
                      generator: torch.Generator | None = None) -> Trajectory:
    """Run the chain with DDIM noise level ``eta`` and record every state and step log-probability. A step
    with σ = 0 (the last one when ᾱ_final = 1) is deterministic: no action, no log-probability."""
    states, log_probs, stochastic = [noise], [], []
    x = noise
    for index, t in enumerate(chain.timesteps):
        std = chain.step_std(index, eta)
        step_noise = randn(x.shape, generator, x.device) if std > 0 else None
        x, mean = ddim_step(eps_fn(x, t), x, chain.alphas[index], chain.alphas_prev[index], std, step_noise)
        states.append(x)
        log_probs.append(gaussian_log_prob(x, mean, std) if std > 0 else None)
        if std > 0:
            stochastic.append(index)
    return Trajectory(states, log_probs, stochastic)


def step_log_prob(eps_fn: Denoiser, chain: DDIMChain, index: int, state: Tensor, next_state: Tensor,
                  eta: float) -> Tensor:
    """log π_θ(x_{t−1} = ``next_state`` | x_t = ``state``) of step ``index`` under the current denoiser."""
    std = chain.step_std(index, eta)
    _, mean = ddim_step(eps_fn(state, chain.timesteps[index]), state, chain.alphas[index], chain.alphas_prev[index],
                        std)
    return gaussian_log_prob(next_state, mean, std)


def normalized_advantages(rewards: Tensor, eps: float = 1e-8) -> Tensor:
    """(r − mean r)/(std r + eps) over the batch (DDPO's per-batch normalisation)."""
    return (rewards - rewards.mean()) / (rewards.std(unbiased=False) + eps)


def ppo_loss(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip_range: float) -> Tensor:
    """The clipped surrogate (Schulman et al., 2017, Eq. 7), as a loss to minimise:
    mean max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) with ρ = exp(log π_θ − log π_old)."""
    ratio = torch.exp(log_probs - old_log_probs)
    clipped = torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    return torch.maximum(-advantages * ratio, -advantages * clipped).mean()
