"""ComplexMomentum and ComplexAdam as drop-in torch optimizers: arguments, groups, resume, schedulers,
GradScaler, closures, dtypes, sparse gradients, the compiled path."""

import io
import math

import pytest
import torch
from complex_helpers import trajectories

from metaopt.optim import ComplexAdam, ComplexMomentum, _cpu_kernels

OPTIMIZERS = {
    "complex_momentum": lambda params, **kw: ComplexMomentum(params, lr=0.05, **kw),
    "complex_adam": lambda params, **kw: ComplexAdam(params, lr=0.01, **kw),
}
TORCH_AT_ANGLE_ZERO = {
    "complex_momentum": lambda params, **kw: torch.optim.SGD(params, lr=0.05, momentum=0.9, **kw),
    "complex_adam": lambda params, **kw: torch.optim.Adam(params, lr=0.01, **kw),
}


def _param():
    return [torch.nn.Parameter(torch.ones(3))]


@pytest.mark.parametrize("cls, kwargs, message", [
    (ComplexMomentum, dict(lr=-0.1), "invalid lr: -0.1 (allowed: a finite number >= 0)"),
    (ComplexMomentum, dict(lr=math.nan), "invalid lr: nan"),
    (ComplexMomentum, dict(lr=0.1, momentum=1.0), "invalid momentum: 1.0 (allowed: a number in [0, 1))"),
    (ComplexMomentum, dict(lr=0.1, momentum=-0.5), "invalid momentum: -0.5"),
    (ComplexMomentum, dict(lr=0.1, angle=math.inf), "invalid angle: inf (allowed: a finite number"),
    (ComplexMomentum, dict(lr=0.1, angle="pi"), "invalid angle: 'pi'"),
    (ComplexMomentum, dict(lr=0.1, weight_decay=-1.0), "invalid weight_decay: -1.0"),
    (ComplexMomentum, dict(lr=0.1, maximize=1), "invalid maximize: 1 (allowed: True or False)"),
    (ComplexMomentum, dict(lr=0.1, foreach="yes"), "invalid foreach: 'yes'"),
    (ComplexMomentum, dict(lr=0.1, foreach=True, fused=True),
     "invalid fused: True (allowed: False when foreach=True)"),
    (ComplexAdam, dict(lr=-1.0), "invalid lr: -1.0"),
    (ComplexAdam, dict(betas=(1.0, 0.999)), "invalid betas[0]: 1.0 (allowed: a number in [0, 1))"),
    (ComplexAdam, dict(betas=(0.9, -0.1)), "invalid betas[1]: -0.1"),
    (ComplexAdam, dict(betas=(0.9,)), "invalid betas: (0.9,) (allowed: a pair (beta1, beta2))"),
    (ComplexAdam, dict(angle=math.nan), "invalid angle: nan"),
    (ComplexAdam, dict(eps=0.0), "invalid eps: 0.0 (allowed: a finite number > 0)"),
    (ComplexAdam, dict(weight_decay=-0.1), "invalid weight_decay: -0.1"),
    (ComplexAdam, dict(fused="no"), "invalid fused: 'no'"),
])
def test_bad_arguments_are_named(cls, kwargs, message):
    with pytest.raises(ValueError) as error:
        cls(_param(), **kwargs)
    assert message in str(error.value)


def test_bad_argument_in_a_param_group_is_named():
    opt = ComplexMomentum(_param(), lr=0.1)
    with pytest.raises(ValueError, match="invalid angle: nan"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "angle": math.nan})


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_param_group_with_angle_zero_follows_torch(name):
    """One group rotates, the other (angle 0) must follow torch's optimizer exactly."""
    def ours(params):
        return OPTIMIZERS[name]([{"params": params[:1], "angle": 1.0}, {"params": params[1:], "angle": 0.0}])

    a, b = trajectories(ours, TORCH_AT_ANGLE_ZERO[name], steps=30)
    assert not torch.equal(a[0], b[0])
    for x, y in zip(a[1:], b[1:]):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("foreach", [False, True])
def test_state_dict_resumes_bit_for_bit(name, foreach):
    gen = torch.Generator().manual_seed(5)
    grads = [[torch.randn(4, generator=gen), torch.randn(2, 2, generator=gen)] for _ in range(20)]

    def run(params, opt, steps):
        for g in steps:
            for p, gp in zip(params, g):
                p.grad = gp.clone()
            opt.step()

    straight = [torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(2, 2))]
    opt = OPTIMIZERS[name](straight, foreach=foreach)
    run(straight, opt, grads)

    first = [torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(2, 2))]
    opt = OPTIMIZERS[name](first, foreach=foreach)
    run(first, opt, grads[:10])
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in first], "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = [torch.nn.Parameter(p.clone()) for p in saved["params"]]
    opt = OPTIMIZERS[name](resumed, foreach=foreach)
    opt.load_state_dict(saved["optimizer"])
    run(resumed, opt, grads[10:])
    for x, y in zip(straight, resumed):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_lr_scheduler_drives_angle_zero_like_torch(name):
    ours, theirs = [torch.nn.Parameter(torch.ones(3))], [torch.nn.Parameter(torch.ones(3))]
    optimizers = [OPTIMIZERS[name](ours, angle=0.0), TORCH_AT_ANGLE_ZERO[name](theirs)]
    schedulers = [torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5) for opt in optimizers]
    gen = torch.Generator().manual_seed(6)
    for _ in range(20):
        g = torch.randn(3, generator=gen)
        for params, opt, scheduler in zip((ours, theirs), optimizers, schedulers):
            params[0].grad = g.clone()
            opt.step()
            scheduler.step()
    assert optimizers[0].param_groups[0]["lr"] == optimizers[1].param_groups[0]["lr"] < 0.01
    assert torch.equal(ours[0], theirs[0])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_grad_scaler_unscales_and_skips_infinite_steps(name):
    torch.manual_seed(0)
    model, reference = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    reference.load_state_dict(model.state_dict())
    opt, ref_opt = OPTIMIZERS[name](model.parameters()), OPTIMIZERS[name](reference.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randn(8, 3)
    for _ in range(5):
        opt.zero_grad()
        scaler.scale(model(x).pow(2).mean()).backward()
        scaler.step(opt)
        scaler.update()
        ref_opt.zero_grad()
        reference(x).pow(2).mean().backward()
        ref_opt.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    scaler.scale(model(x).sum() * math.inf).backward()
    scaler.step(opt)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_closure_zero_grad_and_loss(name):
    param = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = OPTIMIZERS[name]([param])

    def closure():
        opt.zero_grad()
        loss = (param**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 2.0
    assert param.abs().max() < 1.0
    opt.zero_grad()
    assert param.grad is None


@pytest.mark.parametrize("cls", [ComplexMomentum, ComplexAdam])
@pytest.mark.parametrize("dtype, bound", [(torch.float64, 1e-5), (torch.bfloat16, 0.15)])
def test_dtypes_follow_float32(cls, dtype, bound):
    """In float64 and bfloat16 the trajectory stays closer to the float32 one than real momentum
    (angle 0) is, by the factor ``bound``: the dtype's rounding must not wash out the complex part."""
    def make(angle):
        return lambda params: cls(params, lr=0.05, angle=angle)

    reference, _ = trajectories(make(0.5), make(0.5), steps=30)
    real, _ = trajectories(make(0.0), make(0.0), steps=30)
    ours, _ = trajectories(make(0.5), make(0.5), steps=30, dtype=dtype)
    assert all(y.dtype == dtype for y in ours)
    error = sum(float((y.detach().float() - x.detach()).norm()) ** 2 for x, y in zip(reference, ours)) ** 0.5
    gap = sum(float((r.detach() - x.detach()).norm()) ** 2 for x, r in zip(reference, real)) ** 0.5
    assert error < bound * gap, (error, gap)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_sparse_gradients_are_refused(name):
    embedding = torch.nn.Embedding(5, 2, sparse=True)
    opt = OPTIMIZERS[name](embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("maximize", [False, True])
def test_cpu_kernel_matches_multi_tensor(name, dtype, maximize):
    """The C kernel of fused=True, with a thread split that falls inside tensors (140k elements)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        kw = dict(angle=0.5, weight_decay=0.01, maximize=maximize)
        built = []

        def fused(p):
            built.append(OPTIMIZERS[name](p, fused=True, **kw))
            return built[-1]

        a, b = trajectories(fused, lambda p: OPTIMIZERS[name](p, foreach=True, **kw), steps=10, dtype=dtype,
                            shapes=((300, 300), (7,), (50_001,)))
    finally:
        torch.set_num_threads(threads)
    assert built[0]._fused_update.path == "cpu kernel"
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_cpu_kernel_tells_autograd_of_its_writes(name):
    param = torch.nn.Parameter(torch.ones(4))
    loss = (param**2).sum()  # saves param for backward
    param.grad = torch.ones(4)
    OPTIMIZERS[name]([param], fused=True).step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("compiler, message", [("no-such-compiler-here", "no C compiler"),
                                               ("false", "did not compile")])
def test_without_a_c_compiler_fused_takes_torch_compile(compiler, message, monkeypatch):
    calls = []

    def recording_compile(update, **options):
        def compiled(*args):
            calls.append(update.__name__)
            return update(*args)
        return compiled

    monkeypatch.setenv("CC", compiler)
    monkeypatch.setattr(_cpu_kernels, "_built", False)
    monkeypatch.setattr(_cpu_kernels, "_library", None)
    monkeypatch.setattr(torch, "compile", recording_compile)
    with pytest.warns(UserWarning, match=message):
        opt = ComplexMomentum(_param(), lr=0.1, fused=True)
        opt.param_groups[0]["params"][0].grad = torch.ones(3)
        opt.step()
    assert calls == ["_fused_complex_momentum"] and opt._fused_update.path == "torch.compile"


def test_compiled_fused_step_matches_multi_tensor(monkeypatch):
    """One compile per optimizer (slow): the torch.compile-d kernel (the path off CPU, or without a C
    compiler) against the foreach path."""
    monkeypatch.setattr(_cpu_kernels, "library", lambda: None)
    for name in OPTIMIZERS:
        kw = dict(angle=0.5, weight_decay=0.01)
        built = []

        def fused(p, kw=kw, name=name, built=built):
            built.append(OPTIMIZERS[name](p, fused=True, **kw))
            return built[-1]

        a, b = trajectories(fused, lambda p, kw=kw, name=name: OPTIMIZERS[name](p, foreach=True, **kw),
                            steps=10)
        assert built[0]._fused_update.path == "torch.compile"  # compiled, not the eager fallback
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fused_falls_back_to_eager_when_compiling_fails(name, monkeypatch):
    def failing_compile(update, **options):
        def compiled(*args):
            raise RuntimeError("no C++ compiler")
        return compiled

    monkeypatch.setattr(_cpu_kernels, "library", lambda: None)
    monkeypatch.setattr(torch, "compile", failing_compile)
    with pytest.warns(UserWarning, match="failed .RuntimeError: no C.. compiler.; running the eager"):
        a, b = trajectories(lambda p: OPTIMIZERS[name](p, fused=True, angle=0.5),
                            lambda p: OPTIMIZERS[name](p, foreach=True, angle=0.5), steps=10)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_fused_adam_takes_the_eager_path_while_step_counts_differ(monkeypatch):
    calls = []
    run = _cpu_kernels.run

    def recording_run(kernel, tensor_lists, scalars):
        calls.append(len(tensor_lists[0]))
        return run(kernel, tensor_lists, scalars)

    monkeypatch.setattr(_cpu_kernels, "run", recording_run)
    first, late = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = ComplexAdam([first], fused=True)
    first.grad = torch.ones(3)
    opt.step()
    opt.param_groups[0]["params"].append(late)
    late.grad = torch.ones(2)
    opt.step()
    assert calls == [1]
    assert opt.state[first]["step"].item() == 2 and opt.state[late]["step"].item() == 1
    torch.testing.assert_close(late.detach(), torch.full((2,), 1 - 1e-3))


@pytest.mark.parametrize("cls, option, key", [(ComplexAdam, ("amsgrad", True), "max_exp_avg_sq"),
                                              (ComplexMomentum, ("dampening", 0.5), "step")])
def test_state_an_option_switched_on_later_creates_is_kept_for_complex_params(cls, option, key):
    """The update sees real views of a complex parameter's state; what it adds must reach the state."""
    param = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    opt = cls([param], lr=0.1)
    param.grad = torch.ones(3, dtype=torch.complex64)
    opt.step()
    opt.param_groups[0][option[0]] = option[1]
    for _ in range(2):
        opt.step()
    value = opt.state[param][key]
    assert value.dtype == (torch.complex64 if key == "max_exp_avg_sq" else torch.float32)
    if key == "step":
        assert value.item() == 3  # (counted from 1: the buffers existed, so not a first step)
