"""Antithetic ES (Salimans et al., 2017) over a list of parameters, for rewards without gradients.

A fine-tuning step is a one-step inner problem, so ES-Single (one ε per particle per inner problem,
Vicol et al., 2023) reduces to antithetic ES with common random numbers: both members of a pair score
the same sampler noise."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from metaopt.checks import require
from metaopt.diffusion.sampler import randn

__all__ = ["antithetic_es_gradient"]


@torch.no_grad()
def antithetic_es_gradient(params: Sequence[Tensor], objective: Callable[[], float], num_pairs: int, sigma: float,
                           generator: torch.Generator | None = None) -> list[Tensor]:
    """∇̂ E_ε[f(θ+ε)] = 1/(2Nσ²) Σ_i (f(θ+ε_i) − f(θ−ε_i)) ε_i with ε_i ~ N(0, σ²I), N = ``num_pairs``;
    ``objective()`` evaluates f at the parameters' current values (they are restored afterwards)."""
    require("num_pairs", num_pairs, isinstance(num_pairs, int) and num_pairs >= 1, "a positive integer")
    require("sigma", sigma, isinstance(sigma, (int, float)) and sigma > 0, "a number > 0")
    gradient = [torch.zeros_like(p) for p in params]
    centre = [p.clone() for p in params]
    for _ in range(num_pairs):
        perturbation = [sigma * randn(p.shape, generator, p.device) for p in params]
        scores = []
        for sign in (1.0, -1.0):
            for p, c, e in zip(params, centre, perturbation):
                torch.add(c, e, alpha=sign, out=p)
            scores.append(objective())
        for g, e in zip(gradient, perturbation):
            g.add_(e, alpha=(scores[0] - scores[1]) / (2 * num_pairs * sigma ** 2))
    for p, c in zip(params, centre):  # exactly the values it was called with
        p.copy_(c)
    return gradient
