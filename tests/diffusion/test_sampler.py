"""The DDIM chain against diffusers' DDIMScheduler.step, deterministic and stochastic."""

import pytest
import torch

from metaopt.diffusion import DDIMChain, ddim_step, denoiser, sample


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_matches_diffusers_scheduler(tiny_task, eta):
    unet = tiny_task.pretrained_unet()
    scheduler = tiny_task.scheduler()
    chain = DDIMChain.from_scheduler(scheduler)
    assert chain.timesteps == [999, 749, 499, 249]
    eps = denoiser(unet)
    x_ours = x_theirs = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for index, t in enumerate(chain.timesteps):
            noise = torch.randn(x_ours.shape, generator=generator)
            x_theirs = scheduler.step(unet(x_theirs, t).sample, t, x_theirs, eta=eta, variance_noise=noise).prev_sample
            x_ours, _ = ddim_step(eps(x_ours, t), x_ours, chain.alphas[index], chain.alphas_prev[index],
                                  chain.step_std(index, eta), noise)
            torch.testing.assert_close(x_ours, x_theirs, rtol=1e-4, atol=1e-5)
    if eta == 0.0:
        start = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(sample(eps, chain, start), x_ours)
