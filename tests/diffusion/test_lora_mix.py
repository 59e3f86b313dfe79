"""Mixing LoRAs trained on different rewards: the base weights plus each adapter's delta, scaled."""

import pytest
import torch


def _adapters(tiny_task, seeds):
    from metaopt.diffusion import add_lora

    out = []
    for seed in seeds:
        unet = tiny_task.pretrained_unet()
        params = add_lora(unet, rank=2, alpha=2.0)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in params:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
        out.append((unet, [p.detach().clone() for p in params]))
    return out


def test_a_mix_is_linear_in_the_adapters_deltas(tiny_task):
    """Every LoRA layer computes W x + Σ sᵢ ΔWᵢ x, so the UNet's output at scales (s₁, s₂) is, for the linear
    part, predicted by the outputs of the base and of each adapter alone: checked on one layer's output and
    on the whole model where the mix equals a single adapter (scales (1, 0))."""
    from peft.tuners.lora import LoraLayer

    from metaopt.diffusion import mix_loras, set_lora_scale

    (one, first), (_, second) = _adapters(tiny_task, [0, 1])
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([3, 7])
    with torch.no_grad():
        set_lora_scale(one, 1.0)
        alone = one(x, t).sample
    mixed = tiny_task.pretrained_unet()
    mix_loras(mixed, [first, second], [1.0, 0.0], rank=2, alpha=2.0)
    with torch.no_grad():
        torch.testing.assert_close(mixed(x, t).sample, alone, rtol=1e-5, atol=1e-6)
    layer = next(m for m in mixed.modules() if isinstance(m, LoraLayer) and isinstance(m.base_layer, torch.nn.Linear))
    inputs = torch.randn(3, layer.base_layer.in_features)

    def at(s1, s2):
        for name, scale in (("mix0", s1), ("mix1", s2)):
            layer.set_scale(name, scale)
        with torch.no_grad():
            return layer(inputs)

    base = at(0.0, 0.0)
    torch.testing.assert_close(at(0.5, 0.3) - base, 0.5 * (at(1.0, 0.0) - base) + 0.3 * (at(0.0, 1.0) - base),
                               rtol=1e-5, atol=1e-6)
    assert not torch.allclose(at(1.0, 0.0), at(0.0, 1.0))


def test_bad_mixes_are_refused(tiny_task):
    from metaopt.diffusion import mix_loras

    (_, first), _ = _adapters(tiny_task, [0, 1])
    with pytest.raises(ValueError, match=r"invalid scales: \[1\.0\] \(allowed: one scale per adapter \(2\)"):
        mix_loras(tiny_task.pretrained_unet(), [first, first], [1.0], rank=2, alpha=2.0)
    with pytest.raises(ValueError, match=r"invalid adapters\[0\]: .*LoRA shapes \(rank 4"):
        mix_loras(tiny_task.pretrained_unet(), [first], [1.0], rank=4, alpha=4.0)
