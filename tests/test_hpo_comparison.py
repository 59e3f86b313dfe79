"""experiments/hpo_comparison: what each method reports at a budget, and TPE skipped without optuna."""

import sys

from experiments.hpo_comparison import run as hpo


def test_the_incumbent_at_a_budget_uses_only_what_fits():
    es_record = [(0, [0.0]), (320, [1.0]), (640, [2.0]), (960, [3.0])]
    assert hpo.incumbents("es_single", es_record, [400, 640, 10_000]) == [[1.0], [2.0], [3.0]]
    trials = [(200, [0.0], 0.9), (400, [1.0], 0.5), (600, [2.0], 0.7), (800, [3.0], 0.4)]
    assert hpo.incumbents("tpe", trials, [100, 200, 600, 800]) == [None, [0.0], [1.0], [3.0]]


def test_trial_values_cap_diverged_runs():
    assert hpo.clean(float("nan")) == hpo.CAP and hpo.clean(float("inf")) == hpo.CAP
    assert hpo.clean(1e6) == hpo.CAP and hpo.clean(0.3) == 0.3


def test_tpe_is_skipped_with_a_message_when_optuna_is_missing(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(hpo, "RESULTS", tmp_path)
    monkeypatch.setitem(sys.modules, "optuna", None)   # import optuna raises ImportError
    assert hpo.run_one("3", "tpe", 0) is None
    assert "skipping Optuna TPE: optuna is not installed" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_the_search_box_is_the_documented_one_in_theta_coordinates():
    run = hpo.training_run(hpo.config("12", "random", 0))
    assert run.dim == 12
    low, high = hpo.box(run)
    described_low, described_high = run.describe(low), run.describe(high)
    assert abs(described_low["lr_start.1"] - 1e-3) < 1e-9 and abs(described_high["lr_end.5"] - 3.0) < 1e-5
    assert abs(described_low["momentum.3"] - 0.01) < 1e-6 and abs(described_high["weight_decay.1"] - 0.1) < 1e-6
    centre = run.describe(run.initial_theta())
    assert abs(centre["momentum.1"] - 0.5) < 1e-6 and abs(centre["lr_start.3"] - hpo.CENTRE["lr"]) < 1e-6


def test_each_es_variant_changes_one_setting_of_the_runners_es_single():
    base = hpo.config("3", "es_single", 0)
    lr = hpo.config("3", "es_single_lr01", 0)
    particles = hpo.config("3", "es_single_p8", 0)
    assert lr.outer.outer_optimizer.lr == 0.1 != base.outer.outer_optimizer.lr
    assert particles.outer.estimator.num_particles == 8 != base.outer.estimator.num_particles
    assert lr.outer.estimator == base.outer.estimator and particles.outer.outer_optimizer == base.outer.outer_optimizer
    assert set(hpo.ESTIMATOR) <= set(hpo.ES_METHODS) and all(m in hpo.LABELS for m in hpo.METHODS)
