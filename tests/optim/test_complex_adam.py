"""ComplexAdam: torch's Adam at angle 0, Python-complex arithmetic, functional core, vmap, gradients."""

import math

import pytest
import torch
from complex_helpers import trajectories as _trajectories
from torch.func import vmap

from metaopt.optim import ComplexAdam
from metaopt.optim.functional import FUNCTIONAL, complex_adam, complex_adam_init


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_angle_zero_is_torch_adam_bit_for_bit(foreach, maximize, weight_decay):
    kw = dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay, maximize=maximize,
              foreach=foreach)
    a, b = _trajectories(lambda p: ComplexAdam(p, angle=0.0, **kw), lambda p: torch.optim.Adam(p, **kw),
                         steps=200)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_per_tensor_equals_multi_tensor():
    kw = dict(lr=0.01, betas=(0.9, 0.99), angle=math.pi / 8, weight_decay=0.1)
    a, b = _trajectories(lambda p: ComplexAdam(p, foreach=False, **kw),
                         lambda p: ComplexAdam(p, foreach=True, **kw), steps=100)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_arithmetic_matches_python_complex_numbers():
    lr, beta1, beta2, angle, eps, wd = 0.01, 0.9, 0.99, 0.6, 1e-8, 0.02
    b = beta1 * complex(math.cos(angle), math.sin(angle))
    gen = torch.Generator().manual_seed(3)
    p = torch.nn.Parameter(torch.randn(5, dtype=torch.float64, generator=gen))
    opt = ComplexAdam([p], lr=lr, betas=(beta1, beta2), angle=angle, eps=eps, weight_decay=wd)
    ref_p, ref_m, ref_v = [float(x) for x in p.detach()], [0j] * 5, [0.0] * 5
    for t in range(1, 41):
        g = torch.randn(5, dtype=torch.float64, generator=gen)
        p.grad = g.clone()
        opt.step()
        for k in range(5):
            gk = float(g[k]) + wd * ref_p[k]
            ref_m[k] = b * ref_m[k] + (1 - b) * gk
            ref_v[k] = beta2 * ref_v[k] + (1 - beta2) * gk * gk
            m_hat = ref_m[k] / (1 - b**t)
            ref_p[k] -= lr * m_hat.real / (math.sqrt(ref_v[k] / (1 - beta2**t)) + eps)
    state = opt.state[p]
    torch.testing.assert_close(p.detach(), torch.tensor(ref_p, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    imag = torch.tensor([m.imag for m in ref_m], dtype=torch.float64)
    torch.testing.assert_close(state["exp_avg_imag"], imag)
    assert state["step"].item() == 40


def test_constant_gradient_gives_adams_step_for_any_angle():
    """The bias-corrected complex first moment of a constant gradient is that gradient."""
    g = torch.tensor([0.5, -2.0, 1e-3], dtype=torch.float64)
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = ComplexAdam([p], lr=0.1, angle=2.5, eps=0.0 + 1e-12)
    for t in range(1, 6):
        p.grad = g.clone()
        opt.step()
        torch.testing.assert_close(p.detach(), -0.1 * t * g.sign(), rtol=1e-9, atol=1e-9)


def test_functional_equals_stateful():
    gen = torch.Generator().manual_seed(4)
    params = [torch.randn(shape, dtype=torch.float64, generator=gen) for shape in ((4, 3), (2,))]
    stateful = [torch.nn.Parameter(p.clone()) for p in params]
    opt = ComplexAdam(stateful, lr=0.02, betas=(0.85, 0.98), angle=0.3, eps=1e-8, weight_decay=0.01)
    state = complex_adam_init(params)
    for _ in range(30):
        grads = [torch.randn(p.shape, dtype=torch.float64, generator=gen) for p in params]
        params, state = complex_adam(params, grads, state, lr=0.02, beta1=0.85, beta2=0.98, angle=0.3,
                                     eps=1e-8, weight_decay=0.01)
        for p, g in zip(stateful, grads):
            p.grad = g
        opt.step()
    for p, q in zip(params, stateful):
        torch.testing.assert_close(p, q.detach())
    assert FUNCTIONAL["complex_adam"].update is complex_adam


def _unroll(lr, beta1, angle, steps=15):
    scales = torch.tensor([1.0, 0.3, 0.05], dtype=torch.float64)
    params = (torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64),)
    state = complex_adam_init(params)
    for _ in range(steps):
        grads = (scales * params[0],)
        params, state = complex_adam(params, grads, state, lr=lr, beta1=beta1, angle=angle, eps=1e-3)
    return 0.5 * (scales * params[0] ** 2).sum()


def test_vmap_over_hyperparameters_equals_loop():
    hyper = torch.tensor([[0.1, 0.9, 0.0], [0.05, 0.5, 0.4], [0.2, 0.7, 2.0]], dtype=torch.float64)
    batched = vmap(_unroll)(hyper[:, 0], hyper[:, 1], hyper[:, 2])
    torch.testing.assert_close(batched, torch.stack([_unroll(*h) for h in hyper]))


def test_hyperparameter_gradients_match_finite_differences():
    hyper = torch.tensor([0.1, 0.8, 0.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h: _unroll(h[0], h[1], h[2]), (hyper,), eps=1e-6, atol=1e-6)


ADAM_OPTIONS = [dict(amsgrad=True), dict(decoupled_weight_decay=True, weight_decay=0.1),
                dict(amsgrad=True, decoupled_weight_decay=True, weight_decay=0.05, maximize=True),
                dict(amsgrad=True, weight_decay=0.01)]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("options", ADAM_OPTIONS)
def test_angle_zero_with_amsgrad_or_decoupled_decay_is_torch_adam_bit_for_bit(foreach, options):
    kw = dict(lr=0.01, foreach=foreach, **options)
    a, b = _trajectories(lambda p: ComplexAdam(p, angle=0.0, **kw), lambda p: torch.optim.Adam(p, **kw))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    if options.get("decoupled_weight_decay"):
        kw.pop("decoupled_weight_decay")
        a, b = _trajectories(lambda p: ComplexAdam(p, angle=0.0, decoupled_weight_decay=True, **kw),
                             lambda p: torch.optim.AdamW(p, **kw))
        for x, y in zip(a, b):
            assert torch.equal(x, y)


@pytest.mark.parametrize("options", ADAM_OPTIONS)
def test_amsgrad_and_decoupled_decay_per_tensor_multi_tensor_fused_and_functional_agree(options):
    kw = dict(lr=0.01, angle=0.7, **options)
    a, b = _trajectories(lambda p: ComplexAdam(p, foreach=False, **kw),
                         lambda p: ComplexAdam(p, foreach=True, **kw), dtype=torch.float64)
    _, c = _trajectories(lambda p: ComplexAdam(p, foreach=False, **kw),
                         lambda p: ComplexAdam(p, fused=True, **kw), dtype=torch.float64)
    for x, y, z in zip(a, b, c):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x, z, rtol=1e-12, atol=1e-12)
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(4, dtype=torch.float64, generator=gen)]
    stateful = [torch.nn.Parameter(params[0].clone())]
    opt, state = ComplexAdam(stateful, **kw), complex_adam_init(params)
    functional_kw = {k: v for k, v in kw.items()}
    for _ in range(20):
        grads = [torch.randn(4, dtype=torch.float64, generator=gen)]
        params, state = complex_adam(params, grads, state, **functional_kw)
        stateful[0].grad = grads[0]
        opt.step()
    torch.testing.assert_close(params[0], stateful[0].detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("options", [dict(), *ADAM_OPTIONS])
def test_functional_core_at_angle_zero_is_torch_adam_and_adamw(dtype, tolerance, options):
    """100 steps of the pure core against torch.optim.Adam (AdamW for decoupled decay)."""
    options = dict(options)
    maximize = options.pop("maximize", False)
    decoupled = options.pop("decoupled_weight_decay", False)
    gen = torch.Generator().manual_seed(7)
    params = tuple(torch.randn(s, generator=gen).to(dtype) for s in ((4, 3), (5,)))
    reference = [torch.nn.Parameter(p.clone()) for p in params]
    torch_cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = torch_cls(reference, lr=0.01, maximize=maximize, **options)
    state = complex_adam_init(params, amsgrad=options.get("amsgrad", False))
    for _ in range(100):
        grads = tuple(torch.randn(p.shape, generator=gen).to(dtype) for p in params)
        params, state = complex_adam(params, grads, state, lr=0.01, angle=0.0, maximize=maximize,
                                     decoupled_weight_decay=decoupled, **options)
        for p, g in zip(reference, grads):
            p.grad = g
        opt.step()
    for p, q in zip(params, reference):
        torch.testing.assert_close(p, q.detach(), rtol=tolerance, atol=tolerance)


def test_amsgrad_state_is_made_on_the_first_step_when_init_did_not():
    params = (torch.ones(3, dtype=torch.float64),)
    grads = (torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64),)
    late = complex_adam_init(params)
    early = complex_adam_init(params, amsgrad=True)
    assert late.max_exp_avg_sq == () and len(early.max_exp_avg_sq) == 1
    for _ in range(3):
        p_late, late = complex_adam(params, grads, late, lr=0.1, amsgrad=True)
        p_early, early = complex_adam(params, grads, early, lr=0.1, amsgrad=True)
        torch.testing.assert_close(p_late, p_early, rtol=0, atol=0)


def test_hyperparameter_gradients_with_amsgrad_and_decoupled_decay_match_finite_differences():
    def unroll(h):
        params = (torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64),)
        state = complex_adam_init(params, amsgrad=True)
        for _ in range(10):
            params, state = complex_adam(params, (torch.tensor([1.0, 0.3, 0.05], dtype=torch.float64) * params[0],),
                                         state, lr=h[0], beta1=h[1], angle=h[2], eps=1e-3, weight_decay=0.1,
                                         amsgrad=True, decoupled_weight_decay=True)
        return (params[0] ** 2).sum()

    hyper = torch.tensor([0.1, 0.8, 0.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(unroll, (hyper,), eps=1e-6, atol=1e-6)
    batch = torch.tensor([[0.1, 0.8, 0.5], [0.05, 0.6, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(vmap(unroll)(batch), torch.stack([unroll(h) for h in batch]))


def test_torch_adam_positional_order_and_keyword_only_extras():
    param = [torch.nn.Parameter(torch.ones(2))]
    group = ComplexAdam(param, 1e-3, (0.9, 0.999), 1e-8).defaults
    assert group["eps"] == 1e-8 and group["angle"] == math.pi / 8  # (was: angle=1e-8, eps default)
    group = ComplexAdam(param, 0.01, (0.8, 0.99), 1e-6, 0.1).defaults
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (0.01, (0.8, 0.99), 1e-6, 0.1)
    with pytest.raises(TypeError):
        ComplexAdam(param, 1e-3, (0.9, 0.999), 1e-8, 0.0, True)  # amsgrad is keyword-only


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("options", [dict(), dict(amsgrad=True)])
def test_complex_parameters_are_their_real_and_imaginary_parts_as_in_torch(foreach, options):
    """At angle 0 on a complex parameter, torch.optim.Adam (which views it as real): the second moment
    holds the squares of the real and imaginary parts of g, not g·g (a complex number)."""
    kw = dict(lr=0.01, foreach=foreach, **options)
    a, b = _trajectories(lambda p: ComplexAdam(p, angle=0.0, **kw), lambda p: torch.optim.Adam(p, **kw),
                         steps=3, dtype=torch.complex64)
    for x, y in zip(a, b):
        assert x.dtype == torch.complex64
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
