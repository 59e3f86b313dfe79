"""The sampling chain as an unrolled problem (``SamplingChain``): ES-Single and PES of ``metaopt.unrolled`` over
truncations of the DDIM chain with the LoRA adapters as θ (``outer=es_single``/``pes`` on a diffusion task)."""

import functools

import pytest
import torch

from metaopt.unrolled import PES, ESSingle


def _chain(task, **kwargs):
    from metaopt.tasks.diffusion import SamplingChain

    return SamplingChain(task, theta_scale=1.0, eval_samples=4, **kwargs)


def test_one_chain_in_truncations_is_the_sampler_under_each_particles_theta(tiny_task):
    """Particles with different θ rows, unrolled over the 4-step chain in truncations of 1, 3: each ends at the
    deterministic DDIM sample of its x_T under its own adapters; the loss is −mean reward at the last step
    only, where the particle resets; partners reading the same stream start from the same x_T."""
    from metaopt.diffusion import denoiser, sample, set_lora_scale

    problem = _chain(tiny_task)
    theta0 = problem.initial_theta()
    generator = torch.Generator().manual_seed(0)
    thetas = torch.stack([theta0, theta0 + 0.05 * torch.randn(problem.dim, generator=generator), theta0])
    streams = torch.tensor([0, 1, 0])
    data = torch.Generator().manual_seed(7)
    expected_noise = torch.randn((2, tiny_task.batch_size, 1, 8, 8), generator=torch.Generator().manual_seed(7))
    state = problem.init_state(3)
    state, first, _ = problem.unroll(state, thetas, 1, data, streams, 2)
    state, rest, resets = problem.unroll(state, thetas, 3, data, streams, 2)
    losses = torch.cat([first, rest])
    assert resets[:-1].sum() == 0 and resets[-1].all() and (state["step"] == 0).all()
    assert (losses[:-1] == 0).all()
    assert problem.reward_queries == 3 * tiny_task.batch_size
    for i in range(3):
        problem._load(thetas[i])
        set_lora_scale(problem.unet, 1.0)
        x0 = sample(denoiser(problem.unet), problem.chain, expected_noise[streams[i]])
        torch.testing.assert_close(state["x"][i], x0, rtol=1e-5, atol=1e-5)
        assert losses[-1, i].item() == pytest.approx(-tiny_task.reward(x0).mean().item(), rel=1e-5)
    assert losses[-1, 0] == losses[-1, 2] and losses[-1, 0] != losses[-1, 1]


def test_es_single_over_truncations_sums_to_es_over_the_whole_chain(tiny_task):
    """ES-Single keeps one ε per chain, so with θ fixed the sum of its estimates over one chain in truncations
    of 2 steps equals its estimate over the whole 4-step chain at once (same ε, same x_T): the state carries
    across truncations and the terminal reward is weighted by that chain's ε. PES differs (fresh ε each
    truncation) but is unbiased for the same objective: finite, and not the same numbers."""
    problem = _chain(tiny_task)
    theta = problem.initial_theta()
    whole = ESSingle(problem, num_particles=4, sigma=0.05, truncation_length=4, stagger=False, seed=3)
    split = ESSingle(problem, num_particles=4, sigma=0.05, truncation_length=2, stagger=False, seed=3)
    torch.testing.assert_close(whole.epsilon, split.epsilon)
    expected, info = whole.estimate(theta)
    first, first_info = split.estimate(theta)
    second, _ = split.estimate(theta)
    assert first.abs().max() == 0 and first_info["loss"] == 0  # no chain ended in the first truncation
    assert expected.abs().max() > 0 and info["loss"] != 0
    torch.testing.assert_close(first + second, expected, rtol=1e-4, atol=1e-6)
    pes = PES(problem, num_particles=4, sigma=0.05, truncation_length=2, stagger=False, seed=3)
    pes_total = pes.estimate(theta)[0] + pes.estimate(theta)[0]
    assert torch.isfinite(pes_total).all() and not torch.allclose(pes_total, expected)


def test_staggered_particles_start_mid_chain(tiny_task):
    problem = _chain(tiny_task)
    state = problem.init_state(4, torch.tensor([0, 2, 0, 2]))
    assert (state["x"][[0, 2]] == 0).all() and (state["x"][[1, 3]] != 0).any()
    _, losses, resets = problem.unroll(state, problem.initial_theta().expand(4, -1), 2, torch.Generator(),
                                       torch.tensor([0, 1, 0, 1]), 2)
    assert resets[-1].tolist() == [False, True, False, True]
    assert (losses[-1, [1, 3]] != 0).all() and (losses[:, [0, 2]] == 0).all()


@pytest.mark.parametrize("estimator", ["es_single", "pes"])
def test_a_short_es_run_on_the_chain_raises_the_reward(tiny, estimator):
    """outer=es_single / outer=pes on the diffusion task, through the runner's loop: the ink reward of the
    evaluation samples rises over a few outer steps (8 particles, truncations of half the chain)."""
    from metaopt.outer import UnrolledLoop
    from metaopt.tasks.diffusion import DigitsDiffusion

    task = DigitsDiffusion(**tiny, reward="ink")
    kind = ESSingle if estimator == "es_single" else PES
    gains = []
    for seed in (0, 1):
        loop = UnrolledLoop(task, functools.partial(kind, num_particles=8, sigma=0.05, truncation_length=2),
                            functools.partial(torch.optim.Adam, lr=3e-2), generator=torch.Generator().manual_seed(seed),
                            problem={"theta_scale": 1.0, "eval_samples": 16, "horizon": 200}, steps=16,
                            eval_every=0)
        before = loop.evaluate()["eval_reward"]
        for _ in range(16):
            metrics = loop.step()
        gains.append(loop.evaluate()["eval_reward"] - before)
        assert metrics["reward_queries"] == 8 * 8 * tiny["batch_size"]  # 16 truncations of 2 steps: 8 chains
    assert sum(gains) / len(gains) > 0.03, gains


def test_bad_chain_settings_are_refused_before_any_work(tiny_task, monkeypatch):
    from metaopt.outer import UnrolledLoop
    from metaopt.tasks.diffusion import SamplingChain
    from metaopt.unrolled import TBPTT

    def refuse():
        raise AssertionError("the UNet was built before the arguments were checked")

    monkeypatch.setattr(tiny_task, "pretrained_unet", refuse)
    adam = functools.partial(torch.optim.Adam, lr=1e-2)
    with pytest.raises(ValueError, match=r"invalid outer.estimator.truncation_length: 3 \(allowed: an integer in "
                                         r"\[1, task.num_inference_steps=4\].*dividing it \(ES-Single"):
        UnrolledLoop(tiny_task, functools.partial(ESSingle, num_particles=2, truncation_length=3), adam)
    with pytest.raises(ValueError, match=r"invalid outer.estimator.truncation_length: 10 \(allowed: an integer in "
                                         r"\[1, task.num_inference_steps=4\]"):
        UnrolledLoop(tiny_task, functools.partial(PES, num_particles=2, truncation_length=10), adam)
    with pytest.raises(ValueError, match=r"invalid outer.estimator: 'TBPTT' \(allowed: an ES estimator"):
        UnrolledLoop(tiny_task, functools.partial(TBPTT, num_particles=2, truncation_length=1), adam)
    with pytest.raises(ValueError, match=r"invalid outer.problem.compile: True"):
        UnrolledLoop(tiny_task, functools.partial(PES, num_particles=2, truncation_length=1), adam,
                     problem={"compile": True})
    with pytest.raises(ValueError, match=r"invalid outer.problem.theta_scale: 0"):
        SamplingChain(tiny_task, theta_scale=0)


def test_resume_on_the_chain_continues_exactly(tiny_task):
    """The loop's state dict (θ, Adam, ES-Single's particle images and ε, the problem's query count) resumes
    mid-chain to the same θ as an uninterrupted run."""
    import copy

    from metaopt.outer import UnrolledLoop

    def fresh():
        return UnrolledLoop(tiny_task, functools.partial(ESSingle, num_particles=2, sigma=0.05, truncation_length=2),
                            functools.partial(torch.optim.Adam, lr=1e-2), generator=torch.Generator().manual_seed(4),
                            problem={"theta_scale": 1.0, "eval_samples": 2}, steps=4, eval_every=0)

    loop = fresh()
    loop.step()
    queries = loop.problem.reward_queries
    state = copy.deepcopy(loop.state_dict())
    loop.step()
    other = fresh()
    other.load_state_dict(state)
    assert other.problem.reward_queries == queries
    other.step()
    torch.testing.assert_close(other.theta, loop.theta, rtol=0, atol=0)
    assert other.problem.reward_queries == loop.problem.reward_queries


def test_an_es_run_writes_adapters_the_mix_command_reads(tiny_task, tmp_path):
    """The end of an ES-Single run (``plots``) writes ``lora.pt``, ``samples.png`` and ``comparison.md`` with the
    evaluation metrics; ``metaopt.diffusion.mix`` at scale 1 samples exactly the run's fine-tuned model."""
    from metaopt.diffusion.mix import mix_runs
    from metaopt.outer import UnrolledLoop

    loop = UnrolledLoop(tiny_task, functools.partial(ESSingle, num_particles=2, sigma=0.05, truncation_length=4),
                        functools.partial(torch.optim.Adam, lr=1e-2), generator=torch.Generator().manual_seed(0),
                        problem={"theta_scale": 1.0, "eval_samples": 3}, steps=1, eval_every=0)
    loop.step()
    loop.summary()
    loop.plots(tmp_path)
    assert (tmp_path / "samples.png").exists() and "eval_reward" in (tmp_path / "comparison.md").read_text()
    theta = loop.theta.detach()
    assert not torch.equal(theta, loop.theta_start)
    result = mix_runs([tmp_path], [[1.0]], samples=3, seed=0)
    torch.testing.assert_close(result["rows"][0]["images"], loop.problem.samples(theta), rtol=1e-4, atol=1e-4)
