"""LoRA adapters (Hu et al., 2022) on a ``diffusers`` UNet with ``peft``: only they train; their scale
interpolates between the base model (0) and the fine-tuned one (1)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from metaopt.checks import require

__all__ = ["LORA_TARGETS", "add_lora", "set_lora_scale"]

# attention projections and the ResNet blocks' convolutions and time-embedding projections
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj")


def add_lora(unet: nn.Module, rank: int = 4, alpha: float = 4.0,
             target_modules: Sequence[str] = LORA_TARGETS) -> list[nn.Parameter]:
    """Inject LoRA adapters into ``unet`` (B = 0: the model starts as it was), freeze everything else, and
    return the adapters' parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    require("lora_rank", rank, isinstance(rank, int) and rank >= 1, "a positive integer")
    require("lora_alpha", alpha, isinstance(alpha, (int, float)) and alpha > 0, "a number > 0")
    unet.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules)), unet)
    params = [p for name, p in unet.named_parameters() if "lora_" in name]
    require("target_modules", list(target_modules), bool(params), "names of modules the UNet has")
    for p in params:
        p.requires_grad_(True)
    return params


def set_lora_scale(unet: nn.Module, scale: float) -> None:
    """Every adapter's output multiplied by ``scale`` (times its alpha/rank)."""
    from peft.tuners.lora import LoraLayer

    for module in unet.modules():
        if isinstance(module, LoraLayer):
            for adapter in list(module.scaling):
                module.set_scale(adapter, scale)
