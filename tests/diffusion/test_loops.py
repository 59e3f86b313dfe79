"""The diffusion loops: clear errors before any work, exact resume, and short runs that raise the reward."""

import copy

import pytest
import torch

from metaopt.outer import DDPOLoop, DiffusionESLoop, DRaFTLoop


def _adam(lr=1e-2):
    return lambda params: torch.optim.Adam(params, lr=lr)


def _no_work(task, monkeypatch):
    def refuse():
        raise AssertionError("the UNet was built before the arguments were checked")

    monkeypatch.setattr(task, "pretrained_unet", refuse)


def test_bad_task_arguments_are_refused(diffusion_cache):
    pytest.importorskip("diffusers")
    from metaopt.tasks.diffusion import DigitsDiffusion

    with pytest.raises(ValueError, match=r"invalid reward: 'aesthetic' \(allowed: digit_logprob, symmetry, ink, "
                                         r"digit_accuracy\)"):
        DigitsDiffusion(reward="aesthetic")
    with pytest.raises(ValueError, match=r"invalid sample_size: 16 \(allowed: 8: the UNet's sample_size must match"):
        DigitsDiffusion(sample_size=16)
    with pytest.raises(ValueError, match="invalid target_digit: 10"):
        DigitsDiffusion(target_digit=10)


def test_construction_trains_nothing(tmp_path, monkeypatch, tiny):
    pytest.importorskip("diffusers")
    from metaopt.tasks.diffusion import DigitsDiffusion

    monkeypatch.setenv("METAOPT_CACHE", str(tmp_path))
    DigitsDiffusion(**tiny)
    assert not list(tmp_path.iterdir())


def test_loop_arguments_are_refused_before_any_work(tiny_task, tiny, monkeypatch):
    _no_work(tiny_task, monkeypatch)
    with pytest.raises(ValueError, match=r"invalid outer.truncation_length: 5 \(allowed: an integer K in \[1, "
                                         r"task.num_inference_steps=4\]"):
        DRaFTLoop(tiny_task, _adam(), variant="truncated", truncation_length=5)
    with pytest.raises(ValueError, match="invalid outer.variant: 'partial'"):
        DRaFTLoop(tiny_task, _adam(), variant="partial")
    with pytest.raises(ValueError, match="invalid outer.eta: 0.0"):
        DDPOLoop(tiny_task, _adam(), eta=0.0)
    with pytest.raises(ValueError, match="invalid outer.sigma: 0"):
        DiffusionESLoop(tiny_task, _adam(), sigma=0)
    from metaopt.tasks.diffusion import DigitsDiffusion

    accuracy = DigitsDiffusion(**tiny, reward="digit_accuracy")
    _no_work(accuracy, monkeypatch)
    with pytest.raises(ValueError, match=r"invalid task.reward: 'digit_accuracy' \(allowed: a differentiable reward"):
        DRaFTLoop(accuracy, _adam())


def test_resume_continues_exactly(tiny_task, tiny):
    def fresh():
        torch.manual_seed(0)
        return DRaFTLoop(tiny_task, _adam(), variant="lv", eval_samples=4, generator=torch.Generator().manual_seed(3))

    loop = fresh()
    for _ in range(2):
        loop.step()
    assert loop.optimizer.state, "the optimizer has state to restore"
    state = copy.deepcopy(loop.state_dict())  # torch optimizers' state dicts hold live tensors
    loop.step()
    other = fresh()
    other.load_state_dict(state)
    assert other.reward_queries == 2 * 2 * tiny["batch_size"]
    other.step()
    for a, b in zip(loop.lora_params, other.lora_params):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


VARIANTS = {  # (loop, steps); DDPO's 8-sample policy gradient is the noisiest: more steps
    "draft": (lambda task: DRaFTLoop(task, _adam(), variant="full", eval_samples=16), 8),
    "draft_k1": (lambda task: DRaFTLoop(task, _adam(), variant="truncated", truncation_length=1, eval_samples=16), 8),
    "draft_lv": (lambda task: DRaFTLoop(task, _adam(), variant="lv", eval_samples=16), 8),
    "ddpo": (lambda task: DDPOLoop(task, _adam(), eval_samples=16), 12),
    "es": (lambda task: DiffusionESLoop(task, _adam(3e-2), num_pairs=4, sigma=0.05, eval_samples=16), 8),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_short_run_raises_the_reward(tiny_task, tiny, variant):
    """The mean pixel intensity (bounded: pixels clamped to [0, 1]) of the evaluation samples, before and after
    a few steps, averaged over two seeds."""
    from metaopt.tasks.diffusion import DigitsDiffusion

    task = DigitsDiffusion(**tiny, reward="ink")
    build, steps = VARIANTS[variant]
    gains = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        loop = build(task)
        loop.generator.manual_seed(seed)
        before = loop.evaluate()["eval_reward"]
        assert before == pytest.approx(task.metrics(loop.samples(0.0))["reward"])  # LoRA starts as the identity
        for _ in range(steps):
            loop.step()
        gains.append(loop.evaluate()["eval_reward"] - before)
        assert loop.reward_queries > 0
    assert sum(gains) / len(gains) > 0.05, gains


@pytest.mark.parametrize("outer", ["draft", "es_single"])
def test_every_evaluation_sends_its_grid_of_samples(outer, tiny_task, tiny, make_config, tmp_path, monkeypatch):
    # The dashboard's image of each evaluation, under one key with a step slider, and its file in the run folder
    # (DRaFT's loops and the ES estimators over the sampling chain alike).
    from metaopt.run import run
    from metaopt.runner.loggers import LocalLogger

    sent = []
    monkeypatch.setattr(LocalLogger, "log_images",
                        lambda self, paths, step=None: sent.append((step, dict(paths) if isinstance(paths, dict)
                                                                    else [p.name for p in paths])))
    overrides = [f"task.{k}={v}" for k, v in tiny.items()]
    extra = (["outer.variant=truncated", "outer.eval_samples=8"] if outer == "draft"
             else ["outer.estimator.num_particles=2", "outer.estimator.truncation_length=2",
                   "+outer.problem.eval_samples=8"])
    cfg = make_config("task=digits_diffusion", f"outer={outer}", "outer.steps=4", "outer.eval_every=2",
                      "checkpoint_every=0", *overrides, *extra)
    run(cfg, tmp_path / "run")
    per_eval = [(step, paths) for step, paths in sent if step is not None]
    assert [step for step, _ in per_eval] == [2, 4]
    assert all(list(paths) == ["eval_samples"] for _, paths in per_eval)
    files = [paths["eval_samples"] for _, paths in per_eval]
    assert [f.name for f in files] == ["eval_000002.png", "eval_000004.png"]
    assert all(f.parent == tmp_path / "run" / "samples" and f.stat().st_size > 0 for f in files)
    from matplotlib.image import imread

    first, last = imread(files[0]), imread(files[1])
    assert first.shape == last.shape and first.shape[0] > 8  # a grid, not one digit
