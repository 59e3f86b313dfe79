"""The torch.optim contract, checked generically over every optimizer metaopt ships (modelled on
PyTorch's OptimizerInfo-driven suite, test/test_optim.py): state-dict round trips and hooks, deepcopy
and pickle, param groups, LR schedulers, maximize, foreach/fused parity, tensor lr, zero_grad, older
state dicts, closures, and a ``torch.compile``-d step that compiles once."""

from __future__ import annotations

import copy
import functools
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.testing import CompileCounter

from metaopt.optim import APO, ComplexAdam, ComplexMomentum, LearnedOptimizer
from metaopt.optim.functional.learned import initial_weights, num_weights


@dataclass
class OptimizerInfo:
    """How to build one optimizer variant, and which parts of the contract it takes part in."""

    name: str
    make: Callable[..., torch.optim.Optimizer]  # (params, lr=..., **flags) -> optimizer
    lr: float
    apo: bool = False
    maximize: bool = True  # APO minimises its meta-objective; a maximizing base would fight it
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # foreach/fused: equal trajectories
    flags: tuple[str, ...] = ()  # group keys an older checkpoint may lack


def _apo(base_cls, mode, params, lr, **base_kwargs):
    return APO(params, functools.partial(base_cls, lr=lr, **base_kwargs), mode=mode, meta_interval=3,
               lambda_fsd=0.1, divergence="mse")


_COMPLEX_FLAGS = ("foreach", "fused", "maximize", "nesterov", "dampening")
_COMPLEX_ADAM_FLAGS = ("foreach", "fused", "maximize", "amsgrad", "decoupled_weight_decay")
_ADAM_FLAGS = ("foreach", "fused", "maximize", "amsgrad", "decoupled_weight_decay", "differentiable")
INFOS = [
    OptimizerInfo("complex_momentum", lambda p, lr, **kw: ComplexMomentum(p, lr, 0.9, angle=0.4, **kw), 0.05,
                  variants={"per_tensor": dict(foreach=False), "foreach": dict(foreach=True),
                            "fused": dict(fused=True)}, flags=_COMPLEX_FLAGS),
    OptimizerInfo("complex_momentum_nesterov", lambda p, lr, **kw: ComplexMomentum(p, lr, 0.9, nesterov=True,
                                                                                   angle=0.4, **kw), 0.05,
                  variants={"per_tensor": dict(foreach=False), "foreach": dict(foreach=True)},
                  flags=_COMPLEX_FLAGS),
    OptimizerInfo("complex_adam", lambda p, lr, **kw: ComplexAdam(p, lr, angle=0.4, **kw), 0.01,
                  variants={"per_tensor": dict(foreach=False), "foreach": dict(foreach=True),
                            "fused": dict(fused=True)}, flags=_COMPLEX_ADAM_FLAGS),
    OptimizerInfo("complex_adamw_amsgrad", lambda p, lr, **kw: ComplexAdam(
        p, lr, weight_decay=0.1, angle=0.4, amsgrad=True, decoupled_weight_decay=True, **kw), 0.01,
                  variants={"per_tensor": dict(foreach=False), "foreach": dict(foreach=True)},
                  flags=_COMPLEX_ADAM_FLAGS),
    OptimizerInfo("apo_lr_sgd", functools.partial(_apo, torch.optim.SGD, "lr", momentum=0.9), 0.05, apo=True,
                  maximize=False, variants={"per_tensor": dict(foreach=False), "foreach": dict(foreach=True)},
                  flags=("foreach", "maximize", "differentiable", "nesterov", "fused")),
    OptimizerInfo("apo_lr_adam", functools.partial(_apo, torch.optim.Adam, "lr"), 0.01, apo=True, maximize=False,
                  variants={"per_tensor": dict(foreach=False), "foreach": dict(foreach=True)}, flags=_ADAM_FLAGS),
    OptimizerInfo("apo_precond_sgd", functools.partial(_apo, torch.optim.SGD, "precond", momentum=0.9), 0.05,
                  apo=True, maximize=False,
                  variants={"per_tensor": dict(foreach=False), "foreach": dict(foreach=True)},
                  flags=("foreach", "maximize", "differentiable", "nesterov", "fused")),
    OptimizerInfo("apo_precond_adam", functools.partial(_apo, torch.optim.Adam, "precond"), 0.01, apo=True,
                  maximize=False, variants={"per_tensor": dict(foreach=False), "foreach": dict(foreach=True)},
                  flags=_ADAM_FLAGS),
]


def _learned(params, lr, **kwargs):
    """A learned optimizer whose every weight matters (not only the Adam-like skip path of the start)."""
    generator = torch.Generator().manual_seed(0)
    weights = initial_weights((16,), generator) + 0.2 * torch.randn(num_weights((16,)), generator=generator)
    return LearnedOptimizer(params, weights=weights, hidden=[16], lr=lr, **kwargs)


def _learned_adam(params, lr, **kwargs):
    """The same with ``form="adam"`` (the MLP scales Adam's direction)."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(num_weights((16,)), generator=generator)
    weights = initial_weights((16,), generator, form="adam") + 0.2 * noise
    return LearnedOptimizer(params, weights=weights, hidden=[16], lr=lr, form="adam", **kwargs)


INFOS.append(OptimizerInfo("learned", _learned, 1.0, variants={"per_tensor": dict(foreach=False),
                                                                "foreach": dict(foreach=True)},
                           flags=("foreach", "maximize")))
INFOS.append(OptimizerInfo("learned_adam", _learned_adam, 1.0, variants={"per_tensor": dict(foreach=False),
                                                                          "foreach": dict(foreach=True)},
                           flags=("foreach", "maximize")))
BY_NAME = {info.name: info for info in INFOS}
# Every variant of every optimizer, for the checks that do not compare variants.
VARIANTS = [pytest.param(info, flags, id=f"{info.name}-{variant}")
            for info in INFOS for variant, flags in info.variants.items()]


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def _batch(index: int):
    gen = torch.Generator().manual_seed(100 + index)
    return torch.randn(8, 3, generator=gen), torch.randn(8, 2, generator=gen), torch.randn(8, 3, generator=gen)


def _loss(outputs, targets, sign=1.0):
    return sign * 0.5 * F.mse_loss(outputs, targets)


def _train(model, opt, steps, start=0, sign=1.0, scheduler=None, closure=False):
    """``steps`` steps on deterministic batches (APO meta-steps when due); the losses."""
    losses = []
    for index in range(start, start + steps):
        inputs, targets, fresh = _batch(index)

        def compute(inputs=inputs, targets=targets):
            opt.zero_grad()
            loss = _loss(model(inputs), targets, sign)
            loss.backward()
            return loss

        if closure:
            losses.append(opt.step(compute).detach().item())
        else:
            losses.append(compute().detach().item())
            if isinstance(opt, APO):
                opt.meta_step(model, (inputs, targets), fresh, functools.partial(_loss, sign=sign))
            opt.step()
        if scheduler is not None:
            scheduler.step()
    return losses


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _assert_equal(a, b, exact=True):
    for x, y in zip(a, b):
        if exact:
            assert torch.equal(x, y), (x - y).abs().max()
        else:
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("info, flags", VARIANTS)
def test_state_dict_round_trip_continues_identically(info, flags):
    model = _model()
    opt = info.make(model.parameters(), info.lr, **flags)
    _train(model, opt, 4)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    _train(model, opt, 4, start=4)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _model(seed=1)
    resumed.load_state_dict(saved["model"])
    resumed_opt = info.make(resumed.parameters(), info.lr * 3, **flags)  # the lr comes from the state dict
    resumed_opt.load_state_dict(saved["opt"])
    _train(resumed, resumed_opt, 4, start=4)
    _assert_equal(_params(model), _params(resumed))


@pytest.mark.parametrize("info", INFOS, ids=lambda info: info.name)
def test_state_dict_hooks_fire(info):
    model = _model()
    opt = info.make(model.parameters(), info.lr)
    _train(model, opt, 1)
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append(("save pre", o is opt)))

    def post(o, state):
        calls.append(("save post", o is opt))
        state["extra"] = 7
        return state

    opt.register_state_dict_post_hook(post)

    def load_pre(o, state):
        calls.append(("load pre", state.get("extra")))
        state = dict(state)
        state.pop("extra")
        return state

    opt.register_load_state_dict_pre_hook(load_pre)
    opt.register_load_state_dict_post_hook(lambda o: calls.append(("load post", o is opt)))
    state = opt.state_dict()
    assert state["extra"] == 7
    opt.load_state_dict(state)
    assert calls == [("save pre", True), ("save post", True), ("load pre", 7), ("load post", True)]


@pytest.mark.parametrize("info, flags", VARIANTS)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_deepcopy_and_pickle_give_an_optimizer_that_steps_identically(info, flags, how):
    model = _model()
    opt = info.make(model.parameters(), info.lr, **flags)
    _train(model, opt, 4)
    if how == "deepcopy":
        twin, twin_opt = copy.deepcopy((model, opt))
    else:
        twin, twin_opt = pickle.loads(pickle.dumps((model, opt)))
    assert all(p is q for p, q in zip(twin.parameters(), (p for g in twin_opt.param_groups for p in g["params"])))
    _train(model, opt, 4, start=4)
    _train(twin, twin_opt, 4, start=4)
    _assert_equal(_params(model), _params(twin))


@pytest.mark.parametrize("info", INFOS, ids=lambda info: info.name)
def test_param_groups_and_add_param_group(info):
    model = _model()
    opt = info.make([{"params": model[0].parameters(), "lr": info.lr / 2}, {"params": model[2].parameters()}],
                    info.lr)
    assert [group["lr"] for group in opt.param_groups] == [info.lr / 2, info.lr]
    model.extra = extra = nn.Parameter(torch.ones(2))  # (APO's lookahead needs it in the model)
    opt.add_param_group({"params": [extra], "lr": info.lr * 2})
    assert len(opt.param_groups) == 3 and opt.param_groups[2]["lr"] == info.lr * 2
    assert set(opt.param_groups[2]) >= set(opt.param_groups[1])  # the defaults filled in
    before = _params(model)

    original_forward = model.forward
    model.forward = lambda x: original_forward(x) + extra.sum()  # the new group takes part in the loss
    _train(model, opt, 2)
    after = _params(model)
    assert all(not torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("info", INFOS, ids=lambda info: info.name)
def test_step_lr_scales_the_step(info):
    """After StepLR divides the lr by 10, the next step is a tenth of the unscheduled one (APO: the
    schedule multiplies what APO learned)."""
    runs = []
    for gamma in (None, 0.1):
        model = _model()
        opt = info.make(model.parameters(), info.lr)
        scheduler = None if gamma is None else torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=gamma)
        _train(model, opt, 2, scheduler=scheduler)
        before = _params(model)
        _train(model, opt, 1, start=2)  # not an APO meta-step (meta_interval=3)
        runs.append([a - b for a, b in zip(_params(model), before)])
        assert opt.param_groups[0]["lr"] == pytest.approx(info.lr * (gamma or 1.0))
    for plain, scheduled in zip(*runs):
        torch.testing.assert_close(scheduled, 0.1 * plain, rtol=1e-3, atol=1e-7)  # (differences of float32 params)


@pytest.mark.parametrize("info", [info for info in INFOS if info.maximize], ids=lambda info: info.name)
def test_maximize_ascends_as_minimizing_the_negated_loss(info):
    runs = []
    for maximize, sign in ((False, 1.0), (True, -1.0)):
        model = _model()
        opt = info.make(model.parameters(), info.lr, maximize=maximize)
        _train(model, opt, 5, sign=sign)
        runs.append(_params(model))
    _assert_equal(*runs)


@pytest.mark.parametrize("info", INFOS, ids=lambda info: info.name)
def test_foreach_and_fused_variants_agree(info):
    runs = []
    for flags in info.variants.values():
        model = _model()
        opt = info.make(model.parameters(), info.lr, **flags)
        _train(model, opt, 6)
        runs.append(_params(model))
    for other in runs[1:]:
        _assert_equal(runs[0], other, exact=False)


# torch's Adam refuses a tensor lr with foreach=True (and capturable=False): so does an APO over it.
TENSOR_LR = [v for v in VARIANTS if not v.id.startswith("apo_lr_adam-foreach") and not v.id.startswith(
    "apo_precond_adam-foreach")]


@pytest.mark.parametrize("info, flags", TENSOR_LR)
def test_tensor_lr_equals_float_lr(info, flags):
    """(To float32 rounding: a scheduler writes a tensor lr in the tensor's float32.)"""
    runs = []
    for lr in (info.lr, torch.tensor(info.lr)):
        model = _model()
        opt = info.make(model.parameters(), lr, **flags)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        _train(model, opt, 5, scheduler=scheduler)
        runs.append(_params(model))
    _assert_equal(*runs, exact=False)


@pytest.mark.parametrize("info", INFOS, ids=lambda info: info.name)
def test_zero_grad(info):
    model = _model()
    opt = info.make(model.parameters(), info.lr)
    _train(model, opt, 1)
    _loss(model(torch.randn(4, 3)), torch.randn(4, 2)).backward()
    opt.zero_grad(set_to_none=False)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def _strip(state: dict, flags: tuple[str, ...]) -> dict:
    """An older checkpoint: param groups without the flag keys, plain-number steps."""
    state = copy.deepcopy(state)
    inner = state["base"] if "base" in state else state
    for group in inner["param_groups"]:
        for flag in flags:
            group.pop(flag, None)
    for param_state in inner["state"].values():
        if "step" in param_state:
            param_state["step"] = int(param_state["step"])
    return state


@pytest.mark.parametrize("info, flags", VARIANTS)
def test_loading_an_older_state_dict_without_flag_keys(info, flags):
    model = _model()
    opt = info.make(model.parameters(), info.lr, **flags)
    _train(model, opt, 3)
    old = _strip(opt.state_dict(), info.flags)
    snapshot = copy.deepcopy(model.state_dict())
    _train(model, opt, 3, start=3)
    resumed = _model(seed=1)
    resumed.load_state_dict(snapshot)
    resumed_opt = info.make(resumed.parameters(), info.lr, **flags)
    resumed_opt.load_state_dict(old)
    groups = resumed_opt.param_groups
    assert all(flag in group for group in groups for flag in info.flags if flag in opt.param_groups[0])
    _train(resumed, resumed_opt, 3, start=3)
    _assert_equal(_params(model), _params(resumed), exact=False)


@pytest.mark.parametrize("info", INFOS, ids=lambda info: info.name)
def test_closure_returns_the_loss_and_steps_as_without(info):
    runs, losses = [], []
    for closure in (False, True):
        model = _model()
        opt = info.make(model.parameters(), info.lr)
        if info.apo:
            opt._warned_no_meta_step = True  # (steps without meta-steps on purpose)
            opt.meta_interval = 1000
            opt._num_steps = 1  # no meta-step due: the plain steps of the base, with or without closure
        losses.append(_train(model, opt, 3, closure=closure))
        runs.append(_params(model))
    _assert_equal(*runs)
    assert losses[0] == losses[1]


@pytest.mark.parametrize("info, flags", VARIANTS)
def test_compiled_step_compiles_once_under_a_scheduler(info, flags):
    """``torch.compile(opt.step)`` with a tensor lr and a StepLR: no new frames after the second step
    (the first creates the state). Backend "eager": dynamo's tracing and guards, no inductor. (The fused
    C kernel and APO's step run outside the graph: dynamo skips them once, without recompiling.)"""
    torch._dynamo.reset()
    model = _model()
    lr = torch.tensor(info.lr) if (info, flags) in [tuple(v.values) for v in TENSOR_LR] else info.lr
    opt = info.make(model.parameters(), lr, **flags)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    counter = CompileCounter()
    step = torch.compile(opt.step, backend=counter)
    frames = []
    for index in range(6):
        inputs, targets, fresh = _batch(index)
        opt.zero_grad()
        _loss(model(inputs), targets).backward()
        if info.apo:
            opt.meta_step(model, (inputs, targets), fresh, _loss)
        step()
        scheduler.step()
        frames.append(counter.frame_count)
    assert frames[1] == frames[-1] <= 6, frames
