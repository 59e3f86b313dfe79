"""The unrolled outer loop through the runner's configs: every estimator config runs, resume is exact,
and two gloo processes reproduce the single-process run."""

import io
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from metaopt.tasks import TrainingRun

CONF = str(Path(__file__).resolve().parents[2] / "metaopt" / "conf")
SMALL = ["outer.problem.horizon=20", "outer.estimator.truncation_length=5", "outer.steps=3",
         "outer.eval_every=0"]


# Small batched matmuls: one thread is faster, and steadier on a loaded machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def _config(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=overrides)


def _loop(cfg):
    task = instantiate(cfg.task)
    generator = torch.Generator().manual_seed(cfg.seed)
    return instantiate(cfg.outer)(task=task, optimizer=instantiate(cfg.optimizer), generator=generator)


@pytest.mark.parametrize("outer", ["tbptt", "full_es", "truncated_es", "pes", "es_single"])
def test_every_estimator_config_tunes_digits(outer, tmp_path):
    overrides = ["optimizer=sgd_momentum", f"outer={outer}", *SMALL]
    if outer == "full_es":
        overrides.remove("outer.estimator.truncation_length=5")
    loop = _loop(_config(overrides))
    assert isinstance(loop.problem, TrainingRun) and loop.problem.spec.name == "sgd"
    assert loop.problem.fixed == {"nesterov": False, "weight_decay": 0.0}  # lr, momentum are tuned
    start = loop.theta.detach().clone()
    for _ in range(loop.num_steps):
        metrics = loop.step()
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    # From lr 0.003 the meta-loss falls steeply as the learning rate grows: every estimator must raise it.
    lr_index = [i for i, name in enumerate(loop.problem.theta_names) if name.startswith("log_lr")]
    assert lr_index and bool((loop.theta.detach()[lr_index] > start[lr_index]).all())
    summary = loop.summary()
    assert {"val_accuracy", "start.val_accuracy", "theta.momentum"} <= set(summary)
    assert [p.name for p in loop.plots(tmp_path)] == ["unrolled.png"]
    table = (tmp_path / "comparison.md").read_text()
    assert table.count("\n") == 4
    K = loop.estimator.truncation_length or loop.problem.horizon
    spent = 3 * loop.estimator.num_particles * K + (3 * K if outer == "truncated_es" else 0)
    assert loop.steps_spent == spent and summary["steps_spent"] == spent and summary["start.steps_spent"] == 0
    assert table.splitlines()[0].startswith("|  | setting | steps_spent |")
    assert "| tuned | " in table and f"| {spent:,} |" in table


def test_comparison_table_says_what_each_row_cost(tmp_path):
    """start: nothing spent; the grid: every point's whole run; tuned: the estimator's particle-steps."""
    loop = _loop(_config(["optimizer=sgd", "outer=es_single", *SMALL, "outer.estimator.num_particles=4",
                          "outer.grid={lr:[0.01,0.1,1.0],momentum:[0.0,0.9]}"]))
    for _ in range(loop.num_steps):
        metrics = loop.step()
    assert metrics["steps_spent"] == 3 * 4 * 5
    summary = loop.summary()
    assert summary["start.steps_spent"] == 0 and summary["grid_best.steps_spent"] == 6 * 20
    assert summary["steps_spent"] == 60
    loop.plots(tmp_path)
    rows = {line.split("|")[1].strip(): line.split("|")[3].strip()
            for line in (tmp_path / "comparison.md").read_text().splitlines()[2:]}
    assert rows == {"start": "0", "grid_best": "120", "tuned": "60"}


def test_synthetic_tasks_run_through_the_configs():
    loop = _loop(_config(["+experiment=influence_balancing", "outer=es_single", "outer.steps=2"]))
    assert loop.estimator.num_particles == 1000 and loop.estimator.truncation_length == 1
    loop.step()
    assert set(loop.evaluate()) == {"distance_to_optimum"}
    loop = _loop(_config(["task=toy2d_schedule", "outer=pes", "outer.steps=2"]))
    loop.step()
    assert "meta_objective" in loop.summary()


def _round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("outer", ["pes", "es_single", "truncated_es", "tbptt"])
def test_resume_is_exact(outer):
    cfg = _config(["optimizer=sgd", f"outer={outer}", *SMALL])
    straight = _loop(cfg)
    for _ in range(5):
        straight.step()
    first = _loop(cfg)
    for _ in range(2):
        first.step()
    state = _round_trip(first.state_dict())
    first.step()  # the killed run went on a little; the resumed one must not notice
    resumed = _loop(cfg)
    resumed.load_state_dict(state)
    for _ in range(3):
        resumed.step()
    assert torch.equal(resumed.theta, straight.theta)
    assert torch.equal(resumed.outer_optimizer.state_dict()["state"][0]["exp_avg"],
                       straight.outer_optimizer.state_dict()["state"][0]["exp_avg"])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank, world_size, port, overrides, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    try:
        loop = _loop(_config(overrides))  # joins the gloo group from the environment
        assert loop.estimator.local_particles == loop.estimator.num_particles // world_size
        metrics = [loop.step() for _ in range(3)]
        torch.save((loop.theta.detach().clone(), metrics), Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process(tmp_path):
    overrides = ["optimizer=sgd", "outer=pes", "outer.estimator.num_particles=8", *SMALL]
    single = _loop(_config(overrides))
    expected = [single.step() for _ in range(3)]
    mp.start_processes(_distributed_worker, args=(2, _free_port(), overrides, str(tmp_path)), nprocs=2,
                       start_method="spawn")
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    for theta, metrics in results:
        torch.testing.assert_close(theta, single.theta.detach(), rtol=1e-5, atol=1e-6)
        for got, want in zip(metrics, expected):
            assert got["unroll_loss"] == pytest.approx(want["unroll_loss"], rel=1e-5)
            # ε(L⁺ − L⁻) cancels most digits: batch-size-dependent matmul rounding shows at ~1e-4.
            assert got["estimate_norm"] == pytest.approx(want["estimate_norm"], rel=1e-3)
    # θ is bit-identical across ranks: both applied the same all-reduced estimate.
    assert torch.equal(results[0][0], results[1][0])


def test_runner_resumes_a_killed_run_exactly(tmp_path):
    """A run killed after step 2 (its last checkpoint at step 1) and resumed with ``resume=<folder>`` ends
    where an uninterrupted run ends (θ, particles, accumulators, generators, Adam state all restored)."""
    from metaopt.run import run

    common = ["optimizer=sgd", "outer=pes", *SMALL, "outer.steps=4", "name=resume", "logger=none",
              "progress=false", "checkpoint_every=2"]
    straight = run(_config(common), tmp_path / "straight")
    # The "killed" run: it stops after step 2; the runner checkpoints every step but the last.
    run(_config([*common, "outer.steps=2", "checkpoint_every=1"]), tmp_path / "killed")
    assert (tmp_path / "killed" / "checkpoint.pt").exists()
    resumed = run(_config([*common, f"resume={tmp_path / 'killed'}"]), tmp_path / "unused")
    for key in ("theta.lr_start", "theta.lr_end", "theta.momentum", "val_loss"):
        assert resumed[key] == straight[key]
