"""The outer loop: checkpoint/resume, the runner, the configs."""

import functools
import json
import math
from pathlib import Path

import pytest
import torch

from metaopt.bilevel import ImplicitCG, Unroll
from metaopt.outer import BilevelLoop
from tests.bilevel._problems import LeastSquares, MinibatchLeastSquares

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode", ["cold_start", "warm_start"])
def test_resume_is_exact(mode, tmp_path):
    """Minibatched inner steps: the resumed loop must also continue the generator's stream."""
    def make(seed=0):
        return BilevelLoop(MinibatchLeastSquares(), optimizer=functools.partial(torch.optim.Adam, lr=0.05),
                           mode=mode, hypergradient=Unroll(), steps=6, inner_steps=10,
                           generator=torch.Generator().manual_seed(seed))

    reference = make()
    for _ in range(6):
        reference.step()
    first = make()
    for _ in range(3):
        first.step()
    torch.save(first.state_dict(), tmp_path / "loop.pt")
    saved = torch.load(tmp_path / "loop.pt", weights_only=True)
    resumed = make()
    resumed.load_state_dict(saved)
    for _ in range(3):
        resumed.step()
    assert torch.equal(resumed.outer_params[0], reference.outer_params[0])
    assert torch.equal(resumed.state.params[0], reference.state.params[0])
    other_stream = make(seed=1)  # the minibatches matter: another stream ends elsewhere
    for _ in range(6):
        other_stream.step()
    assert not torch.allclose(other_stream.outer_params[0], reference.outer_params[0])


def test_cold_start_outer_loop_reaches_the_closed_form_optimum():
    # F(λ) = ½‖C w*(λ) − c‖² + ½ρ‖λ‖² is a convex quadratic in λ: gradient descent on the exact
    # hypergradient converges to its minimiser.
    problem = LeastSquares(ridge=3.0)  # outer Hessian eigenvalues in [3.2, 17.2]
    loop = BilevelLoop(problem, optimizer=functools.partial(torch.optim.SGD, lr=1.0 / problem.hessian_bound),
                       mode="cold_start", hypergradient=ImplicitCG(8, least_squares=True), steps=50,
                       inner_steps=600, tolerance=1e-11,
                       outer_optimizer=functools.partial(torch.optim.SGD, lr=0.098))
    for _ in range(50):
        loop.step()
    jac = torch.linalg.pinv(problem.A) @ problem.B
    offset = problem.w0 - torch.linalg.pinv(problem.A) @ problem.A @ problem.w0
    # minimise ½‖C(offset + Jλ) − c‖² + ½ρ‖λ‖²
    m = problem.C @ jac
    optimum = torch.linalg.solve(m.T @ m + problem.ridge * torch.eye(m.shape[1], dtype=m.dtype),
                                 m.T @ (problem.c - problem.C @ offset))
    assert torch.allclose(loop.outer_params[0].detach(), optimum, atol=1e-6)


@pytest.mark.parametrize("task,outer,extra", [
    ("digits_distill", "bilevel_cold", ["outer.steps=3", "outer.inner_steps=10"]),
    ("digits_l2", "bilevel_warm", ["outer.steps=3", "outer/hypergradient=unroll"]),
    ("digits_augment", "bilevel_cold", ["outer.steps=2", "outer.inner_steps=5",
                                        "outer/hypergradient=ift_neumann"]),
])
def test_runner_writes_both_outer_losses(tmp_path, task, outer, extra):
    from hydra import compose, initialize_config_dir

    from metaopt.run import run

    overrides = [f"task={task}", "optimizer=sgd", f"outer={outer}", "logger=none", "progress=false",
                 "name=test", *extra]
    with initialize_config_dir(config_dir=str(ROOT / "metaopt" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    run(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("outer_loss", "retrain_outer_loss", "test_accuracy", "retrain_test_accuracy"):
        assert math.isfinite(summary[key])
    # (outer_loss is at the inner weights trained on the λ before the last outer step, retrain_* on the
    # final λ, so the two differ even in cold start.)
    assert (tmp_path / "distilled.png").exists() == (task == "digits_distill")
