"""DRaFT, DRaFT-K and DRaFT-LV: gradients against a reference chain, truncation and detaching checked with
hooks, LV's lower variance, and clear errors."""

import pytest
import torch

from metaopt.diffusion import DDIMChain, ddim_step, denoiser, draft_lv_sample, draft_sample


def _reward(images):
    # a smooth, non-trivial function of every pixel
    return -(images - 0.3 * images.flip(-1)).pow(2).flatten(1).mean(1) + images.sin().flatten(1).mean(1)


def _gradient(params, images):
    grads = torch.autograd.grad(-_reward(images).mean(), params)
    return torch.cat([g.flatten() for g in grads])


def _noise(seed, batch=2):
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_full_and_truncated_with_k_equal_to_steps_match_a_reference_chain(tiny_task, lora_unet):
    unet, params, chain = lora_unet
    eps = denoiser(unet)
    noise = _noise(0)
    full = _gradient(params, draft_sample(eps, chain, noise))
    truncated = _gradient(params, draft_sample(eps, chain, noise, truncation_length=len(chain)))
    # the reference: diffusers' own scheduler step, plain autograd, no checkpointing
    scheduler = tiny_task.scheduler()
    x = noise
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    reference = _gradient(params, x)
    assert reference.abs().max() > 0
    # float32 round-off: the first step divides by √ᾱ ≈ 0.006 (diffusers computes in float32, we in float64 scalars)
    torch.testing.assert_close(full, reference, rtol=1e-3, atol=1e-4 * float(reference.abs().max()))
    torch.testing.assert_close(truncated, full, rtol=0, atol=0)


def test_checkpointing_gives_the_same_gradient(lora_unet):
    unet, params, chain = lora_unet
    eps = denoiser(unet)
    for truncation in (None, 2):
        with_checkpoints = _gradient(params, draft_sample(eps, chain, _noise(1), truncation, checkpoint=True))
        without = _gradient(params, draft_sample(eps, chain, _noise(1), truncation, checkpoint=False))
        torch.testing.assert_close(with_checkpoints, without, rtol=1e-5, atol=1e-7)


def _grad_calls(unet):
    """Hooks recording the timestep of every UNet call made with gradients on, and every backward."""
    forward_with_grad, backward = [], []
    handles = [
        unet.register_forward_hook(lambda m, args, out: forward_with_grad.append(int(args[1][0]))
                                   if torch.is_grad_enabled() else None),
        unet.conv_out.register_full_backward_hook(lambda m, gin, gout: backward.append(1)),
    ]
    return forward_with_grad, backward, handles


@pytest.mark.parametrize("truncation", [1, 2, 3])
def test_gradients_reach_only_the_last_k_steps(lora_unet, truncation):
    unet, params, chain = lora_unet
    eps = denoiser(unet)
    noise = _noise(2).requires_grad_(True)
    forward_with_grad, backward, handles = _grad_calls(unet)
    images = draft_sample(eps, chain, noise, truncation, checkpoint=False)
    (-_reward(images).mean()).backward()
    for handle in handles:
        handle.remove()
    assert forward_with_grad == chain.timesteps[-truncation:]
    assert len(backward) == truncation
    assert noise.grad is None, "x_T must not receive a gradient when K < T"
    # and with K = T it does: the hooks and the check above could fail
    images = draft_sample(eps, chain, noise, len(chain), checkpoint=False)
    (-_reward(images).mean()).backward()
    assert noise.grad is not None and noise.grad.abs().sum() > 0


def test_lv_detaches_x0_before_renoising(lora_unet):
    unet, params, chain = lora_unet
    eps = denoiser(unet)
    noise = _noise(3).requires_grad_(True)
    forward_with_grad, backward, handles = _grad_calls(unet)
    images, clean = draft_lv_sample(eps, chain, noise, num_noises=3, generator=torch.Generator().manual_seed(4),
                                    checkpoint=False)
    gradient = _gradient(params, images)
    for handle in handles:
        handle.remove()
    assert not clean.requires_grad and clean.grad_fn is None
    assert images.shape == (3 * 2, 1, 8, 8)
    assert forward_with_grad == [chain.timesteps[-1]] and len(backward) == 1
    noise_grad = torch.autograd.grad(_reward(draft_lv_sample(eps, chain, noise, 3)[0]).sum(), noise,
                                     allow_unused=True)[0]
    assert noise_grad is None
    # the same gradient by hand: x₁⁽ⁱ⁾ = √ᾱ₁ x₀ + √(1−ᾱ₁) εᵢ from a constant x₀, one step each
    fresh = torch.randn((3, *clean.shape), generator=torch.Generator().manual_seed(4))
    alpha, alpha_prev = chain.alphas[-1], chain.alphas_prev[-1]
    renoised = (alpha ** 0.5 * clean + (1 - alpha) ** 0.5 * fresh).flatten(0, 1)
    by_hand, _ = ddim_step(eps(renoised, chain.timesteps[-1]), renoised, alpha, alpha_prev)
    torch.testing.assert_close(gradient, _gradient(params, by_hand), rtol=1e-5, atol=1e-7)


def test_lv_has_lower_gradient_variance_than_draft_1(tiny_task):
    """Across 100 sampler seeds, per parameter. The denoiser is the exact noise predictor of Gaussian data
    N(μ, diag s²), E[ε | x_t] = √(1−ᾱ)(x − √ᾱ μ)/(ᾱ s² + 1 − ᾱ), plus a trainable perturbation θ (zero, like a
    fresh LoRA): a denoiser whose x₀ depends on x₁'s noise as a trained one's does. (The tiny test UNet,
    trained for seconds, hardly does: its LV and DRaFT-1 gradients differ by 0.1%, which tests nothing.)"""
    chain = DDIMChain.from_scheduler(tiny_task.scheduler())
    cumulative = tiny_task.scheduler().alphas_cumprod.double()
    generator = torch.Generator().manual_seed(0)
    mean = 0.5 * torch.randn(1, 1, 8, 8, generator=generator)
    variance = 0.05 + 0.2 * torch.rand(1, 1, 8, 8, generator=generator)
    theta = torch.zeros(2, 1, 1, 8, 8, requires_grad=True)

    def eps(x, t):
        alpha = float(cumulative[t])
        exact = (1 - alpha) ** 0.5 * (x - alpha ** 0.5 * mean) / (alpha * variance + 1 - alpha)
        return exact + theta[0] * x + theta[1] * (t / 1000)

    def gradient(images):
        return torch.autograd.grad(-tiny_task.reward(images).mean(), theta)[0].flatten()

    seeds = range(100)
    draft_1 = torch.stack([gradient(draft_sample(eps, chain, _noise(s, 1), 1, checkpoint=False)) for s in seeds])
    lv = torch.stack([gradient(draft_lv_sample(eps, chain, _noise(s, 1), 2, torch.Generator().manual_seed(1000 + s),
                                               checkpoint=False)[0]) for s in seeds])
    variance_draft_1, variance_lv = draft_1.var(0), lv.var(0)
    assert (variance_lv < variance_draft_1).float().mean() > 0.9
    assert variance_lv.sum() < 0.8 * variance_draft_1.sum(), (variance_lv.sum(), variance_draft_1.sum())


def test_truncation_longer_than_the_chain_is_refused(lora_unet):
    unet, params, chain = lora_unet
    with pytest.raises(ValueError, match=r"invalid truncation_length: 5 \(allowed: null \(full DRaFT\) or an "
                                         r"integer in \[1, 4\]"):
        draft_sample(denoiser(unet), chain, _noise(0), truncation_length=5)
    with pytest.raises(ValueError, match="invalid truncation_length: 0"):
        draft_sample(denoiser(unet), chain, _noise(0), truncation_length=0)
