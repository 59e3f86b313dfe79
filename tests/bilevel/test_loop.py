"""The outer loop: checkpoint/resume, the runner, the configs."""

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metaopt.bilevel import BilevelLoop, ImplicitCG, Unroll
from tests.bilevel._problems import LeastSquares

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode", ["cold_start", "warm_start"])
def test_resume_is_exact(mode):
    def make():
        return BilevelLoop(LeastSquares(), optimizer=functools.partial(torch.optim.Adam, lr=0.05), mode=mode,
                           hypergradient=Unroll(), outer_steps=6, inner_steps=10)

    reference = make()
    for _ in range(6):
        reference.step()
    first = make()
    for _ in range(3):
        first.step()
    saved = first.state_dict()
    torch.save(saved, "/dev/null")
    resumed = make()
    resumed.load_state_dict(saved)
    for _ in range(3):
        resumed.step()
    assert torch.equal(resumed.outer_params[0], reference.outer_params[0])
    assert torch.equal(resumed.state.params[0], reference.state.params[0])


def test_cold_start_outer_loop_reaches_the_closed_form_optimum():
    # F(λ) = ½‖C w*(λ) − c‖² + ½ρ‖λ‖² is a convex quadratic in λ: gradient descent on the exact
    # hypergradient converges to its minimiser.
    problem = LeastSquares(ridge=1.0)  # outer Hessian eigenvalues in [1.2, 15.2]
    loop = BilevelLoop(problem, optimizer=functools.partial(torch.optim.SGD, lr=1.0 / problem.hessian_bound),
                       mode="cold_start", hypergradient=ImplicitCG(8, least_squares=True), outer_steps=120,
                       inner_steps=600, tolerance=1e-11,
                       outer_optimizer=functools.partial(torch.optim.SGD, lr=0.12))
    for _ in range(120):
        loop.step()
    jac = torch.linalg.pinv(problem.A) @ problem.B
    offset = problem.w0 - torch.linalg.pinv(problem.A) @ problem.A @ problem.w0
    # minimise ½‖C(offset + Jλ) − c‖² + ½ρ‖λ‖²
    m = problem.C @ jac
    optimum = torch.linalg.solve(m.T @ m + problem.ridge * torch.eye(m.shape[1], dtype=m.dtype),
                                 m.T @ (problem.c - problem.C @ offset))
    assert torch.allclose(loop.outer_params[0].detach(), optimum, atol=1e-6)


@pytest.mark.parametrize("task,outer,extra", [
    ("digits_distill", "bilevel_cold", ["outer.outer_steps=3", "outer.inner_steps=10"]),
    ("digits_l2", "bilevel_warm", ["outer.outer_steps=3", "outer/hypergradient=unroll"]),
    ("digits_augment", "bilevel_cold", ["outer.outer_steps=2", "outer.inner_steps=5",
                                        "outer/hypergradient=ift_neumann"]),
])
def test_runner_writes_both_outer_losses(tmp_path, task, outer, extra):
    command = [sys.executable, "-m", "metaopt.run", f"task={task}", "optimizer=sgd", f"outer={outer}",
               "logger=none", "progress=false", f"hydra.run.dir={tmp_path}", *extra]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, env={"PYTHONPATH": str(ROOT),
                                                                          "OMP_NUM_THREADS": "1",
                                                                          "WANDB_MODE": "disabled",
                                                                          "PATH": "/usr/bin:/bin"})
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("outer_loss", "retrain_outer_loss", "test_accuracy", "retrain_test_accuracy"):
        assert key in summary
