"""Meta-training a learned optimizer: the unrolled problem, its particles, and the command line."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from metaopt.optim import LearnedOptimizer
from metaopt.optim.functional.learned import NUM_FEATURES, initial_weights, num_weights
from metaopt.tasks.lopt import LearnedOptimizerTraining, digits_tasks
from metaopt.tasks.unrolled.training_run import stream_batches
from metaopt.unrolled import PES, TBPTT

CONF = Path(__file__).resolve().parents[2] / "metaopt" / "conf"
pytestmark = pytest.mark.usefixtures("one_thread")  # small batched matmuls: one thread is faster


TIMESCALES_ELSEWHERE = [2, 7, 50, 400]  # not the default: particles must run on the problem's own


@pytest.fixture(scope="module")
def problem():
    return LearnedOptimizerTraining(horizon=6, hidden=[8], timescales=TIMESCALES_ELSEWHERE)


def _theta(problem, scale=0.3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(problem.dim, generator=generator) * scale / NUM_FEATURES ** 0.5
    return initial_weights(problem.hidden, generator) + noise


def test_a_particle_is_a_training_run_with_the_drop_in_optimizer(problem):
    theta = _theta(problem)
    for k in (0, 4, 6):  # an MLP, the conv net, the linear regression
        state = problem.init_state(1)
        state["rows"][0], state["norm"][0] = problem.start(k, seed=7)
        state["task"][0] = k
        state, losses, resets = problem.unroll(state, theta[None], 4, torch.Generator().manual_seed(1))

        task = problem.tasks[k].task
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            model = task.build_model()
        opt = LearnedOptimizer(model.parameters(), weights=theta, hidden=[8], timescales=TIMESCALES_ELSEWHERE)
        generator, expected = torch.Generator().manual_seed(1), []
        for _ in range(4):
            inputs, targets = stream_batches(task, "train", task.batch_size, generator, torch.tensor([0]), 1)
            opt.zero_grad()
            loss = task.loss(model(inputs[0]), targets[0])
            loss.backward()
            opt.step()
            expected.append(float(loss.detach()) / float(state["norm"][0]))
        torch.testing.assert_close(losses[:, 0], torch.tensor(expected), rtol=1e-4, atol=1e-6)
        params, _, _ = problem.layouts[k].split(state["rows"])
        for mine, theirs in zip(params, model.parameters()):
            torch.testing.assert_close(mine[0], theirs.detach(), rtol=1e-4, atol=1e-6)
        assert not resets.any()


def test_partners_share_tasks_and_every_run_draws_a_new_one(problem):
    theta = _theta(problem)[None].expand(8, -1)
    streams = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    state = problem.init_state(8)
    tasks = []
    for _ in range(4):  # 4 × 3 steps: two whole runs of horizon 6
        state, losses, resets = problem.unroll(state, theta, 3, torch.Generator().manual_seed(0), streams, 4)
        tasks.append(state["task"].clone())
        assert torch.equal(state["task"][0::2], state["task"][1::2])
        assert torch.isfinite(losses).all()
    assert state["episode"].tolist() == [2] * 8  # two runs ended (at steps 6 and 12)
    assert not torch.equal(tasks[1], tasks[2]) or not torch.equal(tasks[0], tasks[3])
    assert len(torch.cat(tasks).unique()) > 1


def test_the_state_survives_a_weights_only_checkpoint(problem, tmp_path):
    theta = _theta(problem)[None].expand(2, -1)
    state, _, _ = problem.unroll(problem.init_state(2), theta, 2, torch.Generator().manual_seed(0))
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    _, a, _ = problem.unroll(loaded, theta, 3, torch.Generator().manual_seed(5))
    _, b, _ = problem.unroll(state, theta, 3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_tbptt_differentiates_the_unroll_in_the_weights(problem):
    state = problem.init_state(1)
    state["rows"][0], state["norm"][0] = problem.start(0, seed=3)
    state["task"][0] = 0
    theta = _theta(problem).requires_grad_()

    def unroll_loss(t):
        _, losses, _ = problem.unroll(state, t[None], 3, torch.Generator().manual_seed(2))
        return losses.sum()

    (gradient,) = torch.autograd.grad(unroll_loss(theta), theta)
    direction = torch.randn(problem.dim, generator=torch.Generator().manual_seed(4))
    eps = 1e-2
    with torch.no_grad():
        numeric = (unroll_loss(theta + eps * direction) - unroll_loss(theta - eps * direction)) / (2 * eps)
    assert float(gradient @ direction) == pytest.approx(float(numeric), rel=0.05)
    estimate, info = TBPTT(problem, num_particles=2, truncation_length=3).estimate(theta.detach())
    assert torch.isfinite(estimate).all() and estimate.abs().sum() > 0


def test_pes_meta_training_lowers_the_meta_loss():
    tasks = [t for t in digits_tasks("train") if t.name in ("mlp_tanh_32_b32", "linreg_20_cond100")]
    problem = LearnedOptimizerTraining(tasks, horizon=20, hidden=[8])
    estimator = PES(problem, num_particles=8, truncation_length=10, sigma=0.03)
    theta = torch.nn.Parameter(problem.initial_theta())
    optimizer = torch.optim.Adam([theta], lr=0.03)
    start = problem.evaluate(theta.detach())["meta_objective"]
    for _ in range(10):
        gradient, _ = estimator.estimate(theta.detach())
        optimizer.zero_grad()
        theta.grad = gradient
        optimizer.step()
    assert problem.evaluate(theta.detach())["meta_objective"] < start - 0.05


def test_meta_training_from_the_command_line_ships_a_drop_in_optimizer(tmp_path):
    from metaopt.run import run

    overrides = ["task=lopt_digits", "outer=pes", "task.horizon=6", "task.hidden=[8]", "outer.steps=2",
                 "outer.eval_every=0", "outer.estimator.num_particles=4", "outer.estimator.truncation_length=3",
                 "outer.grid=null", "logger=none", "progress=false", "name=lopt"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    summary = run(cfg, tmp_path)
    assert summary["steps"] == 2 and "meta_objective" in summary
    opt = LearnedOptimizer(torch.nn.Linear(3, 1).parameters(), weights=tmp_path / "learned_optimizer.pt")
    assert opt.param_groups[0]["weights"].numel() == num_weights([8])
    assert opt.meta["tasks"] == [t.name for t in digits_tasks("train")]


def test_the_log_meta_loss_is_the_log_of_the_floored_clipped_normalised_loss():
    tasks = [t for t in digits_tasks("train") if t.name == "mlp_tanh_32_b32"]
    linear = LearnedOptimizerTraining(tasks, horizon=5, hidden=[8], initial_lr=0.01)
    log = LearnedOptimizerTraining(tasks, horizon=5, hidden=[8], initial_lr=0.01, meta_loss="log", loss_floor=0.5)
    default = initial_weights([8], torch.Generator().manual_seed(0))
    assert torch.equal(linear.theta0, log.theta0) and not torch.equal(linear.theta0, default)
    normalised = torch.tensor([0.1, 0.7, 1.0, 5.0])
    torch.testing.assert_close(linear._meta_loss(normalised), torch.tensor([0.1, 0.7, 1.0, 3.0]))
    torch.testing.assert_close(log._meta_loss(normalised), torch.tensor([0.5, 0.7, 1.0, 3.0]).log())
    state = linear.init_state(2)
    theta = linear.initial_theta()[None].expand(2, -1)
    _, losses_linear, _ = linear._unroll(state, theta, 3, torch.Generator().manual_seed(0), torch.arange(2), 2)
    _, losses_log, _ = log._unroll(state, theta, 3, torch.Generator().manual_seed(0), torch.arange(2), 2)
    torch.testing.assert_close(losses_log, losses_linear.clamp(min=0.5).log())


def test_an_annealed_start_is_the_optimizers_annealed_weights_and_saves_its_timescales(tmp_path):
    tasks = [t for t in digits_tasks("train") if t.name == "mlp_tanh_32_b32"]
    problem = LearnedOptimizerTraining(tasks, horizon=40, hidden=[8], form="adam", initial_lr=0.02, final_lr=0.003,
                                       decay_from=20, timescales=[1, 5, 20, 40])
    expected = initial_weights([8], torch.Generator().manual_seed(0), lr=0.02, final_lr=0.003, decay=(20, 40),
                               form="adam", timescales=[1, 5, 20, 40])
    assert torch.equal(problem.initial_theta(), expected)
    opt = LearnedOptimizer(torch.nn.Linear(3, 1).parameters(), weights=problem.save(expected, tmp_path))
    assert opt.param_groups[0]["timescales"] == (1.0, 5.0, 20.0, 40.0) and opt.param_groups[0]["form"] == "adam"
    again = LearnedOptimizerTraining(tasks, horizon=40, hidden=[8], form="adam",
                                     weights=tmp_path / "learned_optimizer.pt")
    assert again.timescales == (1.0, 5.0, 20.0, 40.0) and torch.equal(again.initial_theta(), expected)


def test_bad_input():
    with pytest.raises(ValueError, match=r"invalid task\.horizon: 0"):
        LearnedOptimizerTraining(horizon=0)
    with pytest.raises(ValueError, match=r"invalid task\.meta_loss: 'mean' \(allowed: one of \('linear', 'log'\)"):
        LearnedOptimizerTraining(meta_loss="mean")
    with pytest.raises(ValueError, match=r"invalid task\.loss_floor: 5"):
        LearnedOptimizerTraining(loss_floor=5)
    with pytest.raises(ValueError, match=r"invalid task\.initial_lr: 0"):
        LearnedOptimizerTraining(initial_lr=0)
    with pytest.raises(ValueError, match=r"invalid tasks: 'validation' \(allowed: one of \('train', 'test'\)"):
        LearnedOptimizerTraining(tasks="validation")
    with pytest.raises(ValueError, match=r"invalid task\.hidden: \[0\]"):
        LearnedOptimizerTraining(hidden=[0])
    with pytest.raises(ValueError, match=r"invalid task\.final_lr: 0\.003 \(allowed: None, or a number > 0 with "
                                         r"task\.form=adam\)"):
        LearnedOptimizerTraining(final_lr=0.003)
    with pytest.raises(ValueError, match=r"invalid task\.decay_from: 200 \(allowed: an integer step from 0 to"):
        LearnedOptimizerTraining(form="adam", final_lr=0.003, decay_from=200)
    with pytest.raises(ValueError, match=r"invalid task\.timescales: \[1, 2\] \(allowed: 4 positive numbers"):
        LearnedOptimizerTraining(timescales=[1, 2])


def test_meta_training_is_reproducible_from_its_seed():
    """Same seeds, same weights, bit for bit: the shipped weights are reproducible from their run."""
    tasks = [t for t in digits_tasks("train") if t.name in ("mlp_tanh_32_b32", "conv8_relu_b64")]
    thetas = []
    for _ in range(2):
        problem = LearnedOptimizerTraining(tasks, horizon=8, hidden=[8])
        estimator = PES(problem, num_particles=4, truncation_length=4, sigma=0.03, seed=5)
        theta = torch.nn.Parameter(problem.initial_theta())
        optimizer = torch.optim.Adam([theta], lr=0.03)
        for _ in range(4):
            gradient, _ = estimator.estimate(theta.detach())
            optimizer.zero_grad()
            theta.grad = gradient
            optimizer.step()
        thetas.append(theta.detach().clone())
    assert torch.equal(thetas[0], thetas[1]) and not torch.equal(thetas[0], problem.initial_theta())
