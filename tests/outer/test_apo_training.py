"""``optimizer=apo_lr`` / ``apo_precond`` in the runner: the loop they select, logged schedules, resume."""

import io
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from metaopt.outer import APOLoop
from metaopt.run import run

CONF = Path(__file__).resolve().parents[2] / "metaopt" / "conf"


def _config(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["name=test", "logger=none", "progress=false", *overrides])


def _metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_apo_lr_selects_its_loop_and_logs_the_learned_schedule(tmp_path):
    cfg = _config("optimizer=apo_lr", "task=digits_mlp", "outer.steps=60", "outer.eval_every=0", "log_every=10")
    assert cfg.outer._target_ == "metaopt.outer.APOLoop"
    assert instantiate(cfg.optimizer.divergence) == "kl"  # a classifier: KL between predictive distributions
    run(cfg, tmp_path)
    records = _metrics(tmp_path)
    lrs = [record["lr"] for record in records]
    assert len(lrs) == 6 and lrs[-1] > 1.5 * lrs[0]  # far from converged: APO raises η from 0.01
    assert all(record["apo_q"] < 2.5 for record in records)


def test_apo_on_regression_tasks_uses_the_squared_error(tmp_path):
    cfg = _config("optimizer=apo_lr", "task=linreg", "outer.steps=20")
    assert instantiate(cfg.optimizer.divergence) == "mse"
    cfg = _config("optimizer=apo_precond", "task=digits_autoencoder", "outer.steps=30", "outer.eval_every=0")
    assert instantiate(cfg.optimizer.divergence) == "mse"
    summary = run(cfg, tmp_path)
    records = _metrics(tmp_path)
    assert all(record["precond_scale"] > 0 for record in records) and summary["val_loss"] < 0.2


def test_an_explicit_outer_still_wins_and_plain_optimizers_train_in_the_apo_loop():
    cfg = _config("optimizer=adam", "outer=apo", "outer.steps=5")
    loop = instantiate(cfg.outer)(task=instantiate(cfg.task), optimizer=instantiate(cfg.optimizer),
                                  generator=torch.Generator().manual_seed(0))
    assert isinstance(loop, APOLoop) and set(loop.step()) == {"train_batch_loss", "lr"}


def test_apo_training_resumes_exactly_from_a_weights_only_checkpoint():
    cfg = _config("optimizer=apo_precond", "task=digits_mlp", "optimizer.base.momentum=0.9",
                  "optimizer.meta_interval=3")

    def make():
        torch.manual_seed(0)
        return instantiate(cfg.outer)(task=instantiate(cfg.task), optimizer=instantiate(cfg.optimizer),
                                      generator=torch.Generator().manual_seed(0))

    loop = make()
    for _ in range(7):
        loop.step()
    buffer = io.BytesIO()
    torch.save(loop.state_dict(), buffer)
    expected = [loop.step() for _ in range(7)]
    resumed = make()
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert [resumed.step() for _ in range(7)] == expected


def test_bad_apo_settings_fail_before_the_first_step(tmp_path):
    for override, message in (("optimizer.lambda_fsd=-1", r"invalid optimizer.lambda_fsd: -1"),
                              ("optimizer.meta_interval=0", r"invalid (optimizer.)?meta_interval: 0"),
                              ("optimizer.base.lr=0", r"invalid base lr: 0")):
        cfg = _config("optimizer=apo_lr", "task=linreg", "outer.steps=5", override)
        with pytest.raises(ValueError, match=message):
            run(cfg, tmp_path)
        assert not (tmp_path / "metrics.jsonl").exists()
