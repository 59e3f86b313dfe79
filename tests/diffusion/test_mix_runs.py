"""``python -m metaopt.diffusion.mix``: the LoRAs of two finished runs (run folders with ``lora.pt``) mixed on
their base UNet, a grid of scales scored by both runs' rewards; bad input refused before any sampling."""

import pytest
import torch

from metaopt.outer import DRaFTLoop


def _trained_run(task, folder, seed):
    torch.manual_seed(seed)
    loop = DRaFTLoop(task, lambda params: torch.optim.Adam(params, lr=3e-2), variant="truncated",
                     truncation_length=1, eval_samples=8, generator=torch.Generator().manual_seed(seed))
    for _ in range(3):
        loop.step()
    folder.mkdir()
    loop.plots(folder)  # writes lora.pt (and samples.png), as at the end of a run
    return loop


@pytest.fixture
def two_runs(tiny_task, tiny, tmp_path):
    from metaopt.tasks.diffusion import DigitsDiffusion

    ink = _trained_run(DigitsDiffusion(**tiny, reward="ink"), tmp_path / "ink", 0)
    symmetry = _trained_run(DigitsDiffusion(**tiny, reward="symmetry"), tmp_path / "symmetry", 1)
    return ink, symmetry


def test_the_grid_has_the_base_and_each_run_at_its_corners(two_runs, tmp_path):
    """Scales (0, 0) sample the base model, (1, 0) exactly the first run's fine-tuned model, (0, 1) the
    second's: the mix reads the right adapters for each run, and each column is scored by its run's reward."""
    from metaopt.diffusion.mix import mix_runs

    ink, symmetry = two_runs
    result = mix_runs([tmp_path / "ink", tmp_path / "symmetry"], [[0.0, 1.0]], samples=8, seed=0)
    rows = {tuple(row["scales"]): row for row in result["rows"]}
    assert sorted(rows) == [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
    assert result["rewards"] == ["ink", "symmetry"]
    for loop, corner in ((ink, (1.0, 0.0)), (symmetry, (0.0, 1.0))):  # eval_seed 0 and 8 samples: the same noise
        torch.testing.assert_close(rows[corner]["images"], loop.samples(1.0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rows[(0.0, 0.0)]["images"], loop.samples(0.0), rtol=1e-5, atol=1e-5)
    images = rows[(1.0, 0.0)]["images"]
    assert rows[(1.0, 0.0)]["reward[ink]"] == pytest.approx(ink.task.reward(images).mean().item())
    assert rows[(1.0, 0.0)]["reward[symmetry]"] == pytest.approx(symmetry.task.reward(images).mean().item())
    assert not torch.allclose(rows[(1.0, 1.0)]["images"], rows[(1.0, 0.0)]["images"])


def test_the_command_writes_the_table_and_the_figure(two_runs, tmp_path, capsys):
    from metaopt.diffusion.mix import main

    out = tmp_path / "mix"
    code = main([str(tmp_path / "ink"), str(tmp_path / "symmetry"), "--scales", "0", "1", "--scales", "0.5",
                 "--samples", "4", "--out", str(out), "--names", "A", "B"])
    assert code == 0
    table = (out / "mix.md").read_text().splitlines()
    assert "| scale A | scale B | reward ink (A) | reward symmetry (B) |" in table[2]
    assert len([line for line in table if line.startswith("| 0") or line.startswith("| 1")]) == 2
    assert (out / "mix.png").stat().st_size > 0 and (out / "mix.json").exists()


def test_bad_runs_and_arguments_are_refused_before_any_work(two_runs, tmp_path, tiny, monkeypatch, capsys):
    from metaopt.diffusion.mix import MixError, main, mix_runs
    from metaopt.tasks.diffusion import DigitsDiffusion

    other = _trained_run(DigitsDiffusion(**{**tiny, "pretrain_steps": 41}, reward="ink"), tmp_path / "other", 2)
    assert other.reward_queries
    (tmp_path / "empty").mkdir()

    def refuse(self):
        raise AssertionError("a UNet was built before the arguments were checked")

    monkeypatch.setattr(DigitsDiffusion, "pretrained_unet", refuse)
    ink = tmp_path / "ink"
    with pytest.raises(MixError, match=r"invalid run folder: '.*missing'.*no such folder"):
        mix_runs([ink, tmp_path / "missing"], [[1.0]])
    with pytest.raises(MixError, match=r"invalid run folder: '.*empty'.*it has neither"):
        mix_runs([ink, tmp_path / "empty"], [[1.0]])
    with pytest.raises(MixError, match=r"invalid run folder: '.*other'.*another base UNet"):
        mix_runs([ink, tmp_path / "other"], [[1.0]])
    with pytest.raises(MixError, match=r"invalid --scales: given 3 times \(allowed: once, for every run, or once "
                                       r"per run: 2 times\)"):
        mix_runs([ink, tmp_path / "symmetry"], [[1.0], [1.0], [1.0]])
    with pytest.raises(MixError, match=r"invalid --scales: \[nan\]"):
        mix_runs([ink, tmp_path / "symmetry"], [[float("nan")]])
    with pytest.raises(MixError, match=r"invalid --samples: 0"):
        mix_runs([ink], [[1.0]], samples=0)
    assert main([str(ink), str(tmp_path / "empty"), "--out", str(tmp_path / "never")]) == 2
    assert "invalid run folder" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_an_unfinished_run_is_read_from_its_checkpoint(two_runs, tmp_path):
    """A run folder with only checkpoint.pt (the runner's format: the loop's state and the resolved config)."""
    from metaopt.diffusion.mix import load_run

    ink, _ = two_runs
    folder = tmp_path / "unfinished"
    folder.mkdir()
    config = {"task": {"_target_": "metaopt.tasks.diffusion.DigitsDiffusion", **ink.task.config},
              "outer": {"lora_rank": 4, "lora_alpha": 4.0}}
    torch.save({"step": 3, "loop": ink.state_dict(), "config": config}, folder / "checkpoint.pt")
    run = load_run(folder)
    assert "step 3" in run["source"] and run["reward"] == "ink"
    for saved, live in zip(run["lora"], ink.lora_params):
        torch.testing.assert_close(saved, live.detach())
