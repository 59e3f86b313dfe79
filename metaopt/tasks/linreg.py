"""Synthetic linear regression with a controllable condition number and noise level."""

from __future__ import annotations

import math

import torch

from metaopt.checks import require
from metaopt.tasks.data import Split, SplitData
from metaopt.tasks.models import MLP
from metaopt.tasks.supervised import SupervisedTask

__all__ = ["LinearRegression"]


class LinearRegression(SupervisedTask):
    """``y = x·w* + noise·ε`` with ``x ~ N(0, Σ)``, ``Σ = V diag(σ²) Vᵀ``.

    The eigenvalues of the population Hessian ``Σ`` of the loss ``½E(x·w − y)²`` are spaced
    geometrically from 1 down to ``1/condition_number``; ``V`` is a random rotation. The model is
    linear without bias, so the problem is a quadratic with Hessian ``Σ`` (exposed as
    ``self.covariance``).
    """

    def __init__(self, dim: int = 20, condition_number: float = 100.0, noise: float = 0.1,
                 num_train: int = 512, num_val: int = 256, num_test: int = 256, batch_size: int = 32,
                 data_seed: int = 0, device: str = "cpu"):
        require("task.dim", dim, isinstance(dim, int) and dim > 0, "a positive integer")
        require("task.condition_number", condition_number,
                math.isfinite(condition_number) and condition_number >= 1, "a finite number >= 1")
        require("task.noise", noise, math.isfinite(noise) and noise >= 0, "a finite number >= 0")
        for name, n in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            require(f"task.{name}", n, isinstance(n, int) and n > 0, "a positive integer")
        gen = torch.Generator().manual_seed(data_seed)
        exponents = torch.linspace(0, 1, dim, dtype=torch.float64) if dim > 1 else torch.zeros(1, dtype=torch.float64)
        scales = condition_number ** (-0.5 * exponents)
        rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
        self.covariance = (rotation * scales**2) @ rotation.T
        self.true_weights = torch.randn(dim, generator=gen, dtype=torch.float64)

        def sample(n: int) -> Split:
            x = (torch.randn(n, dim, generator=gen, dtype=torch.float64) * scales) @ rotation.T
            y = x @ self.true_weights + noise * torch.randn(n, generator=gen, dtype=torch.float64)
            return Split(x.float(), y.float()[:, None])

        data = SplitData(sample(num_train), sample(num_val), sample(num_test))
        super().__init__(data, lambda in_features, out_features: MLP(in_features, out_features, (), bias=False),
                         batch_size=batch_size, kind="regression", device=device)
