"""The DDIM sampler (Song et al., 2021, Eq. 12) as differentiable tensor functions over a denoiser
``eps(x, t)``: the deterministic chain DRaFT backpropagates through, and the stochastic one (eta > 0)
whose Gaussian steps are DDPO's actions."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["DDIMChain", "Denoiser", "denoiser", "ddim_step", "gaussian_log_prob", "sample", "randn"]

Denoiser = Callable[[Tensor, int], Tensor]


class DDIMChain(NamedTuple):
    """The sampling schedule: step i goes from timestep ``timesteps[i]`` (cumulative ᾱ ``alphas[i]``) to
    ᾱ ``alphas_prev[i]`` (the next timestep's, or the final ᾱ after the last step)."""

    timesteps: list[int]
    alphas: list[float]
    alphas_prev: list[float]

    @classmethod
    def from_scheduler(cls, scheduler: Any) -> DDIMChain:
        """The schedule of a ``diffusers.DDIMScheduler`` after ``set_timesteps`` (its ``step``'s previous
        timestep is ``t − num_train_timesteps // num_inference_steps``)."""
        stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        cumprod = scheduler.alphas_cumprod.double()
        timesteps = [int(t) for t in scheduler.timesteps]
        alphas = [float(cumprod[t]) for t in timesteps]
        final = float(scheduler.final_alpha_cumprod)
        alphas_prev = [float(cumprod[t - stride]) if t - stride >= 0 else final for t in timesteps]
        return cls(timesteps, alphas, alphas_prev)

    def __len__(self) -> int:
        return len(self.timesteps)

    def step_std(self, index: int, eta: float) -> float:
        """σ_t(η) = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_prev) (Song et al., 2021, Eq. 16)."""
        alpha, alpha_prev = self.alphas[index], self.alphas_prev[index]
        return eta * math.sqrt((1 - alpha_prev) / (1 - alpha)) * math.sqrt(max(1 - alpha / alpha_prev, 0.0))


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """Standard normal noise drawn on ``generator``'s device (a CPU generator also feeds a GPU run, with the
    same numbers), then moved to ``device``."""
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=where).to(device)


def denoiser(unet: nn.Module) -> Denoiser:
    """A ``diffusers`` UNet as ``eps(x, t)``."""

    def eps(x: Tensor, t: int) -> Tensor:
        return unet(x, torch.full((len(x),), t, device=x.device, dtype=torch.long)).sample

    return eps


def ddim_step(eps: Tensor, x: Tensor, alpha: float, alpha_prev: float, std: float = 0.0,
              noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One DDIM step (Song et al., 2021, Eq. 12): ``(x_prev, mean)`` with
    x̂₀ = (x − √(1−ᾱ_t) ε)/√ᾱ_t, mean = √ᾱ_prev x̂₀ + √(1−ᾱ_prev−σ²) ε, x_prev = mean + σ·noise."""
    predicted = (x - math.sqrt(1 - alpha) * eps) / math.sqrt(alpha)
    mean = math.sqrt(alpha_prev) * predicted + math.sqrt(max(1 - alpha_prev - std ** 2, 0.0)) * eps
    if std == 0.0 or noise is None:
        return mean, mean
    return mean + std * noise, mean


def gaussian_log_prob(value: Tensor, mean: Tensor, std: float) -> Tensor:
    """log N(value; mean, std² I), summed over all but the batch dimension."""
    per_element = -((value - mean) ** 2) / (2 * std ** 2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return per_element.flatten(1).sum(1)


@torch.no_grad()
def sample(eps_fn: Denoiser, chain: DDIMChain, noise: Tensor, eta: float = 0.0,
           generator: torch.Generator | None = None) -> Tensor:
    """x₀ from x_T = ``noise`` by the whole chain, without gradients (eta > 0: fresh noise each step)."""
    x = noise
    for index, t in enumerate(chain.timesteps):
        std = chain.step_std(index, eta)
        step_noise = randn(x.shape, generator, x.device) if std > 0 else None
        x, _ = ddim_step(eps_fn(x, t), x, chain.alphas[index], chain.alphas_prev[index], std, step_noise)
    return x
