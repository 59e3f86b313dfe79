"""The bilinear game min_x max_y xᵀAy (Lorraine et al., 2022, Section 4.1; Gidel et al., 2019):
the measured behaviour of the optimizers against the spectral radius of their linear update map."""

import math

import torch

from metaopt.games import measured_rate, spectral_radius, update_matrix
from metaopt.optim import ComplexMomentum
from metaopt.tasks import BilinearGame, MixedGame, game_step

ALTERNATING = [[0], [1]]  # x moves first, then y at x's new position (dim = 1)


def _play(game, make_optimizer, steps, updates="simultaneous", seed=0):
    """Distances ‖(x, y)‖ to the equilibrium after each round, starting from a seeded point."""
    torch.manual_seed(seed)
    players = game.build_players()
    optimizers = {name: make_optimizer(p.parameters(), maximize=game.maximize[name])
                  for name, p in players.items()}
    distances = [game.evaluate(players)["distance"]]
    for _ in range(steps):
        game_step(game, players, optimizers, torch.Generator(), updates)
        distances.append(game.evaluate(players)["distance"])
    return distances


def _momentum(lr, momentum, angle):
    def make(params, maximize):
        return ComplexMomentum(params, lr=lr, momentum=momentum, angle=angle, maximize=maximize)
    return make


def test_update_matrix_is_the_optimizers_map():
    """The closed-form R (simultaneous and alternating) equals what the optimizer does, step for step."""
    game = MixedGame(dim=2, adversarial=0.7, condition_number=3.0)
    n = 4
    for updates, blocks in (("simultaneous", None), ("alternating", [[0, 1], [2, 3]])):
        torch.manual_seed(0)
        players = game.build_players()
        optimizers = {name: ComplexMomentum(p.parameters(), lr=0.2, momentum=0.8, angle=0.6)
                      for name, p in players.items()}
        state = torch.cat([torch.zeros(2 * n, dtype=torch.float64), players["x"].weight.detach(),
                           players["y"].weight.detach()])
        matrix = update_matrix(game.jacobian(), lr=0.2, momentum=0.8, angle=0.6, blocks=blocks)
        for _ in range(5):
            game_step(game, players, optimizers, torch.Generator(), updates)
            state = matrix @ state
        omega = torch.cat([players["x"].weight.detach(), players["y"].weight.detach()])
        torch.testing.assert_close(omega, state[2 * n:], rtol=1e-12, atol=1e-12)
        real = torch.cat([optimizers[k].state[players[k].weight]["momentum_real"] for k in ("x", "y")])
        torch.testing.assert_close(real, state[:n], rtol=1e-12, atol=1e-12)


def test_simultaneous_gda_and_real_momentum_never_converge():
    jacobian = BilinearGame(dim=1).jacobian()
    for lr in (0.01, 0.1, 0.5, 1.0):
        assert spectral_radius(update_matrix(jacobian, lr, 0.0, 0.0)) == math.sqrt(1 + lr**2)
        for momentum in (0.1, 0.5, 0.9):
            for angle in (0.0, math.pi):  # positive and negative momentum
                assert spectral_radius(update_matrix(jacobian, lr, momentum, angle)) >= 1 - 1e-12
    game = BilinearGame(dim=3)
    for optimizer in (_momentum(0.1, 0.0, 0.0), _momentum(0.1, 0.9, 0.0), _momentum(0.1, 0.5, math.pi)):
        distances = _play(game, optimizer, 300)
        assert distances[-1] >= 0.99 * distances[0]


def test_simultaneous_complex_momentum_converges_at_the_spectral_radius():
    game = BilinearGame(dim=3)
    lr, momentum, angle = 0.35, 0.7, 0.88
    radius = spectral_radius(update_matrix(game.jacobian(), lr, momentum, angle))
    assert radius < 0.92
    distances = _play(game, _momentum(lr, momentum, angle), 400)
    assert distances[-1] < 1e-12 * distances[0]
    assert abs(measured_rate(distances, start=100) - radius) < 1e-3


def test_alternating_negative_momentum_converges_and_gda_cycles():
    game = BilinearGame(dim=1)
    jacobian = game.jacobian()
    # Alternating gradient descent-ascent: eigenvalues on the unit circle, bounded cycles.
    assert abs(spectral_radius(update_matrix(jacobian, 0.5, 0.0, 0.0, ALTERNATING)) - 1) < 1e-12
    cycle = _play(game, _momentum(0.5, 0.0, 0.0), 400, "alternating")
    assert 0.3 * cycle[0] < min(cycle) and max(cycle) < 3 * cycle[0]
    # Positive momentum diverges, negative momentum (β = −0.5) converges at its spectral radius.
    assert spectral_radius(update_matrix(jacobian, 0.5, 0.5, 0.0, ALTERNATING)) > 1.2
    assert _play(game, _momentum(0.5, 0.5, 0.0), 200, "alternating")[-1] > 1e3
    radius = spectral_radius(update_matrix(jacobian, 0.8, 0.5, math.pi, ALTERNATING))
    assert radius < 0.91
    distances = _play(game, _momentum(0.8, 0.5, math.pi), 300, "alternating")
    assert distances[-1] < 1e-9 * distances[0]
    assert abs(measured_rate(distances, start=50) - radius) < 1e-3


def test_batched_update_matrices_equal_one_at_a_time():
    jacobian = MixedGame(dim=2, adversarial=0.4).jacobian()
    lrs, momenta = torch.tensor([0.1, 0.5]), torch.tensor([[0.0], [0.9]])
    batched = update_matrix(jacobian, lrs, momenta, 0.3, blocks=[[0, 1], [2, 3]])
    assert batched.shape == (2, 2, 12, 12)
    for i in range(2):
        for j in range(2):
            single = update_matrix(jacobian, lrs[j].item(), momenta[i, 0].item(), 0.3, [[0, 1], [2, 3]])
            torch.testing.assert_close(batched[i, j], single)
    assert spectral_radius(batched).shape == (2, 2)
