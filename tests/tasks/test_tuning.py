"""What an ES/TBPTT loop tunes by default: the optimizer's natural knobs, from its config's values."""

import functools
import math

import pytest
import torch

from metaopt.optim import ComplexMomentum
from metaopt.tasks.unrolled.tuning import TunedHyperparameters, optimizer_spec


def _tuning(factory, tuned=None, fixed=None, **kwargs):
    spec, optimizer_kwargs = optimizer_spec(factory, "a test")
    return TunedHyperparameters(spec, optimizer_kwargs, tuned, fixed=fixed, **kwargs)


def test_the_natural_knobs_start_from_the_optimizer_config():
    tuning = _tuning(functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True))
    assert tuning.names == ["log_lr", "logit_momentum"]
    assert tuning.describe(tuning.theta0) == pytest.approx({"lr": 0.1, "momentum": 0.9})
    assert tuning.fixed == {"nesterov": True}
    adamw = _tuning(functools.partial(torch.optim.AdamW, lr=3e-4, betas=(0.8, 0.99)))
    assert adamw.describe(adamw.theta0) == pytest.approx({"lr": 3e-4, "beta1": 0.8})
    assert adamw.fixed == {"beta2": 0.99, "decoupled_weight_decay": True, "weight_decay": 0.01}
    complex_momentum = _tuning(functools.partial(ComplexMomentum, lr=0.2, momentum=0.8, angle=1.0))
    assert complex_momentum.names == ["log_lr", "logit_momentum", "angle"]
    assert complex_momentum.describe(complex_momentum.theta0) == pytest.approx(
        {"lr": 0.2, "momentum": 0.8, "angle": 1.0})


def test_names_pick_the_knobs_and_a_mapping_sets_starts():
    factory = functools.partial(ComplexMomentum, lr=0.2, momentum=0.8, angle=1.0)
    assert _tuning(factory, ["lr", "angle"]).describe(_tuning(factory, ["lr", "angle"]).theta0) == \
        pytest.approx({"lr": 0.2, "angle": 1.0})
    started = _tuning(factory, {"lr": 0.05, "angle": None})
    assert started.describe(started.theta0) == pytest.approx({"lr": 0.05, "angle": 1.0})
    assert started.fixed == {"momentum": 0.8}


def test_missing_and_boundary_values():
    # No lr in the config: the class's default (torch's SGD: 1e-3); momentum 0 starts just inside (0.01).
    tuning = _tuning(functools.partial(torch.optim.SGD))
    values = tuning.describe(tuning.theta0)
    assert values["lr"] == pytest.approx(1e-3) and values["momentum"] == pytest.approx(0.01)
    assert all(math.isfinite(v) for v in tuning.theta0.tolist())


def test_bad_tuning_requests_are_refused_naming_the_key():
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match=r"invalid outer.problem.fixed: \['lr'\] \(allowed: keys that are not "
                                         r"also tuned"):
        _tuning(sgd, ["lr"], fixed={"lr": 0.3})
    with pytest.raises(ValueError, match=r"invalid outer.problem.tuned: \['angle'\] \(allowed: names among the "
                                         r"hyperparameters SGD lets an outer loop tune"):
        _tuning(sgd, ["angle"])
    with pytest.raises(ValueError, match=r"invalid outer.problem.tuned.momentum: 1.5"):
        _tuning(sgd, {"momentum": 1.5})
    with pytest.raises(ValueError, match=r"invalid optimizer: 'LBFGS' \(a test needs an optimizer with a "
                                         r"functional core"):
        _tuning(functools.partial(torch.optim.LBFGS, lr=1.0))
