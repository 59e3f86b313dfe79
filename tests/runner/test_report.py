"""The sweep report: jobs in launch order, failed jobs marked with their error and labelled by their overrides."""

import json

from metaopt.runner.report import collect_runs, format_table, record_failure


def test_report_orders_jobs_and_marks_the_failed_ones(tmp_path):
    for num in (2, 10):
        folder = tmp_path / f"{num}-seed={num}"
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- seed={num}\n")
        (folder / "summary.json").write_text(json.dumps({"val_loss": num / 10}))
    record_failure(tmp_path / "3-optimizer.lr=tag(log, interval(1, 2))", "error: invalid optimizer.lr: 5\n(allowed: x)",
                   ["optimizer.lr=tag(log, interval(1, 2))"])
    (tmp_path / "4-seed=4" / ".hydra").mkdir(parents=True)  # started, never finished (killed)
    (tmp_path / "4-seed=4" / ".hydra" / "overrides.yaml").write_text("- seed=4\n")
    runs = collect_runs(tmp_path)
    assert [r["label"] for r in runs] == ["seed=2", "optimizer.lr=tag(log, interval(1, 2))", "seed=4", "seed=10"]
    assert [r["error"] for r in runs] == [None, "error: invalid optimizer.lr: 5 (allowed: x)",
                                          "no summary.json (the job did not finish)", None]
    lines = format_table(runs, ["val_loss"]).splitlines()
    assert lines[0] == "| run | val_loss | error |"
    assert lines[2] == "| seed=2 | 0.2 |  |"
    assert lines[3] == ("| optimizer.lr=tag(log, interval(1, 2)) | FAILED | "
                        "error: invalid optimizer.lr: 5 (allowed: x) |")
