"""The Optimizer base class, through a minimal subclass (SGD with momentum) checked against torch."""

import copy

import pytest
import torch

from metaopt.optim import Optimizer


class _MomentumSGD(Optimizer):
    def __init__(self, params, lr=0.1, momentum=0.0, weight_decay=0.0, *, maximize=False, foreach=None):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, maximize=maximize,
                                      foreach=foreach))

    def _validate(self, group):
        super()._validate(group)
        if not 0 <= group["momentum"] < 1:
            raise ValueError(f"invalid momentum: {group['momentum']!r} (allowed: a number in [0, 1))")

    def _init_state(self, param, group):
        return {"momentum_buffer": torch.zeros_like(param), "step": 0}

    def _update(self, group, params, grads, states, foreach):
        bufs = [s["momentum_buffer"] for s in states]
        for s in states:
            s["step"] += 1
        if group["weight_decay"]:
            grads = [g + group["weight_decay"] * p for g, p in zip(grads, params)]
        first = states[0]["step"] == 1
        if foreach:
            if first:
                torch._foreach_copy_(bufs, grads)
            else:
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, grads)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])
        else:
            for p, g, b in zip(params, grads, bufs):
                b.copy_(g) if first else b.mul_(group["momentum"]).add_(g)
                p.add_(b, alpha=-group["lr"])


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))


def _train(model, opt, steps=30, scheduler=None):
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 5, generator=gen)

        def closure(x=x):
            opt.zero_grad()
            loss = (model(x) ** 2).mean()
            loss.backward()
            return loss

        opt.step(closure)
        if scheduler is not None:
            scheduler.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
def test_matches_torch_sgd(foreach, maximize):
    ours = _train(m := _model(), _MomentumSGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01,
                                                maximize=maximize, foreach=foreach))
    ref = _train(m := _model(), torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01,
                                                 maximize=maximize))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_param_groups_and_scheduler_and_state_dict():
    model = _model()
    groups = [{"params": model[0].parameters(), "lr": 0.01}, {"params": model[2].parameters(), "momentum": 0.5}]
    opt = _MomentumSGD(groups, lr=0.05, momentum=0.9)
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[1]["lr"] == 0.05
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[1]["momentum"] == 0.5
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    _train(model, opt, steps=10, scheduler=sched)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0025)
    saved_opt, saved_model = copy.deepcopy(opt.state_dict()), {k: v.clone() for k, v in model.state_dict().items()}
    continued = _train(model, opt, steps=10)
    model2 = _model()
    model2.load_state_dict(saved_model)
    opt2 = _MomentumSGD([{"params": model2[0].parameters()}, {"params": model2[2].parameters()}], lr=1.0)
    opt2.load_state_dict(saved_opt)
    resumed = _train(model2, opt2, steps=10)
    for a, b in zip(continued, resumed):
        assert torch.equal(a, b)


def test_bad_arguments_name_the_value():
    params = _model().parameters()
    with pytest.raises(ValueError, match=r"invalid lr: -0\.1 \(allowed: a finite number >= 0\)"):
        _MomentumSGD(params, lr=-0.1)
    with pytest.raises(ValueError, match=r"invalid weight_decay: -1"):
        _MomentumSGD(_model().parameters(), weight_decay=-1)
    with pytest.raises(ValueError, match=r"invalid lr: nan"):
        _MomentumSGD(_model().parameters(), lr=float("nan"))
    opt = _MomentumSGD(_model().parameters())
    with pytest.raises(ValueError, match=r"invalid momentum: 1\.5"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "momentum": 1.5})


def test_sparse_gradients_are_rejected():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = _MomentumSGD(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()


def test_parameters_without_gradients_are_skipped():
    a, b = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = _MomentumSGD([a, b], lr=0.5)
    a.sum().backward()
    opt.step()
    assert torch.equal(b, torch.ones(3)) and torch.equal(a, torch.full((3,), 0.5))
    assert b not in opt.state
