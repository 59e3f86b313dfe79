"""ComplexMomentum: torch's SGD at angle 0, Python-complex arithmetic, functional core, vmap, gradients."""

import math

import pytest
import torch
from complex_helpers import trajectories as _trajectories
from torch.func import vmap

from metaopt.optim import ComplexMomentum
from metaopt.optim.functional import FUNCTIONAL, complex_momentum, complex_momentum_init


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_angle_zero_is_torch_sgd_bit_for_bit(foreach, maximize, weight_decay):
    kw = dict(lr=0.05, momentum=0.9, weight_decay=weight_decay, maximize=maximize, foreach=foreach)
    a, b = _trajectories(lambda p: ComplexMomentum(p, angle=0.0, **kw),
                         lambda p: torch.optim.SGD(p, dampening=0.0, **kw), steps=200)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_momentum_zero_is_gradient_descent():
    a, b = _trajectories(lambda p: ComplexMomentum(p, lr=0.1, momentum=0.0, angle=1.0),
                         lambda p: torch.optim.SGD(p, lr=0.1))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_per_tensor_equals_multi_tensor(weight_decay):
    kw = dict(lr=0.05, momentum=0.8, angle=math.pi / 8, weight_decay=weight_decay)
    a, b = _trajectories(lambda p: ComplexMomentum(p, foreach=False, **kw),
                         lambda p: ComplexMomentum(p, foreach=True, **kw), steps=100)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_arithmetic_matches_python_complex_numbers():
    """The two real buffers are exactly a complex μ: μ ← βμ − g, p ← p + lr·Re μ."""
    lr, momentum, angle, wd = 0.1, 0.9, 0.7, 0.05
    beta = momentum * complex(math.cos(angle), math.sin(angle))
    gen = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(torch.randn(6, dtype=torch.float64, generator=gen))
    opt = ComplexMomentum([p], lr=lr, momentum=momentum, angle=angle, weight_decay=wd)
    ref_p = [float(x) for x in p.detach()]
    ref_mu = [0j] * 6
    for _ in range(50):
        g = torch.randn(6, dtype=torch.float64, generator=gen)
        p.grad = g.clone()
        opt.step()
        for k in range(6):
            ref_mu[k] = beta * ref_mu[k] - (float(g[k]) + wd * ref_p[k])
            ref_p[k] += lr * ref_mu[k].real
    state = opt.state[p]
    torch.testing.assert_close(p.detach(), torch.tensor(ref_p, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    for key, part in (("momentum_real", "real"), ("momentum_imag", "imag")):
        expected = torch.tensor([getattr(m, part) for m in ref_mu], dtype=torch.float64)
        torch.testing.assert_close(state[key], expected, rtol=1e-12, atol=1e-12)
    assert state["momentum_imag"].abs().max() > 0.1  # the imaginary buffer is really used


def test_functional_equals_stateful():
    gen = torch.Generator().manual_seed(2)
    params = [torch.randn(shape, dtype=torch.float64, generator=gen) for shape in ((5, 2), (3,))]
    stateful = [torch.nn.Parameter(p.clone()) for p in params]
    kw = dict(lr=0.03, momentum=0.85, angle=0.4, weight_decay=0.01)
    opt = ComplexMomentum(stateful, **kw)
    state = complex_momentum_init(params)
    for _ in range(30):
        grads = [torch.randn(p.shape, dtype=torch.float64, generator=gen) for p in params]
        params, state = complex_momentum(params, grads, state, **kw)
        for p, g in zip(stateful, grads):
            p.grad = g
        opt.step()
    for p, q in zip(params, stateful):
        torch.testing.assert_close(p, q.detach())
    torch.testing.assert_close(state.momentum_imag[0], opt.state[stateful[0]]["momentum_imag"])
    assert FUNCTIONAL["complex_momentum"].update is complex_momentum


def _quadratic_unroll(lr, momentum, angle, steps=20):
    """Loss after ``steps`` complex-momentum steps on a fixed ill-conditioned quadratic."""
    scales = torch.tensor([1.0, 0.3, 0.05], dtype=torch.float64)
    params = (torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64),)
    state = complex_momentum_init(params)
    for _ in range(steps):
        grads = (scales * params[0],)
        params, state = complex_momentum(params, grads, state, lr=lr, momentum=momentum, angle=angle)
    return 0.5 * (scales * params[0] ** 2).sum()


def test_vmap_over_hyperparameters_equals_loop():
    lrs = torch.tensor([0.1, 0.3, 0.5], dtype=torch.float64)
    momenta = torch.tensor([0.5, 0.9, 0.7], dtype=torch.float64)
    angles = torch.tensor([0.0, 0.4, 2.0], dtype=torch.float64)
    batched = vmap(_quadratic_unroll)(lrs, momenta, angles)
    looped = torch.stack([_quadratic_unroll(*h) for h in zip(lrs, momenta, angles)])
    torch.testing.assert_close(batched, looped)


def test_hyperparameter_gradients_match_finite_differences():
    hyper = torch.tensor([0.4, 0.8, 0.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h: _quadratic_unroll(*h), (hyper,), eps=1e-6, atol=1e-6)
