"""DRaFT (Clark et al., 2024): backpropagate a differentiable reward of x₀ through the deterministic
DDIM chain. Full DRaFT through every step, DRaFT-K through the last K, DRaFT-LV (K = 1) through n
re-noisings of a detached x₀."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as checkpointed

from metaopt.checks import require
from metaopt.diffusion.sampler import DDIMChain, Denoiser, ddim_step, randn

__all__ = ["draft_sample", "draft_lv_sample"]


def _eps(eps_fn: Denoiser, x: Tensor, t: int, checkpoint: bool) -> Tensor:
    # Per-call checkpointing keeps one UNet's activations at a time: memory flat in the number of steps.
    if checkpoint and torch.is_grad_enabled():
        return checkpointed(eps_fn, x, t, use_reentrant=False)
    return eps_fn(x, t)


def draft_sample(eps_fn: Denoiser, chain: DDIMChain, noise: Tensor, truncation_length: int | None = None,
                 checkpoint: bool = True) -> Tensor:
    """x₀ from x_T = ``noise``, differentiable through the last ``truncation_length`` steps (``None``: all,
    full DRaFT; K: DRaFT-K, Clark et al., 2024, Sec. 4). The first T−K steps run without gradients and x_K
    is detached, so no gradient reaches them."""
    steps = len(chain)
    truncation = steps if truncation_length is None else truncation_length
    require("truncation_length", truncation_length, isinstance(truncation, int) and 1 <= truncation <= steps,
            f"null (full DRaFT) or an integer in [1, {steps}] (the number of sampling steps)")
    x = noise
    if truncation < steps:
        with torch.no_grad():
            for index in range(steps - truncation):
                x, _ = ddim_step(eps_fn(x, chain.timesteps[index]), x, chain.alphas[index], chain.alphas_prev[index])
        x = x.detach()
    for index in range(steps - truncation, steps):
        x, _ = ddim_step(_eps(eps_fn, x, chain.timesteps[index], checkpoint), x, chain.alphas[index],
                         chain.alphas_prev[index])
    return x


def draft_lv_sample(eps_fn: Denoiser, chain: DDIMChain, noise: Tensor, num_noises: int = 2,
                    generator: torch.Generator | None = None, checkpoint: bool = True) -> tuple[Tensor, Tensor]:
    """DRaFT-LV (Clark et al., 2024, Alg. 2): sample x₀ without gradients, detach it, re-noise it to the
    last step's timestep by the forward process x₁⁽ⁱ⁾ = √ᾱ₁ x₀ + √(1−ᾱ₁) εᵢ for ``num_noises`` fresh εᵢ,
    and denoise each in one differentiable step. Returns the ``num_noises * batch`` denoised samples
    (noise-major) and the detached x₀; the loss averages the reward over the samples."""
    require("num_noises", num_noises, isinstance(num_noises, int) and num_noises >= 1, "a positive integer")
    with torch.no_grad():
        x = noise
        for index, t in enumerate(chain.timesteps):
            x, _ = ddim_step(eps_fn(x, t), x, chain.alphas[index], chain.alphas_prev[index])
    clean = x.detach()
    last = len(chain) - 1
    alpha, alpha_prev = chain.alphas[last], chain.alphas_prev[last]
    fresh = randn((num_noises, *clean.shape), generator, clean.device)
    renoised = (alpha ** 0.5 * clean + (1 - alpha) ** 0.5 * fresh).flatten(0, 1)
    denoised, _ = ddim_step(_eps(eps_fn, renoised, chain.timesteps[last], checkpoint), renoised, alpha, alpha_prev)
    return denoised, clean
