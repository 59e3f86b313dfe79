"""APO: derivatives of Q against finite differences, the paper's linreg claim, the quadratic optimum
of the preconditioner, the untouched base state, checkpoints, and bad input."""

import copy
import functools
import io
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaopt.optim import APO
from metaopt.optim.apo.precond import precondition
from metaopt.tasks import LinearRegression


def _half_mse(outputs, targets):
    return 0.5 * F.mse_loss(outputs, targets)


def _classifier_batch(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)
    inputs = torch.randn(16, 5, generator=gen, dtype=dtype)
    targets = torch.randint(0, 3, (16,), generator=gen)
    fresh = torch.randn(12, 5, generator=gen, dtype=dtype)
    return model, (inputs, targets), fresh, F.cross_entropy


def _conv_regression_batch(dtype=torch.float64):
    gen = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 2)).to(dtype)
    inputs = torch.randn(8, 2, 4, 4, generator=gen, dtype=dtype)
    targets = torch.randn(8, 2, generator=gen, dtype=dtype)
    fresh = torch.randn(6, 2, 4, 4, generator=gen, dtype=dtype)
    return model, (inputs, targets), fresh, _half_mse


def _warm_up(model, opt, batch, loss_fn, steps=3):
    """A few real steps so that momentum buffers and Adam moments are not zero."""
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(batch[0]), batch[1]).backward()
        opt.base.step()
    opt.zero_grad()
    loss_fn(model(batch[0]), batch[1]).backward()


def _directional_fd_check(opt, q_of_phi, rel=1e-6):
    """``⟨∇_φ Q, v⟩`` by autograd against a central difference of ``Q`` along a random direction ``v``."""
    phi = [t for group in opt._meta_params for t in group]
    gen = torch.Generator().manual_seed(2)
    direction = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in phi]
    grads = torch.autograd.grad(q_of_phi(), phi)
    analytic = sum(float((g * v).sum()) for g, v in zip(grads, direction))
    h = 1e-6

    def shifted(sign):
        with torch.no_grad():
            for t, v in zip(phi, direction):
                t.add_(sign * h * v)
        value = float(q_of_phi().detach())
        with torch.no_grad():
            for t, v in zip(phi, direction):
                t.sub_(sign * h * v)
        return value

    numeric = (shifted(1) - shifted(-1)) / (2 * h)
    assert analytic == pytest.approx(numeric, rel=rel, abs=1e-10)
    assert abs(analytic) > 1e-6  # the check is not vacuous


BASES = {
    "sgd": functools.partial(torch.optim.SGD, lr=0.05),
    "momentum": functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": functools.partial(torch.optim.Adam, lr=0.01),
}


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("divergence", ["kl", "mse"])
def test_dq_dlog_lr_matches_central_differences(base, divergence):
    model, batch, fresh, loss_fn = _classifier_batch() if divergence == "kl" else _conv_regression_batch()
    opt = APO(model.parameters(), BASES[base], mode="lr", lambda_fsd=0.7, lambda_wsd=0.3,
              divergence=divergence)
    _warm_up(model, opt, batch, loss_fn)
    _directional_fd_check(opt, lambda: opt.meta_objective(model, batch, fresh, loss_fn))


@pytest.mark.parametrize("task", ["classifier", "conv"])
def test_dq_dpreconditioner_factors_match_central_differences(task):
    model, batch, fresh, loss_fn = _classifier_batch() if task == "classifier" else _conv_regression_batch()
    opt = APO(model.parameters(), functools.partial(torch.optim.SGD, lr=0.05), mode="precond",
              lambda_fsd=0.5, lambda_wsd=0.2, divergence="kl" if task == "classifier" else "mse")
    # Move the factors away from the identity so that every term of the derivative is exercised.
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for t in (t for group in opt._meta_params for t in group if t.dim() == 2):
            t.add_(0.2 * torch.randn(t.shape, generator=gen, dtype=t.dtype))
    _warm_up(model, opt, batch, loss_fn, steps=0)
    shapes = sorted(tuple(t.shape) for group in opt._meta_params for t in group)
    if task == "conv":  # conv weight 3×(2·3·3): L 3×3, R 18×18; linear 2×12: L 2×2, R 12×12; 4 log-scales
        assert shapes == [(), (), (), (), (2, 2), (3, 3), (12, 12), (18, 18)]
    _directional_fd_check(opt, lambda: opt.meta_objective(model, batch, fresh, loss_fn))


def test_precondition_is_the_kronecker_product_of_the_factors():
    gen = torch.Generator().manual_seed(4)
    grad = torch.randn(3, 4, dtype=torch.float64, generator=gen)
    left = torch.randn(3, 3, dtype=torch.float64, generator=gen)
    right = torch.randn(4, 4, dtype=torch.float64, generator=gen)
    log_scale = torch.tensor(0.3, dtype=torch.float64)
    step = precondition(grad, log_scale, left, right)
    # vec(A G B) = (Bᵀ ⊗ A) vec(G) with column-major vec; here A = LLᵀ and B = RRᵀ are symmetric.
    kron = torch.kron(right @ right.T, left @ left.T)
    expected = (math.exp(0.3) * kron @ grad.T.reshape(-1)).reshape(4, 3).T
    torch.testing.assert_close(step, expected)
    eigenvalues = torch.linalg.eigvalsh(kron)
    assert eigenvalues.min() > 0  # positive definite by construction


def _train_linreg(task, lr, steps, apo_kwargs=None):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = task.build_model()
    base = functools.partial(torch.optim.SGD, lr=lr)
    opt = base(model.parameters()) if apo_kwargs is None else APO(model.parameters(), base, **apo_kwargs)
    lrs = []
    for _ in range(steps):
        inputs, targets = task.sample_batch(gen)
        opt.zero_grad()
        task.loss(model(inputs), targets).backward()
        if apo_kwargs is not None:
            opt.meta_step(model, (inputs, targets), lambda: task.sample_batch(gen)[0], task.loss)
        opt.step()
        lrs.append(opt.param_groups[0]["lr"] if apo_kwargs is None else opt.lrs[0])
    return task.evaluate(model, splits=("train",))["train_loss"], lrs


def test_apo_lr_on_ill_conditioned_linreg_matches_the_best_fixed_lr_from_any_initial_lr(one_thread):
    task = LinearRegression(dim=20, condition_number=1000.0, noise=0.1)
    steps = 2500
    grid = {lr: _train_linreg(task, lr, steps)[0] for lr in (0.03, 0.3, 1.0, 1.5)}
    best = min(grid.values())
    assert best < 0.5 * grid[0.03]  # the grid's edges are clearly worse: the best lr matters
    apo = {"mode": "lr", "lambda_fsd": 1.0, "meta_interval": 5, "meta_lr": 0.3}
    for initial_lr in (1e-6, 1e-3, 1.0):
        final, lrs = _train_linreg(task, initial_lr, steps, apo)
        assert final <= 1.1 * best, (initial_lr, final, grid)
        if initial_lr == 1e-6:
            assert lrs[-1] > 1e4 * initial_lr  # η grew by more than four orders of magnitude


def test_learned_full_matrix_preconditioner_approaches_the_damped_inverse_metric():
    """On ``J(w) = ½·mean((Xw − y)²)`` with ``D = ½·mean((X'w' − X'w)²)``, Q is minimised for every
    gradient by ``P* = (H + λ_FSD·G + λ_WSD·I)⁻¹`` with ``H = XᵀX/n`` and ``G = X'ᵀX'/n'``."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    dim, lambda_fsd, lambda_wsd = 3, 0.5, 0.2
    scales = torch.tensor([1.5, 1.0, 0.6], dtype=torch.float64)
    inputs = torch.randn(64, dim, generator=gen, dtype=torch.float64) * scales
    fresh = torch.randn(48, dim, generator=gen, dtype=torch.float64) * scales
    targets = inputs @ torch.randn(dim, 1, generator=gen, dtype=torch.float64)
    hessian, metric = inputs.T @ inputs / 64, fresh.T @ fresh / 48
    identity = torch.eye(dim, dtype=torch.float64)
    optimum = torch.linalg.inv(hessian + lambda_fsd * metric + lambda_wsd * identity)

    model = nn.Linear(dim, 1, bias=False).double()
    opt = APO(model.parameters(), functools.partial(torch.optim.SGD, lr=0.1), mode="precond",
              lambda_fsd=lambda_fsd, lambda_wsd=lambda_wsd, meta_interval=1, meta_lr=0.03)
    scheduler = torch.optim.lr_scheduler.StepLR(opt.meta_optimizer, step_size=500, gamma=0.3)
    for _ in range(2000):
        with torch.no_grad():  # a fresh θ each time, so that the gradients span every direction
            model.weight.copy_(torch.randn(1, dim, generator=gen, dtype=torch.float64))
        opt.zero_grad()
        _half_mse(model(inputs), targets).backward()
        opt.meta_step(model, (inputs, targets), fresh, _half_mse)
        scheduler.step()
    log_scale, left, right = opt._meta_params[0]
    learned = opt.param_groups[0]["lr"] * (log_scale.exp() * left.square().sum() * right @ right.T).detach()
    error = torch.linalg.matrix_norm(learned - optimum) / torch.linalg.matrix_norm(optimum)
    initial_error = torch.linalg.matrix_norm(0.1 * identity - optimum) / torch.linalg.matrix_norm(optimum)
    assert error < 0.03, (learned, optimum)
    assert initial_error > 0.5


@pytest.mark.parametrize("mode", ["lr", "precond"])
def test_the_lookahead_leaves_params_buffers_and_base_state_untouched(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    opt = APO(model.parameters(), functools.partial(torch.optim.Adam, lr=1e-2), mode=mode, meta_interval=1)
    inputs, targets, fresh = torch.randn(16, 4), torch.randn(16, 2), torch.randn(16, 4)
    _warm_up(model, opt, (inputs, targets), _half_mse)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state_before = {k: v.clone() for k, v in opt.base.state[model[0].weight].items()}
    lr_before = opt.schedule()
    opt.meta_objective(model, (inputs, targets), fresh, _half_mse).backward()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # incl. BatchNorm running stats
    for key, value in opt.base.state[model[0].weight].items():
        assert torch.equal(value, state_before[key]), key
    assert model[0].weight.grad is not None
    assert opt.meta_step(model, (inputs, targets), fresh, _half_mse) is not None
    assert opt.param_groups[0]["lr"] == 1e-2  # the base's (scheduled) lr, which φ multiplies
    if mode == "lr":
        assert opt.lrs[0] != lr_before["lr"]  # φ moved, and the η of the next step follows
    else:
        assert opt.precond_scales() != pytest.approx([1e-2] * 4)


@pytest.mark.parametrize("base", sorted(BASES))
def test_meta_step_then_step_advances_the_base_state_once(base):
    torch.manual_seed(0)
    model, twin = nn.Linear(4, 2), nn.Linear(4, 2)
    twin.load_state_dict(model.state_dict())
    opt = APO(model.parameters(), BASES[base], meta_interval=1)
    reference = BASES[base](twin.parameters())
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        inputs, targets = torch.randn(8, 4, generator=gen), torch.randn(8, 2, generator=gen)
        for net, optimizer in ((model, opt), (twin, reference)):
            optimizer.zero_grad()
            _half_mse(net(inputs), targets).backward()
        opt.meta_step(model, (inputs, targets), torch.randn(8, 4, generator=gen), _half_mse)
        reference.param_groups[0]["lr"] = opt.lrs[0]
        opt.step()
        reference.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)
        for key, value in reference.state[q].items():
            torch.testing.assert_close(opt.base.state[p][key], value)


@pytest.mark.parametrize("base", sorted(BASES))
def test_precond_with_a_frozen_identity_is_the_base_at_its_lr(base):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 2))
    twin = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 2))
    twin.load_state_dict(model.state_dict())
    opt = APO(model.parameters(), BASES[base], mode="precond", meta_lr=0.0, meta_interval=2)
    reference = BASES[base](twin.parameters())
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):  # meta-steps (φ frozen by meta_lr = 0) at steps 0, 2, 4; plain steps in between
        inputs, targets = torch.randn(8, 2, 4, 4, generator=gen), torch.randn(8, 2, generator=gen)
        for net, optimizer in ((model, opt), (twin, reference)):
            optimizer.zero_grad()
            _half_mse(net(inputs), targets).backward()
        opt.meta_step(model, (inputs, targets), torch.randn(8, 2, 4, 4, generator=gen), _half_mse)
        opt.step()
        reference.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)


def test_lr_mode_step_is_the_base_step_at_the_learned_lr():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    twin = nn.Linear(4, 2)
    twin.load_state_dict(model.state_dict())
    opt = APO(model.parameters(), functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9), meta_interval=3)
    reference = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(7):
        inputs, targets = torch.randn(8, 4, generator=gen), torch.randn(8, 2, generator=gen)
        for net, optimizer in ((model, opt), (twin, reference)):
            optimizer.zero_grad()
            _half_mse(net(inputs), targets).backward()
        opt.meta_step(model, (inputs, targets), lambda: torch.randn(8, 4, generator=gen), _half_mse)
        reference.param_groups[0]["lr"] = opt.lrs[0]
        opt.step()
        reference.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)
    assert opt._num_meta_steps == 3  # steps 0, 3, 6


def test_global_lr_keeps_the_ratio_of_group_lrs():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    groups = [{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 0.01}]
    opt = APO(groups, functools.partial(torch.optim.SGD, lr=0.1), lr_per_group=False, meta_interval=1)
    assert len(opt._meta_params[0]) == 1 and opt._meta_params[1] == []
    inputs, targets = torch.randn(8, 3), torch.randn(8, 1)
    _half_mse(model(inputs), targets).backward()
    opt.meta_step(model, (inputs, targets), inputs, _half_mse)
    assert opt.lrs[0] != 0.1 and opt.lrs[1] == pytest.approx(opt.lrs[0] / 10)
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "lr": 0.05})
    assert opt.lrs[2] == pytest.approx(opt.lrs[0] / 2) and len(opt.base.param_groups) == 3


@pytest.mark.parametrize("mode", ["lr", "precond"])
def test_state_dict_round_trip_resumes_exactly(mode):
    def make():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        return model, APO(model.parameters(), functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
                          mode=mode, meta_interval=2, divergence="kl")

    def train(model, opt, seeds):
        for seed in seeds:
            gen = torch.Generator().manual_seed(seed)
            inputs, targets = torch.randn(8, 4, generator=gen), torch.randint(0, 3, (8,), generator=gen)
            opt.zero_grad()
            F.cross_entropy(model(inputs), targets).backward()
            opt.meta_step(model, (inputs, targets), torch.randn(8, 4, generator=gen), F.cross_entropy)
            opt.step()

    model, opt = make()
    train(model, opt, range(5))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    train(model, opt, range(5, 10))

    resumed_model, resumed = make()
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["opt"])
    assert len(saved["opt"]["meta_optimizer"]["state"]) > 0
    train(resumed_model, resumed, range(5, 10))
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert resumed.schedule() == opt.schedule()


def test_wrapping_an_existing_optimizer_and_the_precond_fallback_for_biases():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = APO(model.parameters(), base, mode="precond", max_factor_size=3)
    assert opt.base is base and opt.param_groups[0] is base.param_groups[0]
    shapes = [tuple(t.shape) for t in opt._meta_params[0]]
    # W1 4×3: L too big (4 > 3) → identity, R 3×3; b1, LN weight/bias: a scale; W2 1×4: L 1×1, R identity.
    assert shapes == [(), (3, 3), (), (), (), (), (1, 1), ()]
    assert opt.precond_scales() == pytest.approx([0.1] * 6)


def test_a_non_finite_lookahead_leaves_phi_unchanged():
    model = nn.Linear(2, 1)
    opt = APO(model.parameters(), functools.partial(torch.optim.SGD, lr=1e30), meta_interval=1)
    inputs, targets = torch.full((4, 2), 1e10), torch.zeros(4, 1)
    _half_mse(model(inputs), targets).backward()
    assert not math.isfinite(opt.meta_step(model, (inputs, targets), inputs, _half_mse))
    assert opt.lrs == pytest.approx([1e30]) and opt.meta_optimizer.state_dict()["state"] == {}


def test_step_without_meta_step_warns():
    model = nn.Linear(2, 1)
    opt = APO(model.parameters(), functools.partial(torch.optim.SGD, lr=0.1), meta_interval=2)
    model(torch.randn(4, 2)).sum().backward()
    with pytest.warns(UserWarning, match="without meta_step"):
        for _ in range(3):
            opt.step()


@pytest.mark.parametrize("kwargs,message", [
    ({"lambda_fsd": -0.1}, r"invalid lambda_fsd: -0.1 \(allowed: a finite number >= 0\)"),
    ({"lambda_wsd": -1.0}, r"invalid lambda_wsd: -1.0"),
    ({"meta_interval": 0}, r"invalid meta_interval: 0 \(allowed: an integer >= 1\)"),
    ({"meta_interval": 2.5}, r"invalid meta_interval: 2.5"),
    ({"mode": "diag"}, r"invalid mode: 'diag' \(allowed: one of \('lr', 'precond'\)\)"),
    ({"divergence": "l2"}, r"invalid divergence: 'l2'"),
    ({"meta_lr": float("nan")}, r"invalid meta_lr: nan"),
])
def test_bad_hyperparameters_raise(kwargs, message):
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match=message):
        APO(model.parameters(), functools.partial(torch.optim.SGD, lr=0.1), **kwargs)


def test_zero_base_lr_cannot_be_a_log_lr_and_a_foreign_base_is_refused():
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match=r"invalid base lr: 0.0 \(allowed: a number > 0"):
        APO(model.parameters(), functools.partial(torch.optim.SGD, lr=0.0))
    other = nn.Linear(2, 1)
    with pytest.raises(ValueError, match=r"invalid base: 'SGD' \(allowed: an optimizer built on the same"):
        APO(model.parameters(), torch.optim.SGD(other.parameters(), lr=0.1))


@pytest.mark.parametrize("mode", ["lr", "precond"])
def test_params_outside_the_optimizer_are_constants_of_the_lookahead(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = APO(model[2].parameters(), functools.partial(torch.optim.SGD, lr=0.1), mode=mode, meta_interval=1)
    inputs, targets = torch.randn(8, 3), torch.randn(8, 1)
    _half_mse(model(inputs), targets).backward()
    frozen_grad = model[0].weight.grad.clone()
    opt.meta_step(model, (inputs, targets), torch.randn(8, 3), _half_mse)
    assert torch.equal(model[0].weight.grad, frozen_grad)  # Q's backward reached φ only
    assert all(t.grad is not None for t in opt._meta_params[0])


class _TiedNet(nn.Module):
    """The same weight in two places (one module used twice) and a bias shared by two modules."""

    def __init__(self, batch_norm=False):
        super().__init__()
        self.inner = nn.Linear(3, 3)
        self.head = nn.Linear(3, 3)
        self.head.bias = self.inner.bias
        self.norm = nn.BatchNorm1d(3) if batch_norm else nn.Identity()

    def forward(self, x):
        return self.head(torch.tanh(self.norm(self.inner(torch.tanh(self.inner(x))))))


@pytest.mark.parametrize("lambda_fsd, lambda_wsd, batch_norm", [(0.7, 0.3, False), (0.0, 0.5, False),
                                                                (0.7, 0.3, True)])
def test_the_meta_objective_is_the_loss_of_a_copy_moved_to_the_lookahead(lambda_fsd, lambda_wsd, batch_norm):
    """Q(η) of an SGD base (d = ∇J) against a deep copy of the model set to θ − η∇J, on a model with
    tied parameters (every place a param sits must move with it), with and without BatchNorm (which
    takes the functional_call path on cloned buffers)."""
    torch.manual_seed(0)
    model = _TiedNet(batch_norm).double()
    opt = APO(model.parameters(), functools.partial(torch.optim.SGD, lr=0.3), lambda_fsd=lambda_fsd,
              lambda_wsd=lambda_wsd, divergence="kl")
    inputs, targets = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 3, (10,))
    fresh = torch.randn(7, 3, dtype=torch.float64)
    F.cross_entropy(model(inputs), targets).backward()
    q = opt.meta_objective(model, (inputs, targets), fresh, F.cross_entropy)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p, original in zip(moved.parameters(), model.parameters()):
            p.sub_(0.3 * original.grad)
        expected = F.cross_entropy(moved(inputs), targets)
        expected += lambda_fsd * F.kl_div(F.log_softmax(moved(fresh), -1), F.log_softmax(model(fresh), -1),
                                          log_target=True, reduction="batchmean")
        expected += 0.5 * lambda_wsd * sum((0.3 * p.grad).square().sum() for p in model.parameters())
    assert float(q.detach()) == pytest.approx(float(expected), rel=1e-12)
    assert all(isinstance(p, nn.Parameter) for p in (model.inner.weight, model.head.bias))


def test_a_failing_lookahead_forward_puts_the_params_back():
    class Picky(nn.Linear):
        def forward(self, x):
            if not isinstance(self.weight, nn.Parameter):
                raise RuntimeError("lookahead refused")
            return super().forward(x)

    model = Picky(2, 2)
    weight = model.weight
    opt = APO(model.parameters(), functools.partial(torch.optim.SGD, lr=0.1))
    inputs, targets = torch.randn(4, 2), torch.randn(4, 2)
    _half_mse(model(inputs), targets).backward()
    with pytest.raises(RuntimeError, match="lookahead refused"):
        opt.meta_objective(model, (inputs, targets), inputs, _half_mse)
    assert model.weight is weight and model._parameters["weight"] is weight


def test_bfloat16_params_get_float32_factors_that_record_small_meta_updates():
    """A meta-update of an n×n factor moves each entry by about meta_lr/n; in bfloat16 (8 bits of
    mantissa) such a step on the identity's ones would round away, so the factors are float32."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(torch.bfloat16)
    opt = APO(model.parameters(), functools.partial(torch.optim.SGD, lr=0.1), mode="precond", meta_lr=1e-3,
              meta_interval=1, divergence="kl")
    inputs, targets = torch.randn(16, 6, dtype=torch.bfloat16), torch.randint(0, 3, (16,))
    before = [p.clone() for p in model.parameters()]
    F.cross_entropy(model(inputs), targets).backward()
    assert opt.meta_step(model, (inputs, targets), inputs, F.cross_entropy) is not None
    opt.step()
    factors = [t for t in opt._meta_params[0] if t.dim() == 2]
    assert len(factors) == 4 and all(t.dtype == torch.float32 for t in factors)
    assert all(not torch.equal(t.detach(), torch.eye(len(t))) for t in factors)
    assert all(p.dtype == torch.bfloat16 and not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_step_hooks_fire_on_apo_and_on_a_hooked_base():
    """APO skips the base's per-call wrapper only while nothing is hooked to the base."""
    model = nn.Linear(3, 2)
    opt = APO(model.parameters(), functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9), meta_interval=100)
    calls = []
    opt.register_step_pre_hook(lambda *_: calls.append("apo"))
    inputs, targets = torch.randn(4, 3), torch.randn(4, 2)
    for hooked_base in (False, True):
        if hooked_base:
            opt.base.register_step_post_hook(lambda *_: calls.append("base"))
        _half_mse(model(inputs), targets).backward()
        opt.meta_step(model, (inputs, targets), inputs, _half_mse)
        before = model.weight.detach().clone()
        opt.step()
        assert not torch.equal(model.weight, before)
        _half_mse(model(inputs), targets).backward()
        opt.step()  # not a meta-step: the base's own step
    assert calls == ["apo", "apo", "apo", "base", "apo", "base"]


def test_global_step_hooks_see_the_base_and_the_meta_optimizer():
    """APO skips the inner optimizers' per-call wrapper only while no hook (global ones included) could see it."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    model = nn.Linear(3, 2)
    opt = APO(model.parameters(), functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9), meta_interval=2)
    inputs, targets = torch.randn(4, 3), torch.randn(4, 2)
    seen = []
    handle = register_optimizer_step_pre_hook(lambda optimizer, *_: seen.append(optimizer))
    try:
        for _ in range(2):
            opt.zero_grad()
            _half_mse(model(inputs), targets).backward()
            opt.meta_step(model, (inputs, targets), inputs, _half_mse)
            opt.step()
    finally:
        handle.remove()
    # step 1: the base three times (the first probe's linearity check at two lrs, then the probe), the
    # meta-optimizer, APO; step 2: APO, then the base it calls
    names = {id(opt.base): "base", id(opt.meta_optimizer): "meta", id(opt): "apo"}
    assert [names[id(o)] for o in seen] == ["base"] * 3 + ["meta", "apo", "apo", "base"]


def test_a_model_that_does_not_own_the_params_is_refused():
    model, other = nn.Linear(2, 1), nn.Linear(2, 1)
    opt = APO(model.parameters(), functools.partial(torch.optim.SGD, lr=0.1))
    inputs, targets = torch.randn(4, 2), torch.randn(4, 1)
    _half_mse(model(inputs), targets).backward()
    with pytest.raises(ValueError, match=r"invalid model: 'Linear' .*2 of the optimizer's 2 parameters"):
        opt.meta_step(other, (inputs, targets), inputs, _half_mse)


def test_a_divergence_that_does_not_fit_the_output_is_refused():
    model = nn.Linear(2, 1)
    inputs, targets = torch.randn(4, 2), torch.randn(4, 1)
    opt = APO(model.parameters(), functools.partial(torch.optim.SGD, lr=0.1), divergence="kl")
    _half_mse(model(inputs), targets).backward()
    with pytest.raises(ValueError, match=r"invalid divergence: 'kl' \(allowed: 'mse' or a callable for a "
                                         r"model output of shape \(4, 1\)"):
        opt.meta_step(model, (inputs, targets), inputs, _half_mse)
    opt = APO(model.parameters(), functools.partial(torch.optim.SGD, lr=0.1), divergence=lambda a, b: a - b)
    with pytest.raises(ValueError, match=r"allowed: a callable returning a scalar tensor"):
        opt.meta_step(model, (inputs, targets), inputs, _half_mse)


def test_meta_step_before_backward_is_refused():
    model = nn.Linear(2, 1)
    opt = APO(model.parameters(), functools.partial(torch.optim.SGD, lr=0.1))
    with pytest.raises(RuntimeError, match="call loss.backward"):
        opt.meta_step(model, (torch.randn(4, 2), torch.randn(4, 1)), torch.randn(4, 2), _half_mse)


def _regression_step(model, opt, gen, scheduler=None, **meta_kwargs):
    inputs, targets = torch.randn(8, 4, generator=gen), torch.randn(8, 2, generator=gen)
    opt.zero_grad()
    _half_mse(model(inputs), targets).backward()
    opt.meta_step(model, (inputs, targets), torch.randn(8, 4, generator=gen), _half_mse, **meta_kwargs)
    opt.step()
    if scheduler is not None:
        scheduler.step()


@pytest.mark.parametrize("mode", ["lr", "precond"])
def test_an_lr_scheduler_multiplies_what_apo_learned(mode):
    """A scheduler on APO sets the group's lr; APO's η (or P) is its learned factor times that lr, so
    meta-steps no longer overwrite the schedule (they did: η was written into group["lr"])."""
    runs = {}
    for gamma in (1.0, 0.5):
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        opt = APO(model.parameters(), functools.partial(torch.optim.SGD, lr=0.1), mode=mode, meta_interval=2)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=gamma)
        gen = torch.Generator().manual_seed(0)
        for _ in range(6):
            _regression_step(model, opt, gen, scheduler)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * gamma**6)
        runs[gamma] = opt
    scheduled = runs[0.5]
    if mode == "lr":
        factor = scheduled._meta_params[0][0].detach().exp().item()
        assert scheduled.lrs[0] == pytest.approx(factor * 0.1 * 0.5**6)
        assert scheduled.lrs[0] < 0.1 * runs[1.0].lrs[0]
    else:
        assert scheduled.schedule()["precond_scale"] < 0.1 * runs[1.0].schedule()["precond_scale"]


def test_a_batch_of_any_form_takes_forward_and_loss():
    """A dict batch with the user's forward/loss gives the Q of the simple form on the same data (it
    raised an opaque TypeError); without them the error names the keywords."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = APO(model.parameters(), functools.partial(torch.optim.SGD, lr=0.1), meta_interval=1,
              divergence="mse")
    inputs, targets, fresh = torch.randn(8, 4), torch.randn(8, 2), torch.randn(6, 4)
    _half_mse(model(inputs), targets).backward()
    simple = opt.meta_objective(model, (inputs, targets), fresh, _half_mse)
    general = opt.meta_objective(model, {"x": inputs, "y": targets}, {"x": fresh},
                                 forward=lambda net, batch: net(batch["x"]),
                                 loss=lambda outputs, batch: _half_mse(outputs, batch["y"]))
    assert general.item() == pytest.approx(simple.item(), rel=1e-6)
    with pytest.raises(ValueError, match="forward=lambda model, batch"):
        opt.meta_step(model, {"x": inputs, "y": targets}, {"x": fresh}, _half_mse)
    assert opt._pending_directions is None and not opt.base.state  # refused before the base was probed
    assert opt.meta_step(model, {"x": inputs, "y": targets}, {"x": fresh}, forward=lambda net, b: net(b["x"]),
                         loss=lambda outputs, b: _half_mse(outputs, b["y"])) is not None


def test_a_classifier_without_a_divergence_gets_kl_and_an_unclear_task_an_error():
    """Without divergence=, class logits against labels take KL (they silently took MSE on logits)."""
    model, batch, fresh, loss_fn = _classifier_batch()
    values = []
    for divergence in (None, "kl"):
        opt = APO(model.parameters(), functools.partial(torch.optim.SGD, lr=0.05), divergence=divergence)
        model.zero_grad()
        loss_fn(model(batch[0]), batch[1]).backward()
        values.append(opt.meta_objective(model, batch, fresh, loss_fn).item())
    assert values[0] == values[1]
    regression = nn.Linear(3, 2).double()
    opt = APO(regression.parameters(), functools.partial(torch.optim.SGD, lr=0.05))
    inputs = torch.randn(5, 3, dtype=torch.float64)
    weights = torch.ones(5, dtype=torch.float64)
    regression(inputs).sum().backward()
    with pytest.raises(ValueError, match="cannot tell the output divergence .* pass divergence="):
        opt.meta_objective(regression, (inputs, weights), inputs, lambda outputs, w: (w[:, None] * outputs).sum())


def test_a_base_whose_step_is_not_linear_in_lr_is_refused():
    """Rprop's step sizes start at lr and are clamped: APO blew the loss up from 2.3 to 3e5 in 3 steps."""
    model, batch, fresh, loss_fn = _classifier_batch()
    opt = APO(model.parameters(), functools.partial(torch.optim.Rprop, lr=0.01), divergence="kl")
    loss_fn(model(batch[0]), batch[1]).backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"invalid base: 'Rprop' \(allowed: an optimizer whose update is lr·d"):
        opt.meta_step(model, batch, fresh, loss_fn)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before)) and not opt.base.state
    for cls in (torch.optim.Adagrad, torch.optim.RMSprop, torch.optim.AdamW):  # lr·d with d independent of lr
        opt = APO(model.parameters(), functools.partial(cls, lr=0.01), divergence="kl")
        assert opt.meta_step(model, batch, fresh, loss_fn) is not None


def test_lbfgs_is_refused_before_any_work():
    """A class or partial is refused before it is built; a factory of another form once it has built."""
    model = nn.Linear(2, 1)
    for base in (torch.optim.LBFGS, functools.partial(torch.optim.LBFGS, lr=0.1),
                 torch.optim.LBFGS(model.parameters()), lambda params: torch.optim.LBFGS(params)):
        with pytest.raises(ValueError, match=r"invalid base: 'LBFGS' .*closure"):
            APO(model.parameters(), base)


def test_deepcopy_and_pickle_are_whole_optimizers():
    """They were half-built ('base' and '_num_steps' missing); the copies step as the original."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = APO(model.parameters(), functools.partial(torch.optim.Adam, lr=0.01), mode="precond", meta_interval=2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        _regression_step(model, opt, gen)
    twins = [copy.deepcopy((model, opt)), pickle.loads(pickle.dumps((model, opt)))]
    for net, optimizer in [(model, opt), *twins]:
        step_gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            _regression_step(net, optimizer, step_gen)
    for twin, _ in twins:
        assert torch.equal(twin.weight, model.weight) and torch.equal(twin.bias, model.bias)


def test_a_checkpoint_of_the_log_lr_format_loads_as_the_same_schedule():
    """Checkpoints written before φ became a factor of the group's lr held log η, and η in the group."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    groups = [{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 0.01}]
    for per_group in (True, False):
        opt = APO(groups, functools.partial(torch.optim.SGD, lr=0.1), meta_interval=1, lr_per_group=per_group)
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            _regression_step(model, opt, gen)
        old = copy.deepcopy(opt.state_dict())
        del old["format"]
        for group, eta in zip(old["base"]["param_groups"], opt.lrs):
            group["lr"] = eta
        for meta, group in zip(old["meta_params"], opt.param_groups):
            for i, t in enumerate(meta):
                meta[i] = t + math.log(group["lr"])
        resumed = APO(groups, functools.partial(torch.optim.SGD, lr=0.1), meta_interval=1, lr_per_group=per_group)
        resumed.load_state_dict(old)
        assert resumed.lrs == pytest.approx(opt.lrs, rel=1e-6)
