"""Loggers: every record in metrics.jsonl, a rate-limited stream to wandb whose last record always arrives."""

import json

from metaopt.runner.loggers import WandbLogger


def test_wandb_gets_at_most_one_record_per_interval_and_always_the_last(tmp_path):
    logger = WandbLogger(tmp_path, run_config={"seed": 0}, mode="disabled", min_interval=3600.0)
    sent = []
    logger.run.log = lambda record, step=None: sent.append((step, record))
    for step in range(1, 6):
        logger.log(step, {"loss": 1.0 / step})
    assert [s for s, _ in sent] == [1]
    logger.log_summary({"val_loss": 0.5})
    assert [s for s, _ in sent[:2]] == [1, 5] and sent[1][1] == {"loss": 0.2}
    assert list(sent[2][1]) == ["summary_table"]  # then the final metrics, as a table
    logger.finish()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5]
    assert json.loads((tmp_path / "summary.json").read_text()) == {"val_loss": 0.5}


def test_wandb_with_no_interval_gets_every_record(tmp_path):
    logger = WandbLogger(tmp_path, mode="disabled", min_interval=0.0)
    sent = []
    logger.run.log = lambda record, step=None: sent.append(step)
    for step in (10, 20, 30):
        logger.log(step, {"loss": 1.0})
    logger.finish()
    assert sent == [10, 20, 30]
