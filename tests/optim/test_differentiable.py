"""DifferentiableOptimizer: hypergradients and MAML meta-gradients against central finite differences,
k steps against torch.optim's own classes, first-order MAML and truncation against their closed forms on
a quadratic, and the user's module left untouched."""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaopt.optim import DifferentiableOptimizer

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(sizes=(5, 6, 3), seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.Tanh(), nn.Linear(sizes[1], sizes[2])).to(dtype)


def _batches(count, seed=1, features=5, classes=3, size=12, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, features, generator=generator, dtype=dtype),
             torch.randint(0, classes, (size,), generator=generator)) for _ in range(count)]


def _train_then_validate(model, optimizer, hyperparameters, steps=4, first_order=False):
    batches = _batches(steps + 1)
    inner = DifferentiableOptimizer(model, optimizer, first_order=first_order, **hyperparameters)
    for x, y in batches[:-1]:
        inner.step(F.cross_entropy(inner(x), y))
    x, y = batches[-1]
    return F.cross_entropy(inner(x), y)


# θ (a flat float64 vector) → the optimizer's keyword arguments: per-layer lr (4 tensors: two weights,
# two biases) with momentum, Adam's beta1 with lr, RMSprop's alpha, AdamW's weight decay.
HYPER_CASES = {
    "sgd_per_layer_lr_momentum": (torch.optim.SGD, [0.3, 0.2, 0.1, 0.4, 0.8],
                                  lambda t: {"lr": [t[0], t[1], t[2], t[3]], "momentum": t[4]}),
    "adam_lr_beta1": (torch.optim.Adam, [0.05, 0.8], lambda t: {"lr": t[0], "betas": (t[1], 0.99)}),
    "rmsprop_alpha": (torch.optim.RMSprop, [0.02, 0.9], lambda t: {"lr": t[0], "alpha": t[1], "momentum": 0.5}),
    "adamw_weight_decay": (torch.optim.AdamW, [0.1], lambda t: {"lr": 0.03, "weight_decay": t[0]}),
}


@pytest.mark.parametrize("case", HYPER_CASES)
def test_hypergradient_matches_central_finite_differences(case):
    optimizer, start, hyperparameters = HYPER_CASES[case]
    theta = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    model = _mlp()
    (grad,) = torch.autograd.grad(_train_then_validate(model, optimizer, hyperparameters(theta)), theta)
    step = 1e-6
    numeric = torch.zeros_like(theta)
    for i in range(len(start)):
        shift = torch.zeros_like(theta)
        shift[i] = step
        up = _train_then_validate(model, optimizer, hyperparameters(theta.detach() + shift), first_order=True)
        down = _train_then_validate(model, optimizer, hyperparameters(theta.detach() - shift), first_order=True)
        numeric[i] = (up - down).detach() / (2 * step)
    assert bool((grad.abs() > 1e-4).all())  # a real signal, not rounding
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-9)


REFERENCE_CASES = [
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.5, "dampening": 0.3}),
    (torch.optim.Adam, {"lr": 1e-2}),
    (torch.optim.Adam, {"lr": 1e-2, "amsgrad": True, "weight_decay": 1e-2}),
    (torch.optim.AdamW, {"lr": 1e-2, "betas": (0.8, 0.99)}),
    (torch.optim.RMSprop, {"lr": 1e-2}),
    (torch.optim.RMSprop, {"lr": 1e-2, "momentum": 0.5, "centered": True}),
    (torch.optim.Adagrad, {"lr": 0.1}),
]


@pytest.mark.parametrize(("optimizer", "kwargs"), REFERENCE_CASES,
                         ids=[f"{c.__name__}-{'-'.join(k)}" for c, k in REFERENCE_CASES])
@pytest.mark.parametrize("given_as", ["class", "partial", "instance"])
def test_k_steps_match_torch_optim(optimizer, kwargs, given_as):
    model = _mlp()
    reference = copy.deepcopy(model)
    torch_optimizer = optimizer(reference.parameters(), **kwargs)
    if given_as == "class":
        inner = DifferentiableOptimizer(model, optimizer, **kwargs)
    elif given_as == "partial":
        inner = DifferentiableOptimizer(model, functools.partial(optimizer, **kwargs))
    else:
        inner = DifferentiableOptimizer(model, optimizer(copy.deepcopy(model).parameters(), **kwargs))
    for x, y in _batches(10):
        inner.step(F.cross_entropy(inner(x), y))
        torch_optimizer.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        torch_optimizer.step()
    assert inner.steps == 10
    for (name, p), (ref_name, ref) in zip(inner.named_parameters(), reference.named_parameters(), strict=True):
        assert name == ref_name
        # The cores fuse b ← μb + g into one addcmul where torch rounds twice: a few ulps over 10 steps.
        torch.testing.assert_close(p.detach(), ref.detach(), rtol=1e-13, atol=1e-15)


def test_plain_sgd_is_bitwise_torch_sgd():
    model = _mlp(dtype=torch.float32)
    reference = copy.deepcopy(model)
    torch_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    inner = DifferentiableOptimizer(model, torch.optim.SGD, lr=0.1)
    for x, y in _batches(10, dtype=torch.float32):
        inner.step(F.cross_entropy(inner(x), y))
        torch_optimizer.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        torch_optimizer.step()
    assert all(torch.equal(p, r) for p, r in zip(inner.params, reference.parameters(), strict=True))


# MAML (Finn et al., 2017) on few-shot tasks cut from scikit-learn's 8x8 digits: 5-way, 5-shot, labels
# permuted per task, meta-trained on half of the images and evaluated on tasks drawn from the other half.

def _digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    inputs = torch.tensor(bunch.data / 16.0, dtype=torch.float32)
    targets = torch.tensor(bunch.target)
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))
    half = len(inputs) // 2
    return inputs, targets, {"train": order[:half], "test": order[half:]}


def _task(digits, pool, generator, ways=5, shots=5, queries=10):
    inputs, targets, pools = digits
    index = pools[pool]
    classes = torch.randperm(10, generator=generator)[:ways]
    support, query = [], []
    for cls in classes:
        members = index[targets[index] == cls]
        members = members[torch.randperm(len(members), generator=generator)[:shots + queries]]
        support.append(members[:shots])
        query.append(members[shots:])
    support_labels = torch.arange(ways).repeat_interleave(shots)
    query_labels = torch.arange(ways).repeat_interleave(queries)
    return (inputs[torch.cat(support)], support_labels, inputs[torch.cat(query)], query_labels)


def _query_loss_after_adaptation(model, task, inner_lr=0.5, steps=2, first_order=False):
    support_x, support_y, query_x, query_y = task
    inner = DifferentiableOptimizer(model, torch.optim.SGD, lr=inner_lr, first_order=first_order)
    for _ in range(steps):
        inner.step(F.cross_entropy(inner(support_x), support_y))
    return F.cross_entropy(inner(query_x), query_y)


def test_maml_on_digits_improves_the_adapted_query_loss():
    digits = _digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 5))
    evaluation = [_task(digits, "test", torch.Generator().manual_seed(100 + i)) for i in range(10)]

    def evaluate():
        return sum(float(_query_loss_after_adaptation(model, task).detach()) for task in evaluation) / len(evaluation)

    before = evaluate()
    meta_optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(30):
        meta_optimizer.zero_grad()
        meta_loss = sum(_query_loss_after_adaptation(model, _task(digits, "train", generator)) for _ in range(4)) / 4
        meta_loss.backward()
        meta_optimizer.step()
    after = evaluate()
    assert after < before - 0.2, (before, after)


def test_maml_meta_gradient_matches_finite_differences():
    digits = _digits()
    task = tuple(t.double() if t.is_floating_point() else t
                 for t in _task(digits, "train", torch.Generator().manual_seed(3), ways=3, shots=2, queries=3))
    model = _mlp(sizes=(64, 4, 3))
    params = list(model.parameters())
    grads = torch.autograd.grad(_query_loss_after_adaptation(model, task, inner_lr=0.3), params)
    generator = torch.Generator().manual_seed(4)
    step = 1e-6
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
        analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction))
        losses = []
        for sign in (1, -1):
            shifted = copy.deepcopy(model)
            with torch.no_grad():
                for p, d in zip(shifted.parameters(), direction):
                    p.add_(sign * step * d)
            losses.append(float(_query_loss_after_adaptation(shifted, task, inner_lr=0.3, first_order=True).detach()))
        numeric = (losses[0] - losses[1]) / (2 * step)
        assert abs(analytic) > 1e-3
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_the_users_module_is_never_mutated():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
    model[3].bias.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    x, y = _batches(1)[0]
    output_before = model(x).detach()
    model.load_state_dict(before)  # model(x) in train mode moved the running statistics; put them back
    inner = DifferentiableOptimizer(model, torch.optim.Adam, lr=0.1)
    assert inner.names == ("0.weight", "0.bias", "1.weight", "1.bias", "3.weight")  # the frozen bias is a constant
    for _ in range(3):
        inner.step(F.cross_entropy(inner(x), y))
    F.cross_entropy(inner(x), y).backward()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert not torch.equal(inner.constants["1.running_mean"], before["1.running_mean"])
    assert not torch.equal(inner.params[0], model[0].weight)
    assert model[0].weight.grad is not None and model[3].bias.grad is None  # the meta-gradient reaches θ₀
    torch.testing.assert_close(model(x).detach(), output_before)


class _Point(nn.Module):
    def __init__(self, start):
        super().__init__()
        self.position = nn.Parameter(start.clone())

    def forward(self):
        return self.position


def _quadratic():
    generator = torch.Generator().manual_seed(0)
    root = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    curvature = root @ root.T + torch.eye(3, dtype=torch.float64)
    vectors = [torch.randn(3, generator=generator, dtype=torch.float64) for _ in range(3)]
    return curvature, *vectors


def test_first_order_mode_drops_the_second_order_terms():
    # Inner loss ½pᵀAp − bᵀp, outer loss ½|p − c|², k SGD steps p ← p − lr(Ap − b) = (I − lr·A)p + lr·b.
    curvature, linear, target, start = _quadratic()
    lr, steps = 0.1, 3
    identity = torch.eye(3, dtype=torch.float64)
    positions = [start]
    for _ in range(steps):
        positions.append(positions[-1] - lr * (curvature @ positions[-1] - linear))
    residual = positions[-1] - target
    contraction = torch.linalg.matrix_power(identity - lr * curvature, steps)
    optimum = torch.linalg.solve(curvature, linear)
    exact = {"start": contraction.T @ residual,
             "lr": -steps * residual @ (curvature @ torch.linalg.matrix_power(identity - lr * curvature, steps - 1)
                                        @ (start - optimum))}
    # First order: every gradient Ap_j − b is a constant, so dp_k/dp₀ = I and dp_k/dlr = −Σ_j g_j.
    first_order = {"start": residual,
                   "lr": -residual @ sum(curvature @ p - linear for p in positions[:-1])}
    for mode, expected in ((False, exact), (True, first_order)):
        point = _Point(start)
        lr_tensor = torch.tensor(lr, dtype=torch.float64, requires_grad=True)
        inner = DifferentiableOptimizer(point, torch.optim.SGD, lr=lr_tensor, first_order=mode)
        for _ in range(steps):
            p = inner()
            inner.step(0.5 * p @ curvature @ p - linear @ p)
        outer = 0.5 * (inner() - target).pow(2).sum()
        grad_start, grad_lr = torch.autograd.grad(outer, [point.position, lr_tensor])
        torch.testing.assert_close(grad_start, expected["start"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad_lr, expected["lr"], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(exact["start"], first_order["start"], rtol=1e-3)


def test_detach_cuts_the_history():
    curvature, linear, target, start = _quadratic()
    point = _Point(start)
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    inner = DifferentiableOptimizer(point, torch.optim.SGD, lr=lr, momentum=0.5)
    for _ in range(2):
        p = inner()
        inner.step(0.5 * p @ curvature @ p - linear @ p)
    inner.detach_()
    kept = inner.params[0].detach().clone()
    buffer = inner.state.momentum_buffer[0].detach().clone()
    p = inner()
    inner.step(0.5 * p @ curvature @ p - linear @ p)
    outer = 0.5 * (inner() - target).pow(2).sum()
    outer.backward()
    # Only the last step remains: p₃ = p₂ − lr·(μb₂ + Ap₂ − b), with p₂ and b₂ constants.
    direction = 0.5 * buffer + curvature @ kept - linear
    torch.testing.assert_close(lr.grad, -(inner.params[0].detach() - target) @ direction)
    assert point.position.grad is None


def test_bad_arguments_are_value_errors_naming_the_problem():
    model = _mlp()
    with pytest.raises(ValueError, match=r"LBFGS has no functional core.*supported: .*torch\.optim\.sgd\.SGD"):
        DifferentiableOptimizer(model, torch.optim.LBFGS)
    with pytest.raises(ValueError, match=r"invalid SGD\.lr: -0\.1"):
        DifferentiableOptimizer(model, torch.optim.SGD, lr=-0.1)
    with pytest.raises(ValueError, match=r"invalid SGD\.lr: 2 values for 4 trainable parameter tensors"):
        DifferentiableOptimizer(model, torch.optim.SGD, lr=[0.1, 0.2])
    with pytest.raises(ValueError, match=r"invalid Adam\.momentum"):
        DifferentiableOptimizer(model, torch.optim.Adam, momentum=0.9)


def test_a_hydra_partial_with_listconfig_betas_is_read():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    factory = instantiate(OmegaConf.create({"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01,
                                            "betas": [0.8, 0.9]}))
    inner = DifferentiableOptimizer(_mlp(), factory)
    hyper = inner.hyperparameters
    assert (hyper["lr"], hyper["beta1"], hyper["beta2"]) == (0.01, 0.8, 0.9)
