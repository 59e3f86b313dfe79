"""The games API: update orders, GameLoop (resume, per-player optimizers), GAN metrics, the runner."""

import functools
import io
import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from metaopt.outer import GameLoop
from metaopt.run import run
from metaopt.tasks import BilinearGame, GANMixture, MixedGame, game_step

ROOT = Path(__file__).resolve().parents[2]


def _sgd(params, maximize):
    return torch.optim.SGD(params, lr=0.5, maximize=maximize)


@pytest.mark.parametrize("updates", ["simultaneous", "alternating"])
def test_update_orders(updates):
    """min_x max_y x·y, step 0.5: y's gradient is x before (simultaneous) or after (alternating) x moved."""
    game = BilinearGame(dim=1)
    players = game.build_players()
    players["x"].weight.data.fill_(1.0)
    players["y"].weight.data.fill_(2.0)
    optimizers = {name: _sgd(p.parameters(), game.maximize[name]) for name, p in players.items()}
    values = game_step(game, players, optimizers, torch.Generator(), updates)
    x = 1.0 - 0.5 * 2.0
    y = 2.0 + 0.5 * (x if updates == "alternating" else 1.0)
    assert players["x"].weight.item() == x and players["y"].weight.item() == y
    assert values["x_objective"] == 2.0
    assert values["y_objective"] == (2.0 if updates == "simultaneous" else x * 2.0)


def test_mixed_game_interpolates_between_a_shared_loss_and_a_zero_sum_game():
    cooperative, adversarial = MixedGame(dim=3, adversarial=0.0), MixedGame(dim=3, adversarial=1.0)
    assert torch.equal(cooperative.jacobian(), cooperative.hessian)
    assert torch.linalg.eigvalsh(cooperative.jacobian()).min() > 0
    jacobian = adversarial.jacobian()
    torch.testing.assert_close(jacobian, -jacobian.T)
    torch.manual_seed(0)
    players = adversarial.build_players()
    objectives = adversarial.objectives(players, torch.Generator())
    assert objectives["x"].item() == -objectives["y"].item()


def test_game_training_resumes_exactly_and_takes_per_player_optimizers():
    def build():
        torch.manual_seed(0)
        return GameLoop(GANMixture(hidden_sizes=(16,), batch_size=32),
                            functools.partial(torch.optim.Adam, lr=1e-3), steps=20,
                            player_optimizers={"discriminator": functools.partial(torch.optim.SGD, lr=0.01)},
                            generator=torch.Generator().manual_seed(1))

    straight = build()
    assert isinstance(straight.optimizers["discriminator"], torch.optim.SGD)
    assert straight.optimizers["discriminator"].param_groups[0]["maximize"]
    for _ in range(20):
        straight.step()
    first = build()
    for _ in range(10):
        first.step()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = build()
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for _ in range(10):
        resumed.step()
    for name in straight.players:
        for p, q in zip(straight.players[name].parameters(), resumed.players[name].parameters()):
            assert torch.equal(p, q)


def test_game_training_names_bad_arguments():
    with pytest.raises(ValueError, match="invalid outer.updates: 'random'"):
        GameLoop(BilinearGame(dim=1), _sgd, updates="random")
    with pytest.raises(ValueError, match="invalid outer.player_optimizers: 'z'"):
        GameLoop(BilinearGame(dim=1), _sgd, player_optimizers={"z": _sgd})


def test_gan_mode_coverage_metric():
    game = GANMixture()
    data = game.sample_data(2000, torch.Generator().manual_seed(0))
    perfect = {"generator": lambda z: data}
    collapsed = {"generator": lambda z: game.modes[:1].expand(len(z), 2)}
    within_3_std = 1 - math.exp(-4.5)  # P(‖z‖ < 3) for a 2-D standard normal
    assert game.evaluate(perfect) == {"modes_covered": 8.0,
                                      "high_quality_fraction": pytest.approx(within_3_std, abs=0.006)}
    assert game.evaluate(collapsed) == {"modes_covered": 1.0, "high_quality_fraction": 1.0}


def test_game_tasks_select_the_game_loop_unless_outer_is_given():
    with initialize_config_dir(str(ROOT / "metaopt" / "conf"), version_base="1.3"):
        for task in ("bilinear_game", "mixed_game", "gan_mixture"):
            assert compose("config", [f"task={task}"]).outer._target_ == "metaopt.outer.GameLoop"
        explicit = compose("config", ["task=bilinear_game", "outer=none"])
        assert explicit.outer._target_ == "metaopt.outer.TrainingLoop"
        assert compose("config", []).outer._target_ == "metaopt.outer.TrainingLoop"


def test_runner_plays_the_bilinear_game(tmp_path):
    """``python -m metaopt.run task=bilinear_game optimizer=complex_momentum …``, in process."""
    overrides = ["task=bilinear_game", "optimizer=complex_momentum", "optimizer.lr=0.35",
                 "optimizer.momentum=0.7", "optimizer.angle=0.88", "outer.steps=200", "logger=none",
                 "progress=false", "name=bilinear"]
    with initialize_config_dir(str(ROOT / "metaopt" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides)
    summary = run(cfg, tmp_path)
    assert summary["distance"] < 1e-6
    assert json.loads((tmp_path / "summary.json").read_text())["distance"] == summary["distance"]
    assert (tmp_path / "curves.png").exists()
