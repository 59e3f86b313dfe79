"""Small models for the embedded tasks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from metaopt.checks import require

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


class MLP(nn.Sequential):
    """``Linear → activation → … → Linear``; ``hidden_sizes=()`` is a linear model."""

    def __init__(self, in_features: int, out_features: int, hidden_sizes: Sequence[int] = (64,),
                 activation: str = "relu", bias: bool = True):
        require("model.activation", activation, activation in _ACTIVATIONS, f"one of {sorted(_ACTIVATIONS)}")
        sizes = [in_features, *hidden_sizes, out_features]
        for size in sizes:
            require("model.hidden_sizes", list(hidden_sizes), int(size) > 0, "positive integers")
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(int(n_in), int(n_out), bias=bias))
            if i < len(sizes) - 2:
                layers.append(_ACTIVATIONS[activation]())
        super().__init__(nn.Flatten(), *layers)


class ConvNet(nn.Sequential):
    """A small conv net on square single-channel images given flat (``in_features = side²``, 64 for the
    8×8 digits): ``conv3×3(channels) → act → conv3×3 stride 2 (channels) → act → Linear``."""

    def __init__(self, in_features: int, out_features: int, channels: int = 8, activation: str = "relu"):
        require("model.activation", activation, activation in _ACTIVATIONS, f"one of {sorted(_ACTIVATIONS)}")
        side = int(round(in_features ** 0.5))
        require("model.in_features", in_features, side * side == in_features and side >= 4,
                "a square number of pixels (side >= 4)")
        require("model.channels", channels, isinstance(channels, int) and channels > 0, "a positive integer")
        reduced = (side + 1) // 2
        super().__init__(nn.Unflatten(1, (1, side, side)), nn.Conv2d(1, channels, 3, padding=1),
                         _ACTIVATIONS[activation](), nn.Conv2d(channels, channels, 3, stride=2, padding=1),
                         _ACTIVATIONS[activation](), nn.Flatten(),
                         nn.Linear(channels * reduced * reduced, out_features))
