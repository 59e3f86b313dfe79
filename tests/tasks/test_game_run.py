"""A whole game run as an unrolled problem (GameRun): the same trajectories as the players' stateful
optimizers, differentiable in θ, and tunable by ES to the spectral-radius optimum of the bilinear game."""

import functools
import math

import pytest
import torch

from metaopt.games import spectral_radius, update_matrix
from metaopt.optim import ComplexMomentum
from metaopt.outer import GameLoop
from metaopt.tasks import BilinearGame, Game, GameRun, GANMixture, MixedGame
from metaopt.unrolled import ESSingle

pytestmark = pytest.mark.usefixtures("one_thread")


def _game_loop_distance(game, factory, steps, updates):
    torch.manual_seed(0)
    loop = GameLoop(game, factory, steps=steps, updates=updates)
    for _ in range(steps):
        loop.step()
    return loop.evaluate()["distance"]


@pytest.mark.parametrize("updates", ["simultaneous", "alternating"])
@pytest.mark.parametrize("game", [BilinearGame(dim=4, condition_number=2.0), MixedGame(dim=3)],
                         ids=["bilinear", "mixed"])
def test_a_game_run_plays_like_the_stateful_optimizers(game, updates):
    run = GameRun(game, functools.partial(ComplexMomentum, lr=0.2, momentum=0.7, angle=0.6), horizon=40,
                  updates=updates)
    theta = run.initial_theta()
    setting = run.describe(theta)  # the float32 θ's values, which the stateful run must use too
    factory = functools.partial(ComplexMomentum, **setting)
    expected = _game_loop_distance(game, factory, 40, updates)
    assert run.evaluate(theta)["distance"] == pytest.approx(expected, rel=1e-9)
    assert run.theta_names == ["log_lr", "logit_momentum", "angle"]


def test_tbptt_gradient_of_a_game_run_matches_finite_differences():
    run = GameRun(BilinearGame(dim=3, condition_number=2.0), functools.partial(ComplexMomentum, lr=0.2),
                  tuned=["lr", "momentum", "angle"], horizon=50)
    theta = run.initial_theta().double()

    def loss(rows):
        _, losses, _ = run.unroll(run.init_state(1), rows[None], 10, torch.Generator().manual_seed(0))
        return losses.sum()

    rows = theta.clone().requires_grad_()
    (exact,) = torch.autograd.grad(loss(rows), rows)
    eps = 1e-6
    numeric = torch.stack([(loss(theta + eps * e) - loss(theta - eps * e)) / (2 * eps)
                           for e in torch.eye(len(theta), dtype=theta.dtype)])
    assert exact.abs().min() > 1e-3
    torch.testing.assert_close(exact, numeric, rtol=1e-5, atol=1e-7)


def test_es_single_tunes_complex_momentum_to_a_converging_rate():
    """From the paper's default β = 0.9·e^{iπ/8} (spectral radius 1.34 at lr 0.3: divergence), ES-Single on
    the mean log distance finds |β|, arg β whose update map converges (the heatmap's best is 0.984)."""
    game = BilinearGame(dim=4, condition_number=2.0)
    run = GameRun(game, functools.partial(ComplexMomentum, lr=0.3, momentum=0.9, angle=math.pi / 8),
                  tuned=["momentum", "angle"], horizon=200)
    estimator = ESSingle(run, 32, sigma=0.1, truncation_length=20, seed=0)
    theta = torch.nn.Parameter(run.initial_theta())
    outer = torch.optim.Adam([theta], lr=0.03)
    for _ in range(300):
        theta.grad, _ = estimator.estimate(theta.detach())
        outer.step()

    def radius(values):
        return spectral_radius(update_matrix(game.jacobian(), 0.3, values["momentum"], values["angle"]))

    start, tuned = radius(run.describe(run.initial_theta())), radius(run.describe(theta.detach()))
    assert start > 1.3 and tuned < 0.999, (start, tuned)


def test_a_stochastic_game_gives_every_particle_the_same_draws():
    run = GameRun(GANMixture(hidden_sizes=(8,), batch_size=16), functools.partial(torch.optim.Adam, lr=1e-3),
                  horizon=5)
    rows = run.initial_theta()[None].expand(3, -1)
    with torch.no_grad():
        _, losses, _ = run.unroll(run.init_state(3), rows, 3, torch.Generator().manual_seed(1))
    assert torch.isfinite(losses).all()
    torch.testing.assert_close(losses[:, 0], losses[:, 1], rtol=1e-6, atol=0)
    assert run.theta_names == ["log_lr", "logit_beta1"]  # Adam's natural knobs; the players share them


def test_a_game_without_a_meta_loss_is_refused_clearly():
    class NoMetaLoss(BilinearGame):
        meta_loss = Game.meta_loss

    run = GameRun(NoMetaLoss(dim=2), functools.partial(ComplexMomentum, lr=0.1), horizon=5)
    with pytest.raises(NotImplementedError, match="defines no meta_loss"):
        run.evaluate(run.initial_theta())


def test_a_stochastic_game_run_draws_once_per_round_as_game_step_does():
    """Both players' gradients come from one draw of the GAN's data per round (the stateful loop's
    ``game_step``), so a one-particle run follows GameLoop on the same generator."""
    game = GANMixture(hidden_sizes=(8,), batch_size=16)
    run = GameRun(game, functools.partial(torch.optim.SGD, lr=0.05), tuned=["lr"], horizon=50)
    state, _, _ = run.unroll(run.init_state(1), run.initial_theta()[None], 5, torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    loop = GameLoop(game, functools.partial(torch.optim.SGD, **run.describe(run.initial_theta())), steps=5,
                    generator=torch.Generator().manual_seed(3))
    for _ in range(5):
        loop.step()
    expected = [p.detach() for player in loop.players.values() for p in player.parameters()]
    for ours, theirs in zip(state["params"], expected):
        torch.testing.assert_close(ours[0], theirs, rtol=1e-5, atol=1e-6)
