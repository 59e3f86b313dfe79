"""The iterated prisoner's dilemma: exact discounted values against closed forms, and bad input."""

import pytest
import torch

from metaopt.tasks import IteratedPrisonersDilemma
from metaopt.tasks.games import ipd_values

SURE = 40.0   # a logit that is a sure move in float64: sigmoid(±40) = 1 or 0 to 1e-17
DEFECT = torch.full((5,), -SURE, dtype=torch.float64)
TIT_FOR_TAT = torch.tensor([SURE, SURE, -SURE, SURE, -SURE], dtype=torch.float64)  # start, CC, CD, DC, DD


@pytest.mark.parametrize("gamma", [0.5, 0.96])
def test_values_of_known_policies(gamma):
    game = IteratedPrisonersDilemma(gamma=gamma)
    cases = [(DEFECT, DEFECT, -2 / (1 - gamma), -2 / (1 - gamma)),
             (TIT_FOR_TAT, TIT_FOR_TAT, -1 / (1 - gamma), -1 / (1 - gamma)),
             # TFT cooperates once, then both defect forever
             (TIT_FOR_TAT, DEFECT, -3 - 2 * gamma / (1 - gamma), 0 - 2 * gamma / (1 - gamma))]
    for first, second, v1, v2 in cases:
        values = ipd_values(first, second, gamma, game.payoffs)
        torch.testing.assert_close(torch.stack(values), torch.tensor([v1, v2], dtype=torch.float64))


def test_values_are_the_discounted_sum_of_the_markov_chain():
    """Random stochastic policies: the closed form equals Σ_t γ^t E[r(s_t)] summed over 2000 steps."""
    generator = torch.Generator().manual_seed(0)
    first, second = (torch.randn(5, dtype=torch.float64, generator=generator) for _ in range(2))
    gamma, payoffs = 0.9, IteratedPrisonersDilemma().payoffs
    p, q = torch.sigmoid(first), torch.sigmoid(second)
    q_joint = q[1:][[0, 2, 1, 3]]

    def joint(a, b):
        return torch.stack([a * b, a * (1 - b), (1 - a) * b, (1 - a) * (1 - b)], -1)

    distribution, transition, total = joint(p[0], q[0]), joint(p[1:], q_joint), torch.zeros(2, dtype=torch.float64)
    for t in range(2000):
        total += gamma**t * distribution @ payoffs
        distribution = distribution @ transition
    torch.testing.assert_close(torch.stack(ipd_values(first, second, gamma, payoffs)), total)


def test_the_game_reports_rewards_per_step_and_bad_input_is_named():
    game = IteratedPrisonersDilemma()
    players = game.build_players()
    players["player1"].weight.data.copy_(DEFECT)
    players["player2"].weight.data.copy_(DEFECT)
    metrics = game.evaluate(players)
    assert abs(metrics["player1_value"] + 2) < 1e-9 and metrics["player1_p_cooperate_CC"] < 1e-9
    assert game.strategy(players).shape == (10,)
    with pytest.raises(ValueError, match=r"invalid task.gamma: 1.0 \(allowed: a number in \[0, 1\)\)"):
        IteratedPrisonersDilemma(gamma=1.0)
    with pytest.raises(ValueError, match="invalid task.payoffs"):
        IteratedPrisonersDilemma(payoffs=[[1, 2], [3, 4]])
