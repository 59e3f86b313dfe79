"""Exactness, unbiasedness, divergence handling and argument checks of the unrolled estimators."""

import pytest
import torch

from metaopt.tasks import InfluenceBalancing, Toy2DSchedule, TrainingRun
from metaopt.unrolled import PES, TBPTT, ESSingle, FullES, TruncatedES, UnrolledProblem
from tests.unrolled.conftest import assert_particle_equals, one_particle, torch_replay


def _training_run(task, horizon=6):
    return TrainingRun(task, "sgd", tuned={"lr": 0.05, "momentum": 0.5}, schedule="linear", horizon=horizon)


@pytest.mark.parametrize("make_problem", ["linear", "training"])
def test_pes_with_one_truncation_per_problem_equals_full_es(make_problem, digits_task, linear_quadratic):
    problem = linear_quadratic if make_problem == "linear" else _training_run(digits_task)
    theta = problem.initial_theta()
    T = problem.horizon
    pes = PES(problem, 8, sigma=0.1, truncation_length=T, seed=3, stagger=False)
    full = FullES(problem, 8, sigma=0.1, seed=3)
    for _ in range(2):  # the second call starts from the reset states with a zeroed accumulator
        g_pes, info_pes = pes.estimate(theta)
        g_full, info_full = full.estimate(theta)
        torch.testing.assert_close(g_pes, g_full, rtol=1e-5, atol=1e-6)
        assert info_pes["loss"] == pytest.approx(info_full["loss"], rel=1e-5)
    assert (pes.accumulator == 0).all()


@pytest.mark.parametrize("make_problem", ["linear", "training"])
def test_es_single_estimates_sum_to_full_es(make_problem, digits_task, linear_quadratic):
    problem = linear_quadratic if make_problem == "linear" else _training_run(digits_task)
    theta = problem.initial_theta()
    K = 2
    single = ESSingle(problem, 8, sigma=0.1, truncation_length=K, seed=5, stagger=False)
    full = FullES(problem, 8, sigma=0.1, truncation_length=K, seed=5)
    for _ in range(2):  # a second inner problem, with freshly sampled ε
        total = sum(single.estimate(theta)[0] for _ in range(problem.horizon // K))
        torch.testing.assert_close(total, full.estimate(theta)[0], rtol=1e-4, atol=1e-5)


def _mean_estimates(estimator, theta, num_truncations):
    return torch.stack([estimator.estimate(theta)[0] for _ in range(num_truncations)])


@pytest.mark.parametrize("estimator", [PES, ESSingle])
def test_unbiased_on_linear_quadratic_problem(estimator, linear_quadratic):
    """E[ĝ_τ] = dL^(τ)/dθ through the whole unroll, truncation by truncation (autograd reference)."""
    problem, K = linear_quadratic, 2
    theta = problem.initial_theta()
    exact = torch.autograd.functional.jacobian(lambda t: problem.truncation_losses(t, K), theta)
    est = estimator(problem, 40000, sigma=0.05, truncation_length=K, seed=0, stagger=False)
    means = _mean_estimates(est, theta, problem.horizon // K)
    error = (means - exact).norm(dim=1) / exact.norm(dim=1)
    assert error.max() < 0.05, (means, exact)


def test_truncated_es_is_biased_on_the_same_problem(linear_quadratic):
    """The same check fails for truncated ES: it ignores θ's effect on the state a truncation starts from."""
    problem, K = linear_quadratic, 2
    theta = problem.initial_theta()
    exact = torch.autograd.functional.jacobian(lambda t: problem.truncation_losses(t, K), theta)
    means = _mean_estimates(TruncatedES(problem, 40000, sigma=0.05, truncation_length=K), theta, 3)
    assert ((means[1:] - exact[1:]).norm(dim=1) / exact[1:].norm(dim=1)).min() > 0.2


def test_tbptt_with_full_truncation_is_exact(linear_quadratic):
    problem = linear_quadratic
    theta = problem.initial_theta()
    exact = torch.func.grad(lambda t: problem.truncation_losses(t, problem.horizon).sum())(theta)
    g, _ = TBPTT(problem, 1, truncation_length=problem.horizon, stagger=False).estimate(theta)
    torch.testing.assert_close(g, exact)


def test_pes_reset_inside_a_truncation_is_unbiased(linear_quadratic):
    """T=6, K=4: the second truncation straddles a reset (losses before it use ξ+ε, after it ε)."""
    problem = linear_quadratic
    theta = problem.initial_theta()

    def losses(t):
        _, out, _ = problem._unroll(problem.init_state(1), t[None], 12, None, None, 0)
        return out[:, 0].reshape(3, 4).sum(1)

    exact = torch.autograd.functional.jacobian(losses, theta)
    means = _mean_estimates(PES(problem, 40000, sigma=0.05, truncation_length=4, stagger=False), theta, 3)
    assert ((means - exact).norm(dim=1) / exact.norm(dim=1)).max() < 0.05


def _influence_balancing(estimator, steps, lr=1e-4, **kwargs):
    problem = InfluenceBalancing()
    theta = problem.initial_theta()
    est = estimator(problem, **kwargs)
    losses = []
    for _ in range(steps):
        g, info = est.estimate(theta)
        theta = theta - lr * g
        losses.append(info["loss"])
    return float(theta), losses


@pytest.mark.parametrize("estimator", [PES, ESSingle])
def test_influence_balancing_pes_and_es_single_converge(estimator):
    theta, _ = _influence_balancing(estimator, 3000, num_particles=1000, sigma=0.1, truncation_length=1)
    assert abs(theta + 1 / 6) < 1e-3


@pytest.mark.parametrize("estimator,kwargs", [
    (TBPTT, dict(num_particles=1, truncation_length=1)),
    (TruncatedES, dict(num_particles=1000, sigma=0.1, truncation_length=1)),
])
def test_influence_balancing_short_horizon_bias_makes_the_loss_grow(estimator, kwargs):
    theta, losses = _influence_balancing(estimator, 1000, **kwargs)
    assert theta > 0.5 and losses[-1] > 10 * losses[0]


def test_influence_balancing_tbptt_long_truncation_converges():
    theta, _ = _influence_balancing(TBPTT, 400, lr=1e-3, num_particles=1, truncation_length=100)
    assert abs(theta + 1 / 6) < 1e-3


class _Explodes(UnrolledProblem):
    """Loss θ² per particle, NaN where θ > 1."""

    dim, horizon = 1, None

    def initial_theta(self):
        return torch.zeros(1)

    def init_state(self, num_particles, steps=None):
        return {"step": torch.zeros(num_particles, dtype=torch.long)}

    def _unroll(self, state, theta, num_steps, generator, streams, num_streams):
        loss = torch.where(theta[:, 0] > 1, torch.nan, theta[:, 0] ** 2)
        return state, loss.expand(num_steps, -1), torch.zeros(num_steps, loss.numel(), dtype=torch.bool)


@pytest.mark.parametrize("estimator", [PES, ESSingle, TruncatedES])
def test_diverged_particles_are_dropped_and_counted(estimator):
    est = estimator(_Explodes(), 64, sigma=1.0, truncation_length=1, seed=0)
    g, info = est.estimate(torch.zeros(1))
    assert torch.isfinite(g).all()
    assert info["num_diverged"] == int(info["diverged"].sum()) > 0
    # Pairs are dropped together: both partners are marked.
    half = info["diverged"].numel() // 2
    assert torch.equal(info["diverged"][:half], info["diverged"][half:])


def test_toy2d_is_chaotic_and_es_smooths_it():
    """Along θ₀ = θ₁ ∈ [0, 2] (large learning rates) the meta-loss swings through its range many times
    over (total variation > 10× the range), while its Gaussian smoothing, the objective that ES
    estimates (σ = 0.3, common random numbers), varies at least 5× less; a better point than the
    start exists."""
    problem = Toy2DSchedule()
    line = torch.linspace(0.0, 2.0, 400)
    thetas = torch.stack([line, line], -1)
    values = problem.meta_loss(thetas)
    assert torch.isfinite(values).all() and values.min() < problem.meta_loss(problem.initial_theta()[None])[0]
    variation = float(values.diff().abs().sum())
    assert variation > 10 * float(values.max() - values.min())
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    smoothed = problem.meta_loss((thetas[:, None] + 0.3 * noise).reshape(-1, 2)).reshape(400, 256).mean(1)
    assert float(smoothed.diff().abs().sum()) < variation / 5


@pytest.mark.parametrize("estimator", [PES, ESSingle, TruncatedES, FullES])
def test_bad_arguments(estimator, linear_quadratic):
    with pytest.raises(ValueError, match="sigma"):
        estimator(linear_quadratic, 4, sigma=0.0, truncation_length=2)
    with pytest.raises(ValueError, match="sigma"):
        estimator(linear_quadratic, 4, sigma=-1.0, truncation_length=2)
    with pytest.raises(ValueError, match="num_particles"):
        estimator(linear_quadratic, 5, sigma=0.1, truncation_length=2, antithetic=True)
    with pytest.raises(ValueError, match="truncation_length"):
        estimator(linear_quadratic, 4, sigma=0.1, truncation_length=7)
    est = estimator(linear_quadratic, 4, sigma=0.1, truncation_length=2)
    for theta in (torch.zeros(2), torch.zeros(1, 3)):
        with pytest.raises(ValueError, match="theta"):
            est.estimate(theta)


def test_es_single_needs_truncations_that_divide_the_horizon(linear_quadratic):
    with pytest.raises(ValueError, match="divisor"):
        ESSingle(linear_quadratic, 4, sigma=0.1, truncation_length=4)
    ESSingle(linear_quadratic, 5, sigma=0.1, truncation_length=3, antithetic=False)


def test_staggered_particles_start_spread_over_the_horizon(linear_quadratic):
    est = PES(linear_quadratic, 200, sigma=0.1, truncation_length=2, seed=0)
    steps = est.state["step"]
    assert set(steps.tolist()) == {0, 2, 4}
    assert torch.equal(steps[:100], steps[100:])  # antithetic partners stay in lockstep


def test_pes_accumulator_restarts_at_resets(linear_quadratic):
    """T=6, K=4, lockstep: ξ = ε₁; then a reset after the 2nd step of truncation 2 leaves ξ = ε₂ (the new
    inner problem saw only ε₂); truncation 3 ends exactly at a reset, so ξ = 0."""
    pes = PES(linear_quadratic, 6, sigma=0.1, truncation_length=4, seed=7, stagger=False)
    generator = torch.Generator().manual_seed(7)
    draws = [0.1 * torch.randn(3, 3, generator=generator) for _ in range(2)]
    theta = linear_quadratic.initial_theta()
    pes.estimate(theta)
    torch.testing.assert_close(pes.accumulator, torch.cat([draws[0], -draws[0]]))
    _, info = pes.estimate(theta)
    assert info["resets"].all()
    torch.testing.assert_close(pes.accumulator, torch.cat([draws[1], -draws[1]]))
    pes.estimate(theta)
    assert (pes.accumulator == 0).all()


def test_training_run_particle_losses_match_the_task_loss(digits_task):
    problem = _training_run(digits_task)
    state = problem.init_state(3)
    state["params"] = [p + 0.1 * torch.randn_like(p) for p in state["params"]]
    inputs, targets = digits_task.data.val
    losses = problem.particle_losses(state["params"], inputs[:50].expand(3, -1, -1),
                                     targets[:50].expand(3, -1))
    for i in range(3):
        with torch.no_grad():
            for p, value in zip(problem.model.parameters(), state["params"]):
                p.copy_(value[i])
        expected = digits_task.loss(problem.model(inputs[:50]), targets[:50])
        torch.testing.assert_close(losses[i], expected)


def test_training_run_particles_read_their_streams_minibatches(digits_task):
    problem = _training_run(digits_task)
    streams = torch.tensor([2, 0, 1, 2, 0, 1])
    inputs, targets = problem._batches("train", torch.Generator().manual_seed(5), streams, 3)
    data = digits_task.data.train
    index = torch.randint(len(data.inputs), (3, 64), generator=torch.Generator().manual_seed(5))
    for particle, stream in enumerate(streams):
        assert torch.equal(inputs[particle], data.inputs[index[stream]])
        assert torch.equal(targets[particle], data.targets[index[stream]])


def test_training_run_matches_torch_sgd_with_its_schedule(digits_task):
    """One particle of the vectorized TrainingRun trains as torch.optim.SGD with lr_t set at each step."""
    problem = TrainingRun(digits_task, "sgd", tuned={"lr": 0.05, "momentum": 0.5}, schedule="linear",
                          horizon=5, meta_split="train")
    theta = problem.initial_theta() + torch.tensor([0.0, -1.0, 0.0])
    state = one_particle(problem, theta, 5, seed=0)

    def set_lrs(optimizer, t):
        optimizer.param_groups[0]["lr"] = float(0.05 * (1 - t / 5) + 0.05 * torch.e**-1 * t / 5)

    model = torch_replay(problem, lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.5), 5, 0, set_lrs)
    assert_particle_equals(state, model)


def test_training_run_maps_torch_optimizer_configs(digits_task):
    import functools

    adam = functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.0,
                             foreach=None)
    problem = TrainingRun(digits_task, adam, tuned={"lr": 1e-3, "beta1": 0.8}, per_layer=["lr"], horizon=4)
    assert problem.spec.name == "adam"
    assert problem.fixed == {"beta2": 0.99, "eps": 1e-8, "weight_decay": 0.0}
    assert problem.theta_names == ["log_lr.1", "log_lr.3", "logit_beta1"]
    hyper = problem.hyperparameters(problem.initial_theta()[None], torch.zeros(1, dtype=torch.long))
    assert len(hyper["lr"]) == 4  # one per parameter tensor: weight and bias of each layer
    with pytest.raises(ValueError, match=r"invalid optimizer: 'LBFGS' \(a TrainingRun .* needs an optimizer with a "
                                         r"functional core, one of SGD, Adam, AdamW, RMSprop, Adagrad"):
        TrainingRun(digits_task, functools.partial(torch.optim.LBFGS, lr=0.1))
    with pytest.raises(ValueError, match="tuned"):
        TrainingRun(digits_task, "sgd", tuned={"betas": 0.9})
    with pytest.raises(ValueError, match="tuned.momentum"):
        TrainingRun(digits_task, "sgd", tuned={"lr": 0.1, "momentum": 1.0})


def _pes_estimates(problem, truncations=4):
    pes = PES(problem, 8, sigma=0.1, truncation_length=5, seed=0)
    return torch.stack([pes.estimate(problem.initial_theta())[0] for _ in range(truncations)])


def test_training_run_compiled_step_matches_eager(digits_task):
    """compile=True (slow: one compile) gives the eager estimates, resets included, from compiled code."""
    eager = _pes_estimates(_training_run(digits_task, horizon=10))
    problem = TrainingRun(digits_task, "sgd", tuned={"lr": 0.05, "momentum": 0.5}, schedule="linear", horizon=10,
                          compile=True)
    compiled = _pes_estimates(problem)
    # compiled and used, not the eager fallback
    assert problem._compiled_step._compiled is not None and not problem._compiled_step.failed
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=2e-5)


def test_training_run_runs_eagerly_when_compiling_fails_and_under_tbptt(digits_task, monkeypatch):
    def failing_compile(step, **options):
        def compiled(*args):
            raise RuntimeError("no C++ compiler")
        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)

    def compiled_run():
        return TrainingRun(digits_task, "sgd", tuned={"lr": 0.05, "momentum": 0.5}, schedule="linear",
                           horizon=10, compile=True)

    problem = compiled_run()
    TBPTT(problem, 2, truncation_length=5).estimate(problem.initial_theta())
    assert problem._compiled_step._compiled is None  # TBPTT differentiates through eager steps
    with pytest.warns(UserWarning, match="failed .RuntimeError: no C.. compiler.; running the eager"):
        fallback = _pes_estimates(problem)
    assert problem._compiled_step.failed
    assert torch.equal(fallback, _pes_estimates(_training_run(digits_task, horizon=10)))


@pytest.mark.parametrize("estimator", [PES, ESSingle, TruncatedES])
def test_all_particles_diverged_reports_nan_not_a_perfect_loss(estimator):
    # θ = 5 with σ = 0.01: every particle is past the cliff at θ > 1.
    est = estimator(_Explodes(), 8, sigma=0.01, truncation_length=1, seed=0)
    g, info = est.estimate(torch.full((1,), 5.0))
    assert info["num_diverged"] == 8
    assert torch.isnan(torch.tensor(info["loss"]))
    assert torch.isnan(g).all()


def test_unrolled_loop_reports_nan_when_every_particle_diverged():
    """The runner stops on the NaN ``unroll_loss`` (its NaN/Inf guard), whatever the estimate holds."""
    import functools

    from metaopt.outer import UnrolledLoop

    class PastTheCliff(_Explodes):
        def initial_theta(self):
            return torch.full((1,), 5.0)

    loop = UnrolledLoop(PastTheCliff(), functools.partial(PES, num_particles=8, sigma=0.01, truncation_length=1),
                        functools.partial(torch.optim.SGD, lr=0.1), steps=3)
    metrics = loop.step()
    assert metrics["num_diverged"] == 8 and torch.isnan(torch.tensor(metrics["unroll_loss"]))
    assert loop.theta.item() == 5.0 and not loop.outer_optimizer.state  # θ not stepped with the NaN estimate
