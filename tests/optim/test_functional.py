"""The functional cores against torch.optim, under vmap, and differentiated in their hyperparameters."""

import pytest
import torch
from torch.func import vmap

from metaopt.optim.functional import FUNCTIONAL, adam, adam_init, sgd, sgd_init


def _quadratic_problem(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(6, 6, generator=gen, dtype=dtype)
    hessian = a @ a.T / 6 + 0.1 * torch.eye(6, dtype=dtype)
    params = [torch.randn(6, generator=gen, dtype=dtype), torch.randn(3, 2, generator=gen, dtype=dtype)]

    def grads_of(ps):
        return [hessian @ ps[0] + 0.3 * ps[1].sum(), torch.sin(ps[1]) + ps[0][:3, None]]

    return params, grads_of


SGD_SETTINGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
    dict(lr=0.05, momentum=0.5, maximize=True),
]


@pytest.mark.parametrize("settings", SGD_SETTINGS)
def test_sgd_matches_torch_trajectory(settings):
    params, grads_of = _quadratic_problem()
    reference = [p.clone().requires_grad_(True) for p in params]
    torch_opt = torch.optim.SGD(reference, **settings)
    state = sgd_init(params)
    ours = list(params)
    for _ in range(50):
        for p, g in zip(reference, grads_of([r.detach() for r in reference])):
            p.grad = g
        torch_opt.step()
        ours, state = sgd(ours, grads_of(ours), state, **settings)
    for p, r in zip(ours, reference):
        torch.testing.assert_close(p, r.detach(), rtol=1e-12, atol=1e-12)


ADAM_SETTINGS = [
    dict(lr=0.01),
    dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05),
    dict(lr=0.02, maximize=True),
]


@pytest.mark.parametrize("settings", ADAM_SETTINGS)
def test_adam_matches_torch_trajectory(settings):
    params, grads_of = _quadratic_problem()
    reference = [p.clone().requires_grad_(True) for p in params]
    torch_opt = torch.optim.Adam(reference, **settings)
    kwargs = dict(settings)
    beta1, beta2 = kwargs.pop("betas", (0.9, 0.999))
    state = adam_init(params)
    ours = list(params)
    for _ in range(50):
        for p, g in zip(reference, grads_of([r.detach() for r in reference])):
            p.grad = g
        torch_opt.step()
        ours, state = adam(ours, grads_of(ours), state, beta1=beta1, beta2=beta2, **kwargs)
    for p, r in zip(ours, reference):
        torch.testing.assert_close(p, r.detach(), rtol=1e-12, atol=1e-12)


def test_inputs_are_not_mutated():
    params, grads_of = _quadratic_problem()
    before = [p.clone() for p in params]
    state = adam_init(params)
    adam(params, grads_of(params), state, lr=0.1)
    sgd(params, grads_of(params), sgd_init(params), lr=0.1, momentum=0.9)
    for p, b in zip(params, before):
        assert torch.equal(p, b)
    assert state.step == 0 and all(torch.count_nonzero(m) == 0 for m in state.exp_avg)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_vmap_over_per_particle_hyperparameters_matches_a_loop(name):
    init, update = FUNCTIONAL[name]
    hyper = {"sgd": {"momentum": torch.tensor([0.0, 0.5, 0.9, 0.95])},
             "adam": {"beta1": torch.tensor([0.5, 0.8, 0.9, 0.99])}}[name]
    lrs = torch.tensor([0.01, 0.03, 0.1, 0.2], dtype=torch.float64)
    hyper = {k: v.double() for k, v in hyper.items()}
    params, grads_of = _quadratic_problem()

    def run(lr, h, steps=10):
        ps = list(params)
        state = init(ps)
        for _ in range(steps):
            ps, state = update(ps, grads_of(ps), state, lr=lr, **h)
        return tuple(ps)

    batched = vmap(run)(lrs, hyper)
    for i in range(len(lrs)):
        looped = run(lrs[i], {k: v[i] for k, v in hyper.items()})
        for b, l in zip(batched, looped):
            torch.testing.assert_close(b[i], l, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,hyper_name,value", [("sgd", "lr", 0.05), ("sgd", "momentum", 0.7),
                                                   ("adam", "lr", 0.02), ("adam", "beta1", 0.8)])
def test_hyperparameter_gradients_match_finite_differences(name, hyper_name, value):
    init, update = FUNCTIONAL[name]
    params, grads_of = _quadratic_problem()
    fixed = {"lr": 0.05} if hyper_name != "lr" else {}

    def final_loss(h):
        ps = list(params)
        state = init(ps)
        for _ in range(8):
            ps, state = update(ps, grads_of(ps), state, **fixed, **{hyper_name: h})
        return sum((p**2).sum() for p in ps)

    h = torch.tensor(value, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(final_loss(h), h)
    eps = 1e-6
    numeric = (final_loss(torch.tensor(value + eps, dtype=torch.float64))
               - final_loss(torch.tensor(value - eps, dtype=torch.float64))) / (2 * eps)
    assert abs(grad.item()) > 1e-4  # the derivative is not trivially zero
    torch.testing.assert_close(grad, numeric.detach(), rtol=1e-6, atol=1e-8)


def test_per_tensor_hyperparameters():
    params, grads_of = _quadratic_problem()
    grads = grads_of(params)
    new, _ = sgd(params, grads, sgd_init(params), lr=[0.1, 0.0])
    torch.testing.assert_close(new[0], params[0] - 0.1 * grads[0])
    assert torch.equal(new[1], params[1])
