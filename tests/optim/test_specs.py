"""The optimizer specs: every functional core against its torch class with every option it accepts, over
100 steps (1e-6 in float32, 1e-12 in float64), and the specs' domains, parameterisations and look-ups."""

import functools
import math

import pytest
import torch

from metaopt.optim import ComplexAdam, ComplexMomentum
from metaopt.optim.specs import SPECS, Hyperparameter, spec_for
from metaopt.optim.specs import factory_kwargs as kwargs_of


def _problem(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    hessian = (a @ a.T / 6 + 0.1 * torch.eye(6, dtype=torch.float64)).to(dtype)
    params = [torch.randn(6, generator=gen, dtype=torch.float64).to(dtype),
              torch.randn(3, 2, generator=gen, dtype=torch.float64).to(dtype)]

    def grads_of(ps):
        return [hessian @ ps[0] + 0.3 * ps[1].sum(), torch.sin(ps[1]) + ps[0][:3, None]]

    return params, grads_of


# Every option each core accepts, exercised at least once.
SETTINGS = {
    torch.optim.SGD: [dict(lr=0.05), dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
                      dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01, maximize=True)],
    torch.optim.Adam: [dict(lr=0.01), dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, amsgrad=True),
                       dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)],
    torch.optim.AdamW: [dict(lr=0.01), dict(lr=0.01, betas=(0.85, 0.995), weight_decay=0.1, amsgrad=True),
                        dict(lr=0.01, eps=1e-6, maximize=True)],
    torch.optim.RMSprop: [dict(lr=0.01), dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.05, momentum=0.8),
                          dict(lr=0.005, centered=True, momentum=0.5, maximize=True)],
    torch.optim.Adagrad: [dict(lr=0.05), dict(lr=0.05, lr_decay=0.01, weight_decay=0.05, eps=1e-8),
                          dict(lr=0.05, initial_accumulator_value=0.1, maximize=True)],
    # metaopt's own classes against their cores (at angle 0 both are torch's SGD/Adam: tests/optim).
    ComplexMomentum: [dict(lr=0.05, momentum=0.8, angle=0.5), dict(lr=0.05, momentum=0.7, angle=1.0,
                                                                   dampening=0.2, weight_decay=0.01),
                      dict(lr=0.05, momentum=0.8, angle=0.3, nesterov=True, maximize=True)],
    ComplexAdam: [dict(lr=0.01, angle=0.4), dict(lr=0.01, betas=(0.8, 0.99), angle=0.8, amsgrad=True,
                                                 weight_decay=0.05),
                  dict(lr=0.01, angle=0.2, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)],
}
CASES = [(cls, i, dtype) for cls, settings in SETTINGS.items() for i in range(len(settings))
         for dtype in (torch.float32, torch.float64)]


@pytest.mark.parametrize("cls,index,dtype", CASES,
                         ids=[f"{c.__name__}-{i}-{str(d)[6:]}" for c, i, d in CASES])
def test_functional_core_matches_its_torch_class(cls, index, dtype):
    settings = SETTINGS[cls][index]
    spec = spec_for(cls)
    params, grads_of = _problem(dtype)
    reference = [p.clone().requires_grad_(True) for p in params]
    torch_opt = cls(reference, foreach=False, **settings)
    hyper = spec.functional_kwargs(settings)
    state = spec.init(tuple(params), hyper)
    ours = tuple(params)
    for _ in range(100):
        for p, g in zip(reference, grads_of([r.detach() for r in reference])):
            p.grad = g
        torch_opt.step()
        ours, state = spec.update(ours, grads_of(ours), state, **hyper)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    for p, r in zip(ours, reference):
        assert p.dtype == dtype
        torch.testing.assert_close(p, r.detach(), rtol=tolerance, atol=tolerance)


def test_specs_are_found_by_class_factory_instance_and_name():
    for cls, spec in SPECS.items():
        assert spec_for(cls) is spec
        assert spec_for(functools.partial(cls, lr=0.1)) is spec
        assert spec_for(spec.name) is spec
    model = torch.nn.Linear(2, 1)
    assert spec_for(torch.optim.AdamW(model.parameters())).name == "adamw"
    assert spec_for(ComplexMomentum).name == "complex_momentum"
    assert spec_for(torch.optim.LBFGS) is None and spec_for("lbfgs") is None
    # AdamW and Adam share a core; the class fixes what differs.
    assert spec_for(torch.optim.AdamW).functional is spec_for(torch.optim.Adam).functional
    assert spec_for(torch.optim.AdamW).functional_kwargs({})["decoupled_weight_decay"] is True


def test_functional_kwargs_map_torch_arguments():
    adam = spec_for(torch.optim.Adam)
    factory = functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.8, 0.99), fused=False, foreach=None)
    assert adam.functional_kwargs(kwargs_of(factory)) == {"lr": 1e-3, "beta1": 0.8, "beta2": 0.99}
    sgd = spec_for(torch.optim.SGD)
    assert sgd.functional_kwargs({"lr": 0.1, "momentum": 0.9, "nesterov": True}) == \
        {"lr": 0.1, "momentum": 0.9, "nesterov": True}
    assert spec_for(ComplexMomentum).functional_kwargs({"lr": 0.1, "angle": 0.3}) == {"lr": 0.1, "angle": 0.3}
    with pytest.raises(ValueError, match=r"invalid optimizer.rho: 0.5 \(SGD has no such argument; allowed: "):
        sgd.functional_kwargs({"lr": 0.1, "rho": 0.5})
    with pytest.raises(ValueError, match=r"invalid optimizer.betas: 0.9 \(allowed: two numbers in \[0, 1\): beta1"):
        adam.functional_kwargs({"betas": 0.9})
    with pytest.raises(ValueError, match=r"invalid optimizer.momentum: 1.0 \(allowed: a number in \[0, 1\)\)"):
        sgd.functional_kwargs({"lr": 0.1, "momentum": 1.0})
    with pytest.raises(ValueError, match=r"invalid optimizer.lr: -0.1 \(allowed: a finite number >= 0\)"):
        sgd.functional_kwargs({"lr": -0.1})
    with pytest.raises(ValueError, match=r"invalid optimizer.eps: 0.0 \(allowed: a finite number > 0\)"):
        adam.functional_kwargs({"eps": 0.0})
    with pytest.raises(ValueError, match=r"invalid optimizer.nesterov: 1 \(allowed: true or false\)"):
        sgd.functional_kwargs({"nesterov": 1})
    with pytest.raises(ValueError, match=r"invalid optimizer.lr: inf"):
        sgd.functional_kwargs({"lr": math.inf})


@pytest.mark.parametrize("transform,value", [("log", 0.03), ("logit", 0.9), ("identity", -2.5)])
def test_parameterisations_round_trip(transform, value):
    hyper = Hyperparameter(low=0.0 if transform != "identity" else -math.inf,
                           high=1.0 if transform == "logit" else math.inf, transform=transform)
    theta = hyper.to_unconstrained(value)
    assert hyper.from_unconstrained(torch.tensor(theta, dtype=torch.float64)).item() == pytest.approx(value)


def test_boundary_values_start_just_inside_the_parameterisation():
    momentum = spec_for(torch.optim.SGD).hyperparameters["momentum"]
    assert torch.sigmoid(torch.tensor(momentum.to_unconstrained(0.0))).item() == pytest.approx(0.01)
    assert math.isfinite(spec_for(torch.optim.SGD).hyperparameters["weight_decay"].to_unconstrained(0.0))


def test_every_spec_declares_tunable_natural_knobs_and_complex_angles_are_periodic():
    for spec in SPECS.values():
        assert spec.natural and all(k in spec.tunable for k in spec.natural), spec.name
    for cls in (ComplexMomentum, ComplexAdam):
        angle = spec_for(cls).hyperparameters["angle"]
        assert angle.transform == "identity" and angle.contains(-7.0) and angle.contains(7.0)
        assert "angle" in spec_for(cls).natural


@pytest.mark.parametrize("cls,kwargs,message", [
    (ComplexMomentum, dict(momentum=1.0), r"invalid momentum: 1.0 \(allowed: a number in \[0, 1\)\)"),
    (ComplexMomentum, dict(lr=float("inf")), r"invalid lr: inf \(allowed: a finite number >= 0\)"),
    (ComplexMomentum, dict(maximize=1), r"invalid maximize: 1 \(allowed: True or False\)"),
    (ComplexAdam, dict(amsgrad="yes"), r"invalid amsgrad: 'yes' \(allowed: True or False\)"),
    (ComplexAdam, dict(betas=(0.9, 1.0)), r"invalid betas\[1\]: 1.0 \(allowed: a number in \[0, 1\)\)"),
    (ComplexAdam, dict(eps=0.0), r"invalid eps: 0.0 \(allowed: a finite number > 0\)"),
])
def test_metaopts_classes_check_their_arguments_against_their_spec(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls([torch.zeros(2, requires_grad=True)], **kwargs)
