"""Helpers shared by the complex-momentum and complex-Adam tests."""

import torch


def trajectories(make_a, make_b, steps=100, dtype=torch.float32, shapes=((4, 3), (7,), (2, 2, 2))):
    """Feed the same random gradients to two optimizers over copies of the same parameters."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    a = [torch.nn.Parameter(p.clone()) for p in init]
    b = [torch.nn.Parameter(p.clone()) for p in init]
    opt_a, opt_b = make_a(a), make_b(b)
    for _ in range(steps):
        for x, y in zip(a, b):
            g = torch.randn(x.shape, generator=gen).to(dtype)
            x.grad, y.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    return a, b
