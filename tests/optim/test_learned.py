"""The learned optimizer: its functional core, the drop-in class, its weights and its errors."""

import copy
import io
import math
import pickle

import pytest
import torch
from torch import nn
from torch.func import vmap

from metaopt.optim import LearnedOptimizer
from metaopt.optim.functional.learned import (
    FORMS,
    LEGACY_TIMESCALES,
    MAX_DIRECTION,
    NUM_FEATURES,
    STEP_SCALE,
    TIMESCALES,
    initial_weights,
    learned,
    learned_init,
    num_weights,
)


def _model(dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).to(dtype)


def _weights(hidden=(16,), scale=0.3, dtype=torch.float64, seed=1, form="direction"):
    """Weights with every block nonzero (the hidden-to-output ones too), so every feature matters."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(num_weights(hidden), generator=generator, dtype=dtype)
    return initial_weights(hidden, generator, dtype, form=form) + scale * noise / NUM_FEATURES ** 0.5


def _loss(model, x, y):
    return (model(x) - y).pow(2).mean()


TIMESCALES_ELSEWHERE = (2.0, 7.0, 50.0, 400.0)  # not the default: the class must hand its own to both paths


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("form", FORMS)
def test_the_class_takes_the_functional_cores_steps(form, fused):
    model, x, y = _model(), torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    weights = _weights(form=form)
    opt = LearnedOptimizer(model.parameters(), weights=weights, hidden=[16], lr=0.7, form=form, fused=fused,
                           timescales=TIMESCALES_ELSEWHERE)
    params = tuple(p.detach().clone() for p in model.parameters())
    state = learned_init(params)
    reference = copy.deepcopy(model)
    for _ in range(20):
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
        for p, q in zip(reference.parameters(), params):
            p.data.copy_(q)
        grads = torch.autograd.grad(_loss(reference, x, y), list(reference.parameters()))
        params, state = learned(params, grads, state, weights=weights, hidden=[16], lr=0.7, form=form,
                                timescales=TIMESCALES_ELSEWHERE)
    for p, q in zip(model.parameters(), params):
        torch.testing.assert_close(p.detach(), q, rtol=1e-12, atol=1e-12)
    assert int(opt.state[next(model.parameters())]["step"]) == 20
    default, _ = learned(tuple(reference.parameters()), grads, state, weights=weights, hidden=[16], lr=0.7, form=form)
    moved, _ = learned(tuple(reference.parameters()), grads, state, weights=weights, hidden=[16], lr=0.7, form=form,
                       timescales=TIMESCALES_ELSEWHERE)
    assert not torch.allclose(default[0], moved[0]), "the timescales change the step"


@pytest.mark.parametrize("form", FORMS)
def test_the_fused_float32_kernel_follows_the_functional_core_over_blocks_threads_and_tails(form):
    """Tensors of 1 to 70 001 elements (partial blocks, spans split across threads), float32: the kernel's own
    exp/tanh and its order of the MLP's sums stay within a few float32 ulps of the core for 30 steps."""
    generator = torch.Generator().manual_seed(3)
    weights = _weights(hidden=(32,), dtype=torch.float32, form=form)
    params = [torch.randn(size, generator=generator) for size in (1, 17, 3000, 70_001)]
    fused = [nn.Parameter(p.clone().view(-1, 1) if p.numel() == 3000 else p.clone()) for p in params]
    opt = LearnedOptimizer(fused, weights=weights, hidden=[32], lr=1.3, form=form, fused=True)
    reference, state = tuple(p.clone() for p in fused), learned_init(fused)
    for _ in range(30):
        grads = [torch.randn(p.shape, generator=generator) * 10.0 ** torch.randint(-4, 2, ()).item() for p in fused]
        for p, g in zip(fused, grads):
            p.grad = g
        opt.step()
        reference, state = learned(reference, grads, state, weights=weights, hidden=[32], lr=1.3, form=form)
    for p, q, start in zip(fused, reference, params):
        assert not torch.equal(q.view(-1), start)
        torch.testing.assert_close(p.detach(), q, rtol=2e-5, atol=2e-6)
    momenta = [opt.state[p]["momenta"] for p in fused]
    torch.testing.assert_close(momenta, list(state.momenta), rtol=1e-5, atol=1e-6)  # (FMA contraction)


def test_fused_is_refused_where_it_cannot_run():
    param = nn.Parameter(torch.randn(4))
    with pytest.raises(ValueError, match="fused"):
        LearnedOptimizer([param], weights=_weights(hidden=(8, 8)), hidden=[8, 8], fused=True)
    with pytest.raises(ValueError, match="at most 256"):
        LearnedOptimizer([param], weights=_weights(hidden=(300,)), hidden=[300], fused=True)
    opt = LearnedOptimizer([nn.Parameter(torch.randn(4, dtype=torch.float16))], weights=_weights(), hidden=[16],
                           fused=True)
    opt.param_groups[0]["params"][0].grad = torch.ones(4, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="fused=True"):
        opt.step()


def test_initial_weights_take_a_sign_step_of_a_tenth_of_the_scale_first():
    """At step 1: m(β=0.9) = 0.1·g and √v̂ = |g|, so the skip path reads 0.1·sign(g), the soft bound
    B·tanh(0.1/B) of it, times exp(0) from the zero magnitude output."""
    p, g = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    (new,), _ = learned((p,), (g,), learned_init((p,)), weights=initial_weights((32,), dtype=torch.float64))
    direction = MAX_DIRECTION * math.tanh(0.1 / MAX_DIRECTION)
    torch.testing.assert_close(new, p - STEP_SCALE * direction * torch.sign(g), rtol=0, atol=1e-9)  # ε in √v̂ + ε


def test_initial_weights_at_another_lr_are_adam_at_that_lr():
    """``lr``: the log-magnitude's bias makes the first step that of the default start scaled by
    ``lr / STEP_SCALE``; an lr the bounded magnitude cannot reach is refused."""
    p, g = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    steps = {}
    for lr in (STEP_SCALE, 1e-2, 1e-3):
        (new,), _ = learned((p,), (g,), learned_init((p,)), weights=initial_weights((32,), dtype=torch.float64, lr=lr))
        steps[lr] = p - new
    torch.testing.assert_close(steps[1e-2], steps[STEP_SCALE] * (1e-2 / STEP_SCALE), rtol=1e-9, atol=0)
    torch.testing.assert_close(steps[1e-3], steps[STEP_SCALE] * (1e-3 / STEP_SCALE), rtol=1e-9, atol=0)
    for bad in (1.0, 1e-7, 0.0, -1e-3):
        with pytest.raises(ValueError, match=r"invalid lr: .* \(allowed: a step size within"):
            initial_weights((32,), lr=bad)


def test_the_adam_form_starts_as_adam_without_the_momentums_bias_correction():
    """``form="adam"``: the step is Adam's direction m(β 0.9)/(√v̂+ε) times the MLP's bounded factor, which
    the initial weights make 1, so the start is Adam at ``lr`` (β₂ 0.999, momentum not bias-corrected)."""
    generator = torch.Generator().manual_seed(0)
    p = torch.randn(40, dtype=torch.float64, generator=generator)
    weights = initial_weights((16,), dtype=torch.float64, lr=1e-2, form="adam")
    params, state = (p,), learned_init((p,))
    reference, m, v = p.clone(), torch.zeros_like(p), torch.zeros_like(p)
    for t in range(1, 8):
        g = torch.randn(40, dtype=torch.float64, generator=generator) * 10 ** (-t / 2)  # shrinking gradients
        params, state = learned(params, (g,), state, weights=weights, hidden=[16], form="adam")
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        reference = reference - 1e-2 * m / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8)
    torch.testing.assert_close(params[0], reference, rtol=1e-9, atol=1e-12)
    # The same weights read as the "direction" form are not Adam: the form matters.
    (direction,), _ = learned((p,), (g,), learned_init((p,)), weights=weights, hidden=[16])
    (adam,), _ = learned((p,), (g,), learned_init((p,)), weights=weights, hidden=[16], form="adam")
    assert not torch.allclose(direction, adam)


@pytest.mark.parametrize("fused", [None, False])
def test_annealed_initial_weights_take_adams_steps_on_their_schedule(fused):
    """``initial_weights(lr, final_lr, decay, form="adam")``: Adam at ``lr`` until ``decay[0]``, then a cosine to
    ``final_lr`` at ``decay[1]``, within the 25 % the fit promises; checked on the drop-in class's steps (a
    constant gradient: Adam's direction is then 1 − 0.9^t, ~1 after 100 steps)."""
    lr, final_lr, (start, end) = 2e-2, 3e-3, (200, 400)
    weights = initial_weights((16,), lr=lr, final_lr=final_lr, decay=(start, end), form="adam")
    p = torch.nn.Parameter(torch.zeros(8))
    opt = LearnedOptimizer([p], weights=weights, hidden=[16], form="adam", fused=fused)
    steps = []
    for _ in range(2 * end):
        before = p.detach().clone()
        p.grad = torch.ones(8)
        opt.step()
        steps.append(float((before - p.detach()).mean()))
    for t in (100, 150, 200, 250, 300, 350, 400, 600, 800):
        progress = min(max((t - start) / (end - start), 0.0), 1.0)
        target = final_lr * (lr / final_lr) ** (0.5 * (1 + math.cos(math.pi * progress)))  # cosine in log lr
        assert abs(math.log(steps[t - 1] / target)) < math.log(1.25), (t, steps[t - 1], target)
    assert steps[99] > 5 * steps[-1], "it anneals"
    with pytest.raises(ValueError, match=r"invalid final_lr: 0.003 \(allowed: None for the 'direction' form"):
        initial_weights((16,), lr=3e-3, final_lr=3e-3)
    with pytest.raises(ValueError, match=r"invalid final_lr: 0.001 \(allowed: a step size within 0.0029 to 0.027"):
        initial_weights((16,), lr=1e-2, final_lr=1e-3, form="adam")
    with pytest.raises(ValueError, match=r"invalid decay: \(5, 5\) \(allowed: \(start, end\), integer steps"):
        initial_weights((16,), lr=1e-2, final_lr=3e-3, decay=(5, 5), form="adam")
    with pytest.raises(ValueError, match=r"invalid final_lr/decay: .* \(allowed: a schedule the time features"):
        initial_weights((16,), lr=2.5e-2, final_lr=3e-3, decay=(500, 520), form="adam")  # a cliff


def test_the_timescales_travel_with_saved_weights(tmp_path):
    model = _model(torch.float32)
    weights = _weights(form="adam", dtype=torch.float32)
    opt = LearnedOptimizer(model.parameters(), weights=weights, hidden=[16], form="adam",
                           timescales=TIMESCALES_ELSEWHERE)
    path = opt.save_pretrained(tmp_path / "mine.pt")
    assert torch.load(path, weights_only=True)["timescales"] == list(TIMESCALES_ELSEWHERE)
    assert LearnedOptimizer(model.parameters(), weights=path).param_groups[0]["timescales"] == TIMESCALES_ELSEWHERE
    with pytest.raises(ValueError, match=r"invalid timescales: \(3.0, 30.0, 300.0, 1000.0\) \(allowed: None or "
                                         r"\[2.0, 7.0, 50.0, 400.0\] \(the time features the weights were"):
        LearnedOptimizer(model.parameters(), weights=path, timescales=TIMESCALES)
    assert LearnedOptimizer(model.parameters(), weights=weights, hidden=[16]).param_groups[0]["timescales"] == \
        TIMESCALES
    torch.save({"weights": weights, "hidden": [16], "form": "adam"}, tmp_path / "old.pt")  # before timescales
    assert LearnedOptimizer(model.parameters(), weights=tmp_path / "old.pt").param_groups[0]["timescales"] == \
        LEGACY_TIMESCALES
    # A checkpoint written before form/timescales existed ran the direction form on the legacy time features,
    # whatever the optimizer it is loaded into was built with.
    old = LearnedOptimizer(model.parameters(), weights=weights, hidden=[16], form="adam").state_dict()
    for group in old["param_groups"]:
        del group["form"], group["timescales"]
    opt.load_state_dict(old)
    assert opt.param_groups[0]["form"] == "direction" and opt.param_groups[0]["timescales"] == LEGACY_TIMESCALES
    for bad in ([1.0, 2.0], [1.0, 2.0, 3.0, -4.0], [1.0, 2.0, 3.0, float("nan")]):
        with pytest.raises(ValueError, match=r"invalid timescales: .* \(allowed: 4 positive numbers of steps"):
            LearnedOptimizer(model.parameters(), weights=weights, hidden=[16], timescales=bad)


def test_the_form_travels_with_saved_weights(tmp_path):
    model = _model(torch.float32)
    opt = LearnedOptimizer(model.parameters(), weights=_weights(form="adam", dtype=torch.float32), hidden=[16],
                           form="adam")
    path = opt.save_pretrained(tmp_path / "mine.pt")
    assert torch.load(path, weights_only=True)["form"] == "adam"
    again = LearnedOptimizer(model.parameters(), weights=path)
    assert again.param_groups[0]["form"] == "adam"
    with pytest.raises(ValueError, match=r"invalid form: 'direction' \(allowed: None or 'adam'"):
        LearnedOptimizer(model.parameters(), weights=path, form="direction")
    with pytest.raises(ValueError, match=r"invalid form: 'sign' \(allowed: None or one of \('direction', 'adam'\)"):
        LearnedOptimizer(model.parameters(), weights=path, form="sign")
    with pytest.raises(ValueError, match=r"invalid form: 'sign' \(allowed: one of"):
        learned((torch.zeros(3),), (torch.zeros(3),), learned_init((torch.zeros(3),)), weights=_weights((16,)),
                hidden=[16], form="sign")
    torch.save({"weights": _weights(dtype=torch.float32), "hidden": [16]}, tmp_path / "old.pt")
    assert LearnedOptimizer(model.parameters(), weights=tmp_path / "old.pt").param_groups[0]["form"] == "direction"


@pytest.mark.parametrize("form", FORMS)
def test_gradients_through_an_unroll_match_finite_differences(form):
    torch.manual_seed(3)
    x, y = torch.randn(12, 3, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    w0 = torch.randn(3, dtype=torch.float64)

    def meta_loss(weights):
        params, state = (w0,), learned_init((w0,))
        total = 0.0
        for _ in range(4):
            loss = (x @ params[0] - y).pow(2).mean()
            (grad,) = torch.autograd.grad(loss, params, create_graph=True)
            params, state = learned(params, (grad,), state, weights=weights, hidden=[8], lr=30.0, form=form)
            total = total + loss
        return total + (x @ params[0] - y).pow(2).mean()

    weights = _weights((8,), form=form).requires_grad_()
    w0.requires_grad_()
    (analytic,) = torch.autograd.grad(meta_loss(weights), weights)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        direction = torch.randn(weights.shape, generator=generator, dtype=torch.float64)
        eps = 1e-5
        with torch.enable_grad():
            numeric = (meta_loss(weights.detach() + eps * direction) - meta_loss(weights.detach() - eps * direction))
        assert float(analytic @ direction) == pytest.approx(float(numeric.detach()) / (2 * eps), rel=1e-5, abs=1e-10)
    assert analytic.abs().sum() > 0


def test_vmap_over_particles_equals_one_call_each():
    params = (torch.randn(4, 3), torch.randn(3))
    grads = (torch.randn(4, 3), torch.randn(3))
    weights = torch.stack([_weights(dtype=torch.float32, seed=s) for s in range(3)])
    state = learned_init(params)

    def one(w):
        return learned(params, grads, state, weights=w, hidden=[16])[0]

    batched = vmap(one)(weights)
    for i in range(3):
        for b, single in zip(batched, one(weights[i])):
            torch.testing.assert_close(b[i], single, rtol=1e-6, atol=1e-7)


def test_maximize_ascends_and_schedulers_scale_the_step():
    model, x, y = _model(torch.float32), torch.randn(16, 5), torch.randn(16, 2)
    opt = LearnedOptimizer(model.parameters(), weights=_weights(dtype=torch.float32), hidden=[16], lr=2.0,
                           maximize=True)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    before = float(_loss(model, x, y).detach())
    for _ in range(5):
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
        scheduler.step()
    assert float(_loss(model, x, y).detach()) > before
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 / 32)


def test_state_dict_deepcopy_and_pickle_round_trips(tmp_path):
    model, x, y = _model(torch.float32), torch.randn(16, 5), torch.randn(16, 2)
    opt = LearnedOptimizer(model.parameters(), weights=_weights(dtype=torch.float32), hidden=[16])
    for _ in range(3):
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    twin_model = copy.deepcopy(model)
    twin = LearnedOptimizer(twin_model.parameters(), weights=initial_weights((16,)), hidden=[16])
    twin.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    copies = [(twin_model, twin), *(copy.deepcopy((model, opt)) for _ in range(1)),
              pickle.loads(pickle.dumps((model, opt)))]
    for _ in range(3):
        for m, o in [(model, opt), *copies]:
            o.zero_grad()
            _loss(m, x, y).backward()
            o.step()
    for m, _ in copies:
        for p, q in zip(m.parameters(), model.parameters()):
            assert torch.equal(p, q)


def test_pretrained_weights_ship_and_load_with_weights_only(tmp_path):
    names = LearnedOptimizer.pretrained_names()
    assert names, "the package ships at least one meta-trained learned optimizer"
    model = _model(torch.float32)
    opt = LearnedOptimizer.from_pretrained(names[0], model.parameters())
    assert opt.meta.get("estimator") and opt.meta.get("tasks")
    path = opt.save_pretrained(tmp_path / "mine.pt")
    saved = torch.load(path, weights_only=True)
    assert torch.equal(saved["weights"], opt.param_groups[0]["weights"])
    again = LearnedOptimizer(_model(torch.float32).parameters(), weights=path)
    assert torch.equal(again.param_groups[0]["weights"], saved["weights"])
    forms = {name: LearnedOptimizer.from_pretrained(name, model.parameters()).param_groups[0]["form"] for name in names}
    assert forms == {"digits_pes": "adam", "digits_pes_h200": "direction"}, forms


def test_bad_input_is_refused_with_a_clear_error(tmp_path):
    params = _model(torch.float32).parameters()
    with pytest.raises(ValueError, match=r"invalid weights: 'nope' \(allowed: a pretrained name"):
        LearnedOptimizer(params, weights="nope")
    with pytest.raises(ValueError, match=r"invalid weights: 'a tensor of shape \(10,\)' \(allowed: a 1-D tensor "
                                         r"of 302"):
        LearnedOptimizer(params, weights=torch.zeros(10), hidden=[16])
    torch.save({"weights": torch.zeros(num_weights([16])), "hidden": [16]}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"invalid hidden: \[8\] \(allowed: None or \[16\]"):
        LearnedOptimizer(params, weights=tmp_path / "w.pt", hidden=[8])
    with pytest.raises(ValueError, match=r"invalid lr: -1"):
        LearnedOptimizer(params, weights=tmp_path / "w.pt", lr=-1)
    model = _model(torch.float32)
    opt = LearnedOptimizer(model.parameters(), weights=tmp_path / "w.pt")
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    with pytest.raises(ValueError, match=r"invalid gradients: NaN/Inf"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before)), "nothing moved"


def test_without_the_c_kernel_the_default_takes_the_torch_path_and_fused_true_is_refused(monkeypatch):
    from metaopt.optim import _cpu_kernels

    monkeypatch.setattr(_cpu_kernels, "library", lambda: None)
    model, x, y = _model(), torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    weights = _weights()
    opt = LearnedOptimizer(model.parameters(), weights=weights, hidden=[16])
    params, state = tuple(p.detach().clone() for p in model.parameters()), learned_init(list(model.parameters()))
    _loss(model, x, y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    params, _ = learned(params, grads, state, weights=weights, hidden=[16])
    for p, q in zip(model.parameters(), params):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=0)   # the torch path: the core's own arithmetic
    strict = LearnedOptimizer(model.parameters(), weights=weights, hidden=[16], fused=True)
    with pytest.raises(RuntimeError, match="fused=True: the fused learned-optimizer step runs on"):
        strict.step()
