"""LoRA adapters (Hu et al., 2022) on a ``diffusers`` UNet with ``peft``: only they train; their scale
interpolates between the base model (0) and the fine-tuned one (1)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from metaopt.checks import require

__all__ = ["LORA_TARGETS", "add_lora", "set_lora_scale", "mix_loras", "lora_file"]

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


def lora_file(params: Sequence[torch.Tensor], rank: int, alpha: float, task: Any, **extra: Any) -> dict[str, Any]:
    """What a run's ``lora.pt`` holds: the adapters (in ``add_lora``'s order), their rank and alpha, the task's
    class, arguments (``task.config``) and base model (``task.base_model_key()``), so that
    ``metaopt.diffusion.mix`` can rebuild the task and put the adapters back on its UNet; plus ``extra``.
    Only tensors, numbers, strings, lists and dicts: ``torch.load(weights_only=True)`` reads it."""
    kind = type(task)
    return {"format": "metaopt-lora-1", "lora": [p.detach().cpu().clone() for p in params], "lora_rank": int(rank),
            "lora_alpha": float(alpha), "task_target": f"{kind.__module__}.{kind.__qualname__}",
            "task": getattr(task, "config", None), "base_model": task.base_model_key(),
            "reward": task.reward_name, **extra}


def mix_loras(unet: nn.Module, adapters: Sequence[Sequence[torch.Tensor]], scales: Sequence[float],
              rank: int | Sequence[int] = 4, alpha: float | Sequence[float] = 4.0,
              target_modules: Sequence[str] = LORA_TARGETS) -> None:
    """Several trained LoRAs on one base ``unet`` at once, each scaled: ``W + Σᵢ scaleᵢ·ΔWᵢ`` in every target
    layer (the DRaFT paper's mixing of adapters trained on different rewards). ``adapters``: each one's
    parameters in ``add_lora``'s order (a ``DiffusionLoop``'s ``lora_params``, or the ``"lora"`` list of its
    run's ``lora.pt`` or checkpoint), each trained with its ``rank`` and ``alpha`` (one for all, or one per
    adapter) on the same targets. ``unet`` must have no adapter."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    count = len(adapters)
    ranks = [rank] * count if isinstance(rank, int) else list(rank)
    alphas = [alpha] * count if isinstance(alpha, (int, float)) else list(alpha)
    require("scales", list(scales), len(scales) == count and count >= 1, f"one scale per adapter ({count})")
    require("scales", list(scales), all(isinstance(s, (int, float)) and math.isfinite(s) for s in scales),
            "finite numbers")
    require("rank", ranks, len(ranks) == count and all(isinstance(r, int) and r >= 1 for r in ranks),
            f"a positive integer, or one per adapter ({count})")
    require("alpha", alphas, len(alphas) == count and all(isinstance(a, (int, float)) and a > 0 for a in alphas),
            f"a number > 0, or one per adapter ({count})")
    require("unet", type(unet).__name__, not any(isinstance(m, LoraLayer) for m in unet.modules()),
            "a UNet without LoRA adapters (the base model)")
    names = [f"mix{i}" for i in range(count)]
    with warnings.catch_warnings():  # peft warns that a second adapter joins the first: that is the point
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        for name, r, a in zip(names, ranks, alphas):
            config = LoraConfig(r=r, lora_alpha=a, target_modules=list(target_modules))
            inject_adapter_in_model(config, unet, adapter_name=name)
    unet.requires_grad_(False)
    for index, (name, values) in enumerate(zip(names, adapters)):
        params = [p for key, p in unet.named_parameters() if "lora_" in key and f".{name}." in key]
        require(f"adapters[{index}]", f"{len(values)} tensors", len(values) == len(params) and all(
            v.shape == p.shape for v, p in zip(values, params)),
            f"{len(params)} tensors with this UNet's LoRA shapes (rank {ranks[index]}, the same targets)")
        with torch.no_grad():
            for p, v in zip(params, values):
                p.copy_(v)
    for module in unet.modules():
        if isinstance(module, LoraLayer):
            module.set_adapter(names)
            for name, scale in zip(names, scales):
                module.set_scale(name, float(scale))
