"""Loggers: every record in metrics.jsonl; wandb gets every evaluation and, when throttled, averaged step
metrics; a resumed run continues the same wandb run in one folder; the offline run holds what a user sees."""

import json

import pytest

from metaopt.runner.loggers import WandbLogger
from tests.conftest import run_cli
from tests.runner.wandb_file import read_run


def _capture(logger):
    sent = []
    logger.run.log = lambda record, step=None: sent.append((step, record))
    return sent


def test_throttled_records_are_averaged_not_dropped_and_the_last_arrives(tmp_path):
    logger = WandbLogger(tmp_path, run_config={"seed": 0}, mode="disabled", min_interval=3600.0)
    sent = _capture(logger)
    for step in range(1, 6):
        logger.log(step, {"loss": float(step)})
    assert [s for s, _ in sent] == [1]
    logger.log_summary({"val_loss": 0.5})
    assert sent[1] == (5, {"loss": pytest.approx((2 + 3 + 4 + 5) / 4)})
    assert sent[2][0] == 5 and list(sent[2][1]) == ["summary_table"]  # at the last step, not past it
    logger.finish()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5]
    assert json.loads((tmp_path / "summary.json").read_text()) == {"val_loss": 0.5}


def test_every_evaluation_reaches_wandb_with_the_steps_averaged_since_the_last_row(tmp_path):
    logger = WandbLogger(tmp_path, mode="disabled", min_interval=3600.0)
    sent = _capture(logger)
    for step in range(10, 301, 10):  # log_every=10: each record is already a 10-step window's mean
        is_eval = step % 50 == 0
        logger.log(step, {"loss": float(step), **({"val_loss": step / 1000} if is_eval else {})}, evaluation=is_eval)
    logger.finish()
    assert [s for s, _ in sent] == [10, 50, 100, 150, 200, 250, 300]
    assert [r["val_loss"] for _, r in sent[1:]] == [s / 1000 for s in (50, 100, 150, 200, 250, 300)]
    assert sent[1][1]["loss"] == pytest.approx((20 + 30 + 40 + 50) / 4)  # steps 11..50, each window weighted 10


def test_evaluations_are_recognised_by_their_new_keys_when_the_caller_does_not_say(tmp_path):
    logger = WandbLogger(tmp_path, mode="disabled", min_interval=3600.0)
    sent = _capture(logger)
    for step in range(1, 22):
        logger.log(step, {"loss": 1.0, **({"val_loss": 0.5} if step % 7 == 0 else {})})
    logger.finish()
    assert [s for s, _ in sent] == [1, 7, 14, 21]


def test_wandb_with_no_interval_gets_every_record(tmp_path):
    logger = WandbLogger(tmp_path, mode="disabled", min_interval=0.0)
    sent = _capture(logger)
    for step in (10, 20, 30):
        logger.log(step, {"loss": 1.0})
    logger.finish()
    assert [s for s, _ in sent] == [10, 20, 30]


def test_a_resumed_run_continues_the_same_wandb_run_in_one_folder(tmp_path):
    first = WandbLogger(tmp_path, run_config={"seed": 0}, mode="offline", min_interval=0.0)
    for step in range(1, 9):
        first.log(step, {"loss": float(step)})
    run_id = first.run_id
    first.finish(1)  # as if killed after step 8, with a checkpoint at step 5
    resumed = WandbLogger(tmp_path, run_config={"seed": 0}, mode="offline", min_interval=0.0,
                          resume_step=5, run_id=run_id)
    assert resumed.run_id == run_id
    for step in range(6, 11):
        resumed.log(step, {"loss": float(step)})
    resumed.finish()
    folders = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(folders) == 1
    run = read_run(folders[0])
    assert run["run"].run_id == run_id
    history = run["history"]
    assert [row["_step"] for row in history] == list(range(1, 11))
    assert [row["loss"] for row in history] == [float(s) for s in range(1, 11)]


def test_the_offline_run_holds_every_evaluation_the_config_the_summary_and_the_plots(tmp_path):
    # 300 steps, a record every step, an evaluation every 7 steps (42) and at the end: 43 evaluations.
    result = run_cli("task=linreg", "optimizer=sgd", "outer.steps=300", "outer.eval_every=7", "log_every=1",
                     "logger=wandb", "checkpoint_every=0", "progress=false", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    run = read_run(folder)
    evaluations = [row for row in run["history"] if "val_loss" in row]
    assert [row["_step"] for row in evaluations] == [*range(7, 300, 7), 300]
    local = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["val_loss"] for row in evaluations] == pytest.approx([r["val_loss"] for r in local if "val_loss" in r])
    assert all("train_batch_loss" in row for row in evaluations)
    assert run["config"]["optimizer"]["_target_"] == "torch.optim.SGD"
    assert run["config"]["outer"]["steps"] == 300
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert run["summary"]["val_loss"] == pytest.approx(summary["val_loss"])
    assert run["history"][-1]["_step"] == 300 and run["history"][-1]["curves"]["_type"] == "image-file"
    assert any(p.startswith("media/images/curves") for p in run["files"])


def test_images_of_an_evaluation_reach_wandb_under_their_key_at_their_step(tmp_path):
    from matplotlib.image import imsave

    logger = WandbLogger(tmp_path, mode="disabled", min_interval=3600.0)
    sent = _capture(logger)
    path = tmp_path / "samples" / "eval_000050.png"
    path.parent.mkdir()
    imsave(path, [[0.0, 1.0], [1.0, 0.0]], cmap="gray")
    logger.log(50, {"loss": 1.0, "val_loss": 0.5}, evaluation=True)
    logger.log_images({"eval_samples": path}, step=50)
    logger.log_images([path])  # a list: each image under its file's stem, at the last step
    logger.finish()
    assert [(step, list(record)) for step, record in sent] == [
        (50, ["loss", "val_loss"]), (50, ["eval_samples"]), (50, ["eval_000050"])]
    assert type(sent[1][1]["eval_samples"]).__name__ == "Image"
