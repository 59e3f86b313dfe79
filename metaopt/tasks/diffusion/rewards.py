"""Rewards of 8x8 digit samples in [-1, 1]: a classifier's log-probability of a target digit, image
statistics (left-right symmetry, ink) and the classifier's non-differentiable accuracy."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from metaopt.checks import require

__all__ = ["Reward", "REWARDS", "DigitClassifier", "train_classifier", "to_unit"]


def to_unit(images: Tensor) -> Tensor:
    """Samples in [-1, 1] as the classifier's inputs in [0, 1] (flattened, unclamped: clamping would cut
    the reward's gradient at the edges)."""
    return (images.flatten(1) + 1) / 2


class DigitClassifier(nn.Module):
    """An MLP on flattened 8x8 digits in [0, 1]."""

    def __init__(self, hidden: int = 128, pixels: int = 64, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(pixels, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, inputs: Tensor) -> Tensor:
        return self.net(inputs)


def train_classifier(inputs: Tensor, targets: Tensor, steps: int, seed: int, hidden: int = 128) -> DigitClassifier:
    """Full-batch Adam with weight decay and light input noise (samples are noisier than the data)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitClassifier(hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    for _ in range(steps):
        noisy = inputs + 0.05 * torch.randn(inputs.shape, generator=generator)
        loss = nn.functional.cross_entropy(model(noisy), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


class Reward(NamedTuple):
    """``score(images, classifier, target_digit)`` -> one reward per image; ``differentiable``: whether
    its gradient in the images means anything (DRaFT needs it)."""

    score: object
    differentiable: bool
    description: str


def _digit_logprob(images: Tensor, classifier: nn.Module, target: int) -> Tensor:
    return torch.log_softmax(classifier(to_unit(images)), dim=-1)[:, target]


def _digit_accuracy(images: Tensor, classifier: nn.Module, target: int) -> Tensor:
    with torch.no_grad():
        return (classifier(to_unit(images)).argmax(-1) == target).float()


def _symmetry(images: Tensor, classifier: nn.Module, target: int) -> Tensor:
    return -(images - images.flip(-1)).pow(2).flatten(1).mean(1)


def _ink(images: Tensor, classifier: nn.Module, target: int) -> Tensor:
    # clamped: a pixel brighter than white is no more ink (and the reward stays bounded)
    return to_unit(images).clamp(0, 1).mean(1)


REWARDS = {
    "digit_logprob": Reward(_digit_logprob, True, "the classifier's log-probability of target_digit"),
    "symmetry": Reward(_symmetry, True, "minus the mean squared left-right asymmetry"),
    "ink": Reward(_ink, True, "the mean pixel intensity, each pixel clamped to [0, 1]"),
    "digit_accuracy": Reward(_digit_accuracy, False, "1 where the classifier's arg-max is target_digit"),
}


def reward_named(name: str) -> Reward:
    require("reward", name, name in REWARDS, ", ".join(REWARDS))
    return REWARDS[name]
