"""Autoencoders: a supervised regression task whose targets are its (flattened) inputs."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from metaopt.tasks.data import Split, SplitData
from metaopt.tasks.supervised import SupervisedTask

__all__ = ["Autoencoder"]


class Autoencoder(SupervisedTask):
    """Reconstruct the inputs of ``data`` (its labels are dropped) with ``model``, under half the MSE.

    ``model`` is a factory called with ``in_features = out_features =`` the number of input
    features, e.g. ``functools.partial(MLP, hidden_sizes=(64, 32, 8, 32, 64))``: the deep
    bottleneck autoencoders on which APO and K-FAC compare their preconditioners.
    """

    def __init__(self, data: SplitData, model: Callable[..., nn.Module], batch_size: int = 64,
                 max_eval_samples: int | None = None, device: str = "cpu"):
        reconstruction = SplitData(*(Split(s.inputs, s.inputs.flatten(1).clone()) for s in data))
        super().__init__(reconstruction, model, batch_size=batch_size, kind="regression",
                         max_eval_samples=max_eval_samples, device=device)
