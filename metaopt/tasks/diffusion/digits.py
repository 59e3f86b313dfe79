"""``task=digits_diffusion``: a tiny DDPM on scikit-learn's 8x8 digits, to fine-tune on rewards."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from metaopt.checks import require
from metaopt.tasks.data import load_digits
from metaopt.tasks.diffusion.base import DiffusionTask
from metaopt.tasks.diffusion.cache import cached_state
from metaopt.tasks.diffusion.rewards import DigitClassifier, reward_named, to_unit, train_classifier

__all__ = ["DigitsDiffusion", "train_ddpm"]

IMAGE_SIZE = 8  # the digits are 8x8


def _diffusers():
    try:
        import diffusers
    except ImportError as error:  # the core package stays torch-only
        raise ImportError('the diffusion tasks need diffusers and peft: pip install "metaopt[diffusion]"') from error
    return diffusers


def train_ddpm(unet: nn.Module, images: Tensor, alphas_cumprod: Tensor, steps: int, batch_size: int, lr: float,
               seed: int) -> nn.Module:
    """DDPM training (Ho et al., 2020, Alg. 1): regress the noise ε of x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε at a
    uniform timestep t. Adam with a cosine learning-rate decay."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(unet.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    unet.train()
    for _ in range(steps):
        index = torch.randint(len(images), (batch_size,), generator=generator)
        clean = images[index]
        timesteps = torch.randint(len(alphas_cumprod), (batch_size,), generator=generator)
        noise = torch.randn(clean.shape, generator=generator)
        alpha = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noisy = alpha.sqrt() * clean + (1 - alpha).sqrt() * noise
        loss = nn.functional.mse_loss(unet(noisy, timesteps).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return unet.eval()


class DigitsDiffusion(DiffusionTask):
    """A ``diffusers.UNet2DModel`` DDPM-trained on the digits' training split (pixels rescaled to [-1, 1]),
    sampled with DDIM in ``num_inference_steps`` steps, and a reward of its samples (``rewards.REWARDS``).

    The UNet and the reward's classifier (an MLP on the same split) are trained on first use and cached
    (``$METAOPT_CACHE`` or ``~/.cache/metaopt``) under a hash of what determines them.
    """

    def __init__(self, reward: str = "digit_logprob", target_digit: int = 3, batch_size: int = 16,
                 num_inference_steps: int = 10, sample_size: int = IMAGE_SIZE,
                 block_out_channels: Sequence[int] = (16, 32), layers_per_block: int = 1, norm_num_groups: int = 8,
                 num_train_timesteps: int = 1000, pretrain_steps: int = 1500, pretrain_batch_size: int = 64,
                 pretrain_lr: float = 2e-3, classifier_steps: int = 400, seed: int = 0, device: str = "cpu"):
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.config["block_out_channels"] = list(block_out_channels)
        self.reward_name = reward
        self._reward = reward_named(reward)
        require("target_digit", target_digit, isinstance(target_digit, int) and 0 <= target_digit <= 9,
                "an integer digit 0-9")
        require("sample_size", sample_size, sample_size == IMAGE_SIZE,
                f"{IMAGE_SIZE}: the UNet's sample_size must match the {IMAGE_SIZE}x{IMAGE_SIZE} digits")
        channels = list(block_out_channels)
        require("block_out_channels", channels, len(channels) >= 1 and all(
            isinstance(c, int) and c > 0 and c % norm_num_groups == 0 for c in channels),
                f"positive integers divisible by norm_num_groups={norm_num_groups}")
        require("num_inference_steps", num_inference_steps,
                isinstance(num_inference_steps, int) and 1 <= num_inference_steps <= num_train_timesteps,
                f"an integer in [1, num_train_timesteps={num_train_timesteps}]")
        for name, value in (("batch_size", batch_size), ("layers_per_block", layers_per_block),
                            ("pretrain_steps", pretrain_steps), ("pretrain_batch_size", pretrain_batch_size),
                            ("classifier_steps", classifier_steps)):
            require(name, value, isinstance(value, int) and value > 0, "a positive integer")
        require("pretrain_lr", pretrain_lr, isinstance(pretrain_lr, (int, float)) and pretrain_lr > 0, "a number > 0")
        _diffusers()  # a missing extra fails here, before any work
        self.target_digit = target_digit
        self.batch_size = batch_size
        self.num_inference_steps = num_inference_steps
        self.image_shape = (1, sample_size, sample_size)
        self.reward_differentiable = self._reward.differentiable
        self.device = torch.device(device)
        self.seed = seed
        self._unet_config = {
            "sample_size": sample_size, "in_channels": 1, "out_channels": 1, "layers_per_block": layers_per_block,
            "block_out_channels": channels, "norm_num_groups": norm_num_groups,
            "down_block_types": ["DownBlock2D"] + ["AttnDownBlock2D"] * (len(channels) - 1),
            "up_block_types": ["AttnUpBlock2D"] * (len(channels) - 1) + ["UpBlock2D"],
        }
        self._pretrain = {"steps": pretrain_steps, "batch_size": pretrain_batch_size, "lr": pretrain_lr,
                          "num_train_timesteps": num_train_timesteps, "seed": seed}
        self._classifier_steps = classifier_steps
        self._unet_state: dict[str, Tensor] | None = None
        self._classifier: DigitClassifier | None = None
        self._data: Tensor | None = None

    def base_model_key(self) -> dict[str, Any]:
        """What determines the pretrained UNet (its architecture, its DDPM training, the data): two tasks with
        the same key fine-tune the same base model, so their LoRAs can be mixed."""
        return {"unet": self._unet_config, "pretrain": self._pretrain, "data": "sklearn-digits-train"}

    def _training_images(self) -> tuple[Tensor, Tensor]:
        train = load_digits().train
        return train.inputs, train.targets

    def scheduler(self) -> Any:
        # clip_sample=False: the sampler's step is the plain DDIM update, differentiable everywhere.
        # "trailing" spacing starts at the last training timestep (pure noise) and ends at T/steps − 1, so the
        # last step denoises a truly noisy x₁ (Lin et al., 2024, Sec. 3.3), the step DRaFT-K/LV train on.
        scheduler = _diffusers().DDIMScheduler(num_train_timesteps=self._pretrain["num_train_timesteps"],
                                               clip_sample=False, set_alpha_to_one=True,
                                               timestep_spacing="trailing")
        scheduler.set_timesteps(self.num_inference_steps)
        return scheduler

    def build_unet(self) -> nn.Module:
        """The UNet of this config, untrained."""
        return _diffusers().UNet2DModel(**self._unet_config)

    def pretrained_unet(self) -> nn.Module:
        if self._unet_state is None:
            def build() -> dict[str, Tensor]:
                torch.manual_seed(self.seed)
                unet = self.build_unet()
                inputs, _ = self._training_images()
                images = inputs.view(-1, *self.image_shape) * 2 - 1
                alphas = self.scheduler().alphas_cumprod.float()
                p = self._pretrain
                with torch.enable_grad():
                    return train_ddpm(unet, images, alphas, p["steps"], p["batch_size"], p["lr"],
                                      p["seed"]).state_dict()

            self._unet_state = cached_state("digits_ddpm", self.base_model_key(), build)
        unet = self.build_unet()
        unet.load_state_dict(copy.deepcopy(self._unet_state))
        return unet.to(self.device).eval().requires_grad_(False)

    @property
    def classifier(self) -> DigitClassifier:
        if self._classifier is None:
            def build() -> dict[str, Tensor]:
                inputs, targets = self._training_images()
                with torch.enable_grad():  # first asked for inside a sampler's no_grad (an ES loop)
                    return train_classifier(inputs, targets, self._classifier_steps, self.seed).state_dict()

            key = {"steps": self._classifier_steps, "seed": self.seed, "data": "sklearn-digits-train", "hidden": 128}
            classifier = DigitClassifier()
            classifier.load_state_dict(cached_state("digits_classifier", key, build))
            self._classifier = classifier.to(self.device).eval().requires_grad_(False)
        return self._classifier

    def reward(self, images: Tensor) -> Tensor:
        return self._reward.score(images, self.classifier, self.target_digit)

    def metrics(self, images: Tensor) -> dict[str, float]:
        """The reward, the target-digit accuracy, the diversity of the classifier's labels (entropy of their
        histogram, in nats; log 10 ≈ 2.30 when all digits are equally frequent) and ``data_distance``: the
        RMS pixel distance (in [-1, 1]) from each sample to its nearest training digit, averaged, which grows
        when fine-tuning hacks the reward with images unlike any digit (held-out digits: about 0.3)."""
        with torch.no_grad():
            labels = self.classifier(to_unit(images)).argmax(-1)
            histogram = torch.bincount(labels, minlength=10).float() / len(labels)
            entropy = -(histogram[histogram > 0] * histogram[histogram > 0].log()).sum()
            return {"reward": self.reward(images).mean().item(),
                    "accuracy": (labels == self.target_digit).float().mean().item(),
                    "class_entropy": entropy.item() + 0.0,  # no -0.0 for one class
                    "data_distance": self.data_distance(images)}

    def data_distance(self, images: Tensor) -> float:
        """Mean over ``images`` of the RMS distance to the nearest training digit (both in [-1, 1])."""
        if self._data is None:
            self._data = (self._training_images()[0] * 2 - 1).to(self.device)
        distances = torch.cdist(images.flatten(1).to(self._data.dtype), self._data)
        return (distances.min(1).values / images[0].numel() ** 0.5).mean().item()

    def class_histogram(self, images: Tensor) -> list[int]:
        with torch.no_grad():
            return torch.bincount(self.classifier(to_unit(images)).argmax(-1), minlength=10).tolist()
