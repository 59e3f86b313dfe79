"""Generalized Ridge Rider: diverse IPD solutions from one start, checkpoints, refusals."""

import functools

import pytest
import torch

from metaopt.optim import APO
from metaopt.outer import GRRLoop
from metaopt.outer.pairing import PairingError, check_pairing
from metaopt.tasks import BilinearGame, IteratedPrisonersDilemma


def _loop(steps=158):
    return GRRLoop(IteratedPrisonersDilemma(init_scale=0.0), functools.partial(torch.optim.SGD, lr=1.0),
                   steps=steps, ascent_steps=8, lyapunov_steps=10, ascent_lr=1.5, num_directions=3, branch_scale=2.0)


@pytest.mark.usefixtures("one_thread")
def test_grr_finds_defection_and_reciprocity_from_one_start(tmp_path):
    loop = _loop()
    for _ in range(loop.num_steps):
        metrics = loop.step()
    assert set(metrics) >= {"player1_objective", "lyapunov_top"}
    assert loop.exponents[-1][0] > loop.exponents[0][0]   # the ascent raised the top exponent
    solutions = loop.solutions()
    assert len(solutions) >= 2
    rewards = sorted(round(s["metrics"]["player1_value"]) for s in solutions)
    assert rewards[0] == -2 and rewards[-1] == -1   # mutual defection and mutual cooperation
    cooperative = next(s for s in solutions if s["metrics"]["player1_value"] > -1.1)["metrics"]
    assert cooperative["player1_p_cooperate_CC"] > 0.9 and cooperative["player1_p_cooperate_CD"] < 0.1  # reciprocity
    paths = loop.plots(tmp_path)
    assert (tmp_path / "grr_branches.png") in paths and (tmp_path / "grr_solutions.md").exists()


@pytest.mark.usefixtures("one_thread")
def test_resume_from_a_state_dict_continues_exactly():
    game = BilinearGame(dim=2)
    make = functools.partial(GRRLoop, game, functools.partial(torch.optim.SGD, lr=0.1), steps=8, ascent_steps=3,
                             lyapunov_steps=4)
    torch.manual_seed(0)
    whole = make()
    torch.manual_seed(0)
    first = make()
    for step in range(8):
        whole.step()
        if step < 4:   # past the branching
            first.step()
    torch.manual_seed(0)
    second = make()
    second.load_state_dict(first.state_dict())
    for _ in range(4):
        second.step()
    for a, b in zip(whole.branches, second.branches):
        torch.testing.assert_close(a["omega"], b["omega"], rtol=0, atol=0)
    assert whole.exponents == second.exponents


def test_optimizers_without_a_functional_core_and_bad_settings_are_refused():
    with pytest.raises(PairingError, match="APO has no functional core: GRR.*use one of"):
        check_pairing(GRRLoop, IteratedPrisonersDilemma, APO)
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match=r"invalid outer.ascent_steps: 5 \(allowed: an integer from 0 to steps - 1"):
        GRRLoop(BilinearGame(dim=1), sgd, steps=5, ascent_steps=5)
    with pytest.raises(ValueError, match=r"invalid outer.num_exponents: 3 \(allowed: at most the size"):
        GRRLoop(BilinearGame(dim=1), sgd, num_exponents=3)
