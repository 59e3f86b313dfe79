"""What a diffusion fine-tuning loop needs from a task: a pretrained denoiser, its DDIM sampling
schedule, the shape of an image, and a reward."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["DiffusionTask"]


class DiffusionTask:
    """Base class of the tasks the diffusion loops (DRaFT, DDPO, ES) drive.

    ``pretrained_unet()`` returns a fresh copy of the pretrained ``diffusers`` UNet (it may train and cache
    it first: work that happens only once a loop asks for it, after every config check).
    ``scheduler()`` is the ``diffusers.DDIMScheduler`` with ``num_inference_steps`` set; ``reward(images)``
    scores samples (one number per image), ``reward_differentiable`` says whether its gradient in the images
    is meaningful; ``metrics(images)`` are evaluation numbers of a batch of samples.

    ``config`` (the constructor's arguments) lets a trained LoRA be re-attached to its task later
    (``metaopt.diffusion.mix``); ``base_model_key()`` says which pretrained UNet the task fine-tunes.
    """

    config: dict[str, Any] | None = None

    batch_size: int
    num_inference_steps: int
    image_shape: tuple[int, ...]
    reward_name: str
    reward_differentiable: bool

    def pretrained_unet(self) -> nn.Module:
        raise NotImplementedError

    def scheduler(self) -> Any:
        raise NotImplementedError

    def reward(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def metrics(self, images: Tensor) -> dict[str, float]:
        raise NotImplementedError

    def base_model_key(self) -> dict[str, Any] | None:
        """What determines ``pretrained_unet()``; ``None`` when unknown."""
        return None
