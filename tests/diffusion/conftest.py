import pytest
import torch

# Tiny settings: the DDPM pretrains for a few dozen steps (seconds), the chain has 4 DDIM steps.
TINY = dict(pretrain_steps=40, classifier_steps=150, num_inference_steps=4, batch_size=8)


@pytest.fixture
def tiny():
    """The tiny task's arguments."""
    return dict(TINY)


@pytest.fixture
def tiny_task(diffusion_cache, one_thread):
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from metaopt.tasks.diffusion import DigitsDiffusion

    return DigitsDiffusion(**TINY)


@pytest.fixture
def lora_unet(tiny_task):
    """The tiny task's UNet with LoRA adapters whose B matrices are random (not 0), so that every adapter
    parameter has a gradient, and its chain."""
    from metaopt.diffusion import DDIMChain, add_lora

    unet = tiny_task.pretrained_unet()
    params = add_lora(unet, rank=2, alpha=2.0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.copy_(0.1 * torch.randn(p.shape, generator=generator))
    return unet, params, DDIMChain.from_scheduler(tiny_task.scheduler())
