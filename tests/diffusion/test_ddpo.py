"""DDPO's clipped objective: its gradient against the analytic one on a one-step chain, on- and off-policy."""

import math

import pytest
import torch

from metaopt.diffusion import DDIMChain, normalized_advantages, ppo_loss, sample_trajectory, step_log_prob

ALPHA, ALPHA_PREV, ETA = 0.3, 0.8, 1.0
CHAIN = DDIMChain([500], [ALPHA], [ALPHA_PREV])


def _linear_denoiser(weight):
    return lambda x, t: weight * x


def _analytic_gradient(weight, old_weight, state, next_state, advantages, clip_range):
    """d/dw of mean_b max(−A ρ, −A clip(ρ)) for ε(x) = w·x, by hand: the mean of the step is
    m(w) = √ᾱ_prev (x − √(1−ᾱ) w x)/√ᾱ + c w x with c = √(1−ᾱ_prev−σ²), so dm/dw = x (c − √ᾱ_prev √(1−ᾱ)/√ᾱ)
    and d log π/dw = Σ (y − m)/σ² · dm/dw; the clipped branch has no gradient."""
    std = CHAIN.step_std(0, ETA)
    c = math.sqrt(1 - ALPHA_PREV - std ** 2)
    slope = c - math.sqrt(ALPHA_PREV) * math.sqrt(1 - ALPHA) / math.sqrt(ALPHA)

    def mean(w):
        return math.sqrt(ALPHA_PREV) * (state - math.sqrt(1 - ALPHA) * w * state) / math.sqrt(ALPHA) + c * w * state

    def log_prob(w):
        return (-(next_state - mean(w)) ** 2 / (2 * std ** 2) - math.log(std)
                - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)

    ratio = torch.exp(log_prob(weight) - log_prob(old_weight))
    dlog_prob = ((next_state - mean(weight)) / std ** 2 * state * slope).flatten(1).sum(1)
    unclipped = -advantages * ratio >= -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    return (torch.where(unclipped, -advantages * ratio * dlog_prob, torch.zeros_like(ratio))).mean(), unclipped


@pytest.mark.parametrize("shift,clip_range", [(0.0, 0.2), (0.05, 0.2), (0.3, 0.1)])
def test_ppo_gradient_matches_the_analytic_gradient_on_a_one_step_chain(shift, clip_range):
    torch.set_default_dtype(torch.float64)
    try:
        old_weight = 0.4
        noise = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        trajectory = sample_trajectory(_linear_denoiser(old_weight), CHAIN, noise, ETA,
                                       torch.Generator().manual_seed(1))
        assert trajectory.stochastic == [0]
        rewards = torch.tensor([0.1, 2.0, -1.0, 0.5, 0.0, 3.0])
        advantages = normalized_advantages(rewards)
        assert abs(advantages.mean()) < 1e-12 and abs(advantages.std(unbiased=False) - 1) < 1e-6
        weight = torch.tensor(old_weight + shift, requires_grad=True)
        log_probs = step_log_prob(_linear_denoiser(weight), CHAIN, 0, noise, trajectory.states[1], ETA)
        if shift == 0.0:  # on-policy: the sampler's own log-probabilities
            torch.testing.assert_close(log_probs.detach(), trajectory.log_probs[0])
        loss = ppo_loss(log_probs, trajectory.log_probs[0], advantages, clip_range)
        (gradient,) = torch.autograd.grad(loss, weight)
        expected, unclipped = _analytic_gradient(old_weight + shift, old_weight, noise, trajectory.states[1],
                                                 advantages, clip_range)
        torch.testing.assert_close(gradient, expected)
        if shift == 0.3:  # far off-policy: some samples are clipped, and their gradient is dropped
            assert not unclipped.all()
        assert gradient.abs() > 0
    finally:
        torch.set_default_dtype(torch.float32)
