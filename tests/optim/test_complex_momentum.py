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


SGD_OPTIONS = [dict(dampening=0.3), dict(nesterov=True), dict(nesterov=True, weight_decay=0.01),
               dict(dampening=0.5, weight_decay=0.01, maximize=True)]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("options", SGD_OPTIONS)
def test_angle_zero_with_nesterov_or_dampening_is_torch_sgd_bit_for_bit(foreach, options):
    kw = dict(lr=0.05, momentum=0.9, foreach=foreach, **options)
    a, b = _trajectories(lambda p: ComplexMomentum(p, angle=0.0, **kw), lambda p: torch.optim.SGD(p, **kw))
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("options", SGD_OPTIONS)
def test_nesterov_and_dampening_per_tensor_equal_multi_tensor_and_the_functional_core(options):
    kw = dict(lr=0.05, momentum=0.8, angle=0.7, **options)
    a, b = _trajectories(lambda p: ComplexMomentum(p, foreach=False, **kw),
                         lambda p: ComplexMomentum(p, foreach=True, **kw), dtype=torch.float64)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(4, dtype=torch.float64, generator=gen)]
    stateful = [torch.nn.Parameter(params[0].clone())]
    opt, state = ComplexMomentum(stateful, **kw), complex_momentum_init(params)
    for _ in range(20):
        grads = [torch.randn(4, dtype=torch.float64, generator=gen)]
        params, state = complex_momentum(params, grads, state, **kw)
        stateful[0].grad = grads[0]
        opt.step()
    torch.testing.assert_close(params[0], stateful[0].detach(), rtol=1e-12, atol=1e-12)


def _nesterov_by_complex_numbers(grads, lr, beta):
    """``μ ← βμ − g``, ``p ← p + lr·Re(βμ − g)`` with Python complex numbers (one coordinate)."""
    mu, p = 0j, 0.0
    for g in grads:
        mu = beta * mu - g
        p += lr * (beta * mu - g).real
    return p


def test_nesterov_for_complex_beta_is_the_look_ahead_of_the_complex_recursion():
    grads = [0.3, -1.2, 0.7, 0.05, -0.4]
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = ComplexMomentum([param], lr=0.1, momentum=0.8, nesterov=True, angle=1.1)
    for g in grads:
        param.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    beta = 0.8 * complex(math.cos(1.1), math.sin(1.1))
    assert param.item() == pytest.approx(_nesterov_by_complex_numbers(grads, 0.1, beta), rel=1e-12)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("options", [dict(), *SGD_OPTIONS])
def test_functional_core_at_angle_zero_is_torch_sgd(dtype, tolerance, options):
    """100 steps of the pure core against torch.optim.SGD with the same options."""
    kw = dict(lr=0.05, momentum=0.9, **options)
    gen = torch.Generator().manual_seed(7)
    params = tuple(torch.randn(s, generator=gen).to(dtype) for s in ((4, 3), (5,)))
    reference = [torch.nn.Parameter(p.clone()) for p in params]
    opt, state = torch.optim.SGD(reference, **kw), complex_momentum_init(params)
    for _ in range(100):
        grads = tuple(torch.randn(p.shape, generator=gen).to(dtype) for p in params)
        params, state = complex_momentum(params, grads, state, angle=0.0, **kw)
        for p, g in zip(reference, grads):
            p.grad = g
        opt.step()
    for p, q in zip(params, reference):
        torch.testing.assert_close(p, q.detach(), rtol=tolerance, atol=tolerance)


def test_the_functional_core_stays_differentiable_and_vmappable_with_dampening_and_nesterov():
    def unroll(lr, momentum, angle):
        params = (torch.tensor([1.0, -2.0], dtype=torch.float64),)
        state = complex_momentum_init(params)
        for _ in range(8):
            params, state = complex_momentum(params, (0.5 * params[0],), state, lr=lr, momentum=momentum,
                                             angle=angle, dampening=0.2)
        params2, state2 = complex_momentum(params, (0.5 * params[0],), state, lr=lr, momentum=momentum,
                                           angle=angle, nesterov=True)
        return (params2[0] ** 2).sum()

    hyper = torch.tensor([0.1, 0.7, 0.4], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h: unroll(h[0], h[1], h[2]), (hyper,), eps=1e-6, atol=1e-6)
    batch = torch.tensor([[0.1, 0.7, 0.4], [0.05, 0.5, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(vmap(unroll)(*batch.T), torch.stack([unroll(*h) for h in batch]))


def test_nesterov_needs_momentum_and_no_dampening_as_in_torch():
    param = [torch.nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match="invalid nesterov: True .allowed: False unless momentum > 0 and "
                                         "dampening = 0"):
        ComplexMomentum(param, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="invalid nesterov"):
        ComplexMomentum(param, lr=0.1, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="invalid dampening: 1.5"):
        ComplexMomentum(param, lr=0.1, dampening=1.5)


def test_torch_sgd_positional_order_and_a_default_lr():
    param = [torch.nn.Parameter(torch.ones(2))]
    assert ComplexMomentum(param).defaults["lr"] == 1e-3 == torch.optim.SGD(param).defaults["lr"]
    group = ComplexMomentum(param, 0.1, 0.8, 0.2, 0.01, False).defaults
    assert (group["lr"], group["momentum"], group["dampening"], group["weight_decay"], group["nesterov"]) == (
        0.1, 0.8, 0.2, 0.01, False)
    assert group["angle"] == math.pi / 8
    with pytest.raises(TypeError):
        ComplexMomentum(param, 0.1, 0.8, 0.0, 0.0, False, 0.3)  # angle is keyword-only


@pytest.mark.parametrize("foreach", [False, True])
def test_complex_parameters_are_their_real_and_imaginary_parts_as_in_torch(foreach):
    """A complex parameter is two real coordinates (view_as_real), as torch.optim treats it: at
    angle 0 the trajectory is torch's SGD on the complex parameter; for complex β each coordinate is
    its own real parameter."""
    kw = dict(lr=0.05, momentum=0.9, foreach=foreach)
    a, b = _trajectories(lambda p: ComplexMomentum(p, angle=0.0, **kw), lambda p: torch.optim.SGD(p, **kw),
                         dtype=torch.complex64)
    for x, y in zip(a, b):
        assert x.dtype == torch.complex64
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
    a, b = _trajectories(lambda p: ComplexMomentum(p, angle=0.6, **kw), lambda p: ComplexMomentum(p, angle=0.6, **kw),
                         dtype=torch.complex128)
    gen = torch.Generator().manual_seed(0)
    init = torch.randn(7, generator=gen).to(torch.complex128)
    real_view = torch.nn.Parameter(torch.view_as_real(init).clone())
    complex_param = torch.nn.Parameter(init.clone())
    opts = [ComplexMomentum([real_view], angle=0.6, **kw), ComplexMomentum([complex_param], angle=0.6, **kw)]
    for _ in range(10):
        g = torch.randn(7, generator=gen).to(torch.complex128) * (1 + 1j)
        real_view.grad, complex_param.grad = torch.view_as_real(g).clone(), g.clone()
        for opt in opts:
            opt.step()
    torch.testing.assert_close(torch.view_as_real(complex_param.detach()), real_view.detach(), rtol=0, atol=0)
    assert opts[1].state[complex_param]["momentum_real"].dtype == torch.complex128
