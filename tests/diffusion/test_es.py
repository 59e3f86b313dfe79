"""Antithetic ES over a list of parameters: unbiased on a linear objective, parameters restored."""

import torch

from metaopt.diffusion import antithetic_es_gradient


def test_antithetic_es_estimates_the_gradient_and_restores_the_parameters():
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(3, generator=generator), torch.randn(2, 2, generator=generator)]
    before = [p.clone() for p in params]
    direction = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([[0.0, 3.0], [-1.0, 0.25]])]

    def objective():  # linear plus a quadratic term, which antithetic pairs cancel exactly
        return float(sum((d * p).sum() + (p ** 2).sum() for d, p in zip(direction, params)))

    estimate = antithetic_es_gradient(params, objective, num_pairs=4000, sigma=0.1, generator=generator)
    for p, b in zip(params, before):
        torch.testing.assert_close(p, b)
    expected = [d + 2 * b for d, b in zip(direction, before)]
    for e, x in zip(estimate, expected):
        torch.testing.assert_close(e, x, atol=0.15, rtol=0.05)
