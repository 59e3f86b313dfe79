"""What the diffusion fine-tuning loops share: LoRA adapters on the task's pretrained UNet trained by
the runner's optimizer, evaluation on fixed sampler noise at ``lora_scale``, sample grids, checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metaopt.checks import require
from metaopt.diffusion.lora import add_lora, lora_file, set_lora_scale
from metaopt.diffusion.sampler import DDIMChain, denoiser, randn, sample
from metaopt.optim.apo.step import meta_learns
from metaopt.tasks.diffusion.base import DiffusionTask

__all__ = ["DiffusionLoop"]


class DiffusionLoop:
    """Base of ``DRaFTLoop``, ``DDPOLoop`` and ``DiffusionESLoop``: subclasses define ``step``.

    The task's UNet is frozen; rank-``lora_rank`` adapters are its only trained parameters, given to
    ``optimizer`` (any ``torch.optim.Optimizer`` factory). ``evaluate`` samples ``eval_samples`` images from
    fixed noise (seed ``eval_seed``) with the adapters scaled by ``lora_scale``. ``reward_queries`` counts
    the images the reward has scored in training.
    """

    accepts = ("diffusion",)
    name = "outer=draft"

    @classmethod
    def optimizer_refusal(cls, optimizer: type, kind: str | None, outer: Any = None) -> str | None:
        if meta_learns(optimizer):
            return (f"{cls.name} with {optimizer.__name__}: its meta-step needs a supervised model and batches, "
                    "which a diffusion fine-tuning task has none of (use adam, sgd, adamw, rmsprop, … to train "
                    "the LoRA adapters)")
        return None

    def __init__(self, task: DiffusionTask, optimizer: Callable, steps: int, eval_every: int, lora_rank: int,
                 lora_alpha: float, lora_scale: float, eval_samples: int, eval_seed: int,
                 generator: torch.Generator | None):
        require("task", type(task).__name__, isinstance(task, DiffusionTask),
                "a metaopt.tasks.diffusion.DiffusionTask")
        require("outer.steps", steps, isinstance(steps, int) and steps > 0, "a positive integer")
        require("outer.eval_every", eval_every, isinstance(eval_every, int) and eval_every >= 0,
                "a non-negative integer (0: only at the end)")
        require("outer.lora_scale", lora_scale, isinstance(lora_scale, (int, float)) and lora_scale >= 0,
                "a number >= 0 (0: the base model, 1: the fine-tuned one)")
        require("outer.eval_samples", eval_samples, isinstance(eval_samples, int) and eval_samples > 0,
                "a positive integer")
        require("outer.lora_rank", lora_rank, isinstance(lora_rank, int) and lora_rank >= 1, "a positive integer")
        require("outer.lora_alpha", lora_alpha, isinstance(lora_alpha, (int, float)) and lora_alpha > 0,
                "a number > 0")

    def _build(self, task: DiffusionTask, optimizer: Callable, steps: int, eval_every: int, lora_rank: int,
               lora_alpha: float, lora_scale: float, eval_samples: int, eval_seed: int,
               generator: torch.Generator | None) -> None:
        """The work (pretraining on a cold cache, LoRA injection), once every argument has been checked."""
        self.task = task
        self.num_steps = steps
        self.eval_every = eval_every
        self.lora_scale = float(lora_scale)
        self.generator = generator if generator is not None else torch.Generator()
        self.unet = task.pretrained_unet()
        self.lora_rank, self.lora_alpha = lora_rank, float(lora_alpha)
        self.lora_params = add_lora(self.unet, lora_rank, lora_alpha)
        self.optimizer = optimizer(self.lora_params)
        self.chain = DDIMChain.from_scheduler(task.scheduler())
        self.eps = denoiser(self.unet)
        self.eval_noise = torch.randn((eval_samples, *task.image_shape),
                                      generator=torch.Generator().manual_seed(eval_seed)).to(task.device)
        self.reward_queries = 0

    def draw_noise(self, batch: int | None = None) -> Tensor:
        shape = (batch or self.task.batch_size, *self.task.image_shape)
        return randn(shape, self.generator, self.task.device)

    def samples(self, scale: float | None = None) -> Tensor:
        """Deterministic DDIM samples of the fixed evaluation noise at LoRA scale ``scale``."""
        set_lora_scale(self.unet, self.lora_scale if scale is None else scale)
        try:
            return sample(self.eps, self.chain, self.eval_noise)
        finally:
            set_lora_scale(self.unet, 1.0)

    def evaluate(self) -> dict[str, float]:
        self._eval_samples = self.samples()
        return {f"eval_{k}": v for k, v in self.task.metrics(self._eval_samples).items()}

    def eval_images(self, folder: Path, step: int) -> dict[str, Path]:
        """The samples of the evaluation just made, as ``samples/eval_<step>.png`` in the run folder (the
        dashboard's ``eval_samples``, with a step slider): where reward hacking shows first."""
        return {"eval_samples": save_sample_grid(self._eval_samples, Path(folder) / "samples" / f"eval_{step:06d}.png")}

    def summary(self) -> dict[str, Any]:
        return {**self.evaluate(), "reward_queries": self.reward_queries}

    def state_dict(self) -> dict[str, Any]:
        return {"lora": [p.detach().clone() for p in self.lora_params], "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "reward_queries": self.reward_queries}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["lora"]
        if len(saved) != len(self.lora_params) or any(s.shape != p.shape for s, p in zip(saved, self.lora_params)):
            raise ValueError("the checkpoint's LoRA parameters do not have this loop's shapes")
        with torch.no_grad():
            for p, s in zip(self.lora_params, saved):
                p.copy_(s)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.reward_queries = int(state["reward_queries"])

    def lora_file(self) -> dict[str, Any]:
        """What ``lora.pt`` holds (``metaopt.diffusion.lora_file``): the adapters, their rank and alpha, the
        task's class and arguments, for ``python -m metaopt.diffusion.mix``."""
        return lora_file(self.lora_params, self.lora_rank, self.lora_alpha, self.task,
                         reward_queries=self.reward_queries, loop=type(self).__name__)

    def plots(self, folder: Path) -> list[Path]:
        """``samples.png``: the evaluation noise's samples at LoRA scale 0 (base), 0.5 and ``lora_scale``; and
        ``lora.pt``, the trained adapters (``lora_file``), for ``python -m metaopt.diffusion.mix``."""
        torch.save(self.lora_file(), Path(folder) / "lora.pt")
        scales = sorted({0.0, 0.5 * self.lora_scale, self.lora_scale})
        return [plot_lora_scales(self.samples, self.task, scales, Path(folder) / "samples.png")]


def plot_lora_scales(samples: Callable[[float], Tensor], task: DiffusionTask, scales: list[float], path: Path) -> Path:
    """``samples.png``: a grid of the evaluation samples (``samples(scale)``) per LoRA scale, each titled
    with the task's reward and accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scales), figsize=(4 * len(scales), 4.4))
    for axis, scale in zip(axes, scales):
        images = samples(scale)[:64]
        axis.imshow(image_grid(images), cmap="gray", vmin=-1, vmax=1)
        metrics = task.metrics(images)
        axis.set_title(f"LoRA scale {scale:g}\nreward {metrics['reward']:.3g}, acc {metrics['accuracy']:.2f}")
        axis.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_sample_grid(images: Tensor, path: Path, count: int = 64) -> Path:
    """The first ``count`` images (values in [−1, 1]) as one grayscale PNG grid at ``path`` (folders made)."""
    from matplotlib.image import imsave

    path.parent.mkdir(parents=True, exist_ok=True)
    grid = image_grid(images[:count]).repeat_interleave(4, 0).repeat_interleave(4, 1)  # 8x8 digits: 4x larger
    imsave(path, grid.numpy(), cmap="gray", vmin=-1, vmax=1)
    return path


def image_grid(images: Tensor, columns: int = 8, pad: int = 1) -> Tensor:
    """(N, 1, H, W) images as one (rows·(H+pad), columns·(W+pad)) array, padded with −1 (black)."""
    count, _, height, width = images.shape
    rows = -(-count // columns)
    grid = torch.full((rows * (height + pad), columns * (width + pad)), -1.0)
    for i, image in enumerate(images.detach().cpu()):
        r, c = divmod(i, columns)
        grid[r * (height + pad):r * (height + pad) + height, c * (width + pad):c * (width + pad) + width] = image[0]
    return grid.clamp(-1, 1)
