"""A researcher's own module, as the runner sees it: a model factory and a data loader, named by
``_target_`` (``task=custom task.model._target_=tests.tasks.user_project.make_net …``)."""

import numpy as np
import torch
from torch import nn

from metaopt.tasks import from_arrays

BUILT: list[nn.Module] = []


class UserNet(nn.Module):
    def __init__(self, in_features, out_features, width=16):
        super().__init__()
        self.hidden = nn.Linear(in_features, width)
        self.out = nn.Linear(width, out_features)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x.flatten(1))))


def make_net(in_features, out_features, width=16):
    net = UserNet(in_features, out_features, width)
    BUILT.append(net)
    return net


def load(count=300, seed=0):
    """Three Gaussian blobs in 5 dimensions, as numpy arrays."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 3, count)
    inputs = rng.normal(size=(count, 5)) + 2.0 * np.eye(3, 5)[targets]
    return from_arrays(inputs, targets, val_fraction=0.2, test_fraction=0.2, split_seed=seed)
