"""The inner problems a learned optimizer is meta-trained on, and the held-out ones it is tested on.

All are small supervised tasks on the embedded data (scikit-learn's 8×8 digits, a synthetic ill-conditioned
linear regression): MLPs of several widths, depths and activations with several batch sizes, a conv net,
an autoencoder. The held-out set uses architectures, sizes and batch sizes that meta-training never sees.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from metaopt.checks import require
from metaopt.tasks.autoencoder import Autoencoder
from metaopt.tasks.data import load_digits
from metaopt.tasks.linreg import LinearRegression
from metaopt.tasks.models import MLP, ConvNet
from metaopt.tasks.supervised import SupervisedTask

__all__ = ["InnerTask", "digits_tasks", "SETS"]

SETS = ("train", "test")


class InnerTask(NamedTuple):
    name: str
    task: SupervisedTask


def _classifier(data, model, batch_size: int) -> SupervisedTask:
    return SupervisedTask(data, model, kind="classification", batch_size=batch_size)


def digits_tasks(which: str = "train") -> list[InnerTask]:
    """The meta-training distribution (``"train"``) or the held-out tasks (``"test"``)."""
    require("tasks", which, which in SETS, f"one of {SETS}")
    data = load_digits()
    mlp = functools.partial(functools.partial, MLP)
    if which == "train":
        return [
            InnerTask("mlp_tanh_32_b32", _classifier(data, mlp(hidden_sizes=[32], activation="tanh"), 32)),
            InnerTask("mlp_tanh_64_b128", _classifier(data, mlp(hidden_sizes=[64], activation="tanh"), 128)),
            InnerTask("mlp_relu_32x2_b64", _classifier(data, mlp(hidden_sizes=[32, 32], activation="relu"), 64)),
            InnerTask("mlp_relu_64x2_b128", _classifier(data, mlp(hidden_sizes=[64, 64], activation="relu"), 128)),
            InnerTask("mlp_relu_32x3_b32", _classifier(data, mlp(hidden_sizes=[32, 32, 32], activation="relu"), 32)),
            InnerTask("mlp_relu_64x3_b32", _classifier(data, mlp(hidden_sizes=[64, 64, 64], activation="relu"), 32)),
            InnerTask("mlp_relu_32x4_b64", _classifier(data, mlp(hidden_sizes=[32] * 4, activation="relu"), 64)),
            InnerTask("conv8_relu_b64", _classifier(data, functools.partial(ConvNet, channels=8), 64)),
            InnerTask("autoencoder_32_8_32", Autoencoder(data, mlp(hidden_sizes=[32, 8, 32], activation="tanh"),
                                                         batch_size=64)),
            InnerTask("autoencoder_48_16_8_16_48", Autoencoder(data, mlp(hidden_sizes=[48, 16, 8, 16, 48],
                                                                         activation="tanh"), batch_size=32)),
            InnerTask("linreg_20_cond100", LinearRegression(dim=20, condition_number=100.0, batch_size=32)),
        ]
    return [
        InnerTask("mlp_relu_48x3_b64", _classifier(data, mlp(hidden_sizes=[48, 48, 48], activation="relu"), 64)),
        InnerTask("mlp_gelu_128_b32", _classifier(data, mlp(hidden_sizes=[128], activation="gelu"), 32)),
        InnerTask("conv16_tanh_b128", _classifier(data, functools.partial(ConvNet, channels=16, activation="tanh"),
                                                  128)),
        InnerTask("autoencoder_64_32_8_32_64", Autoencoder(data, mlp(hidden_sizes=[64, 32, 8, 32, 64],
                                                                     activation="tanh"), batch_size=64)),
        InnerTask("linreg_30_cond1000", LinearRegression(dim=30, condition_number=1000.0, batch_size=32,
                                                         data_seed=1)),
    ]
