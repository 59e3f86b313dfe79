"""Finite-time Lyapunov exponents of update maps against closed forms, finite differences and the
spectral radius of complex momentum; the update maps of games; bad input."""

import functools
import math

import pytest
import torch

from metaopt.games import (
    GameDynamics,
    branch_directions,
    eigenpairs,
    lyapunov_exponents,
    spectral_radius,
    update_matrix,
)
from metaopt.optim import ComplexMomentum
from metaopt.tasks import BilinearGame, MixedGame

F64 = torch.float64


def test_linear_map_exponents_are_the_log_moduli_of_its_eigenvalues():
    torch.manual_seed(0)
    moduli = torch.tensor([1.3, -0.9, 0.6, 0.25, 0.1], dtype=F64)
    basis = torch.randn(5, 5, dtype=F64)
    matrix = basis @ torch.diag(moduli) @ torch.linalg.inv(basis)   # not normal: a skewed frame
    exponents = lyapunov_exponents(lambda w: matrix @ w, torch.randn(5, dtype=F64), 5, 60, transient=60)
    torch.testing.assert_close(exponents, moduli.abs().log(), rtol=0, atol=1e-6)
    # without a transient the early turning of the frame biases the average by O(1/T) only
    exponents = lyapunov_exponents(lambda w: matrix @ w, torch.randn(5, dtype=F64), 3, 150, vectorize=False)
    assert (exponents - moduli.abs().log()[:3]).abs().max() < 0.1


def test_without_reorthonormalisation_every_exponent_would_be_the_top_one():
    """The pitfall the QR step avoids: pushing two columns without QR aligns both with λ₁."""
    matrix = torch.diag(torch.tensor([2.0, 0.5], dtype=F64))
    exponents = lyapunov_exponents(lambda w: matrix @ w, torch.ones(2, dtype=F64), 2, 50)
    columns = torch.eye(2, dtype=F64) + 0.1
    for _ in range(50):
        columns = matrix @ columns
    naive = columns.norm(dim=0).log() / 50
    assert naive.min() > 0.6 and exponents[1] < -0.6


def test_gradient_descent_on_a_strongly_convex_quadratic_contracts_in_every_direction():
    game = MixedGame(dim=3, adversarial=0.0, condition_number=4.0)   # one shared quadratic, H ≻ 0
    dynamics = GameDynamics(game, functools.partial(torch.optim.SGD, lr=0.2))
    exponents = lyapunov_exponents(dynamics.update, dynamics.initial_state(), 6, 40)
    assert (exponents < 0).all()
    rates = torch.linalg.eigvalsh(game.hessian) * (1 - 0) * 0.2   # ĝ = Hω for both players together
    torch.testing.assert_close(exponents, torch.log(1 - rates).sort(descending=True).values, rtol=0, atol=1e-2)


def test_simultaneous_gda_on_xy_expands_at_half_log_one_plus_alpha_squared():
    for alpha in (0.1, 0.5):
        dynamics = GameDynamics(BilinearGame(dim=1), functools.partial(torch.optim.SGD, lr=alpha))
        assert dynamics.size == 2   # plain GDA: ω = (x, y), no buffer
        exponents = lyapunov_exponents(dynamics.update, dynamics.initial_state(), 2, 20)
        torch.testing.assert_close(exponents, torch.full((2,), 0.5 * math.log(1 + alpha**2), dtype=F64))


def test_gradient_of_the_top_exponent_matches_finite_differences():
    weights = torch.randn(4, 4, dtype=F64, generator=torch.Generator().manual_seed(1))

    def update(w):
        return torch.tanh(weights @ w) + 0.3 * torch.sin(w)

    start = torch.randn(4, dtype=F64, generator=torch.Generator().manual_seed(2))
    theta = start.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(lyapunov_exponents(update, theta, 2, 15)[0], theta)
    numeric = torch.zeros(4, dtype=F64)
    for i in range(4):
        step = torch.zeros(4, dtype=F64)
        step[i] = 1e-6
        numeric[i] = (lyapunov_exponents(update, start + step, 2, 15)[0]
                      - lyapunov_exponents(update, start - step, 2, 15)[0]) / 2e-6
    torch.testing.assert_close(gradient, numeric, rtol=1e-5, atol=1e-8)


def test_complex_momentum_top_exponent_is_the_log_spectral_radius():
    """The top eigenvalues of the map are a conjugate pair: the frame's two columns span its plane, whose
    area grows by ρ² a step exactly, so the mean of the top two exponents is log ρ (each one alone
    converges at O(1/T), the plane rotating under the columns)."""
    game = BilinearGame(dim=1)
    lr, momentum, angle = 0.5, 0.6, 1.2
    dynamics = GameDynamics(game, functools.partial(ComplexMomentum, lr=lr, momentum=momentum, angle=angle))
    assert dynamics.size == 3 * 2   # ω = (θ, Re μ, Im μ)
    exponents = lyapunov_exponents(dynamics.update, dynamics.initial_state(), 2, 100, transient=100)
    radius = spectral_radius(update_matrix(game.jacobian(), lr, momentum, angle))
    assert abs(exponents.mean().item() - math.log(radius)) < 1e-6
    assert abs(exponents[0].item() - math.log(radius)) < 0.05


def test_the_game_jacobian_and_its_branch_directions():
    game = BilinearGame(dim=2, condition_number=2.0)
    dynamics = GameDynamics(game, functools.partial(torch.optim.SGD, lr=0.1))
    theta = dynamics.initial_params
    torch.testing.assert_close(dynamics.jacobian(theta), game.jacobian())
    values, vectors = eigenpairs(dynamics.vector_field, theta, 4)
    assert values[0].imag > 0 and abs(values[0].real) < 1e-12   # a conjugate pair: positive part first
    directions = branch_directions(values, vectors, 4)
    assert [d["part"] for d in directions] == ["real", "imag", "real", "imag"]
    real, imag = directions[0]["direction"], directions[1]["direction"]
    assert abs(real @ imag) < 1e-10 and abs(real.norm() - 1) < 1e-12
    # the Arnoldi path (Jacobian-vector products only) finds the same eigenvalues
    arnoldi, _ = eigenpairs(dynamics.vector_field, theta, 4, dense_limit=0, krylov_size=4)
    torch.testing.assert_close(arnoldi, values)


def test_bad_input_is_named_before_any_work():
    start = torch.zeros(3, dtype=F64)
    with pytest.raises(ValueError, match=r"invalid k: 4 \(allowed: an integer from 1 to the number of coordinates"):
        lyapunov_exponents(lambda w: w, start, 4, 10)
    with pytest.raises(ValueError, match=r"invalid start: 'non-finite at index 1' \(allowed: a tensor of finite"):
        lyapunov_exponents(lambda w: w, torch.tensor([0.0, math.nan, 1.0]), 1, 10)
    with pytest.raises(ValueError, match="invalid steps: 0"):
        lyapunov_exponents(lambda w: w, start, 1, 0)
    with pytest.raises(ValueError, match="invalid update.*differentiable in its input"):
        lyapunov_exponents(lambda w: w.detach() * 2, start, 1, 10)
    game = BilinearGame(dim=1)
    players = game.build_players()
    for player in players.values():
        player.requires_grad_(False)
    with pytest.raises(ValueError, match="invalid game: 'BilinearGame'.*parameters that require gradients"):
        GameDynamics(game, functools.partial(torch.optim.SGD, lr=0.1), players=players)
    with pytest.raises(ValueError, match="invalid optimizer.*needs an optimizer with a functional core"):
        GameDynamics(game, torch.optim.LBFGS)
