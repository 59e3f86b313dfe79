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
