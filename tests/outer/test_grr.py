"""Generalized Ridge Rider: diverse IPD solutions from one start, checkpoints, refusals."""

import functools
import json
import math
import shutil

import pytest
import torch

from metaopt.optim import APO
from metaopt.outer import GRRLoop
from metaopt.outer.pairing import PairingError, check_pairing
from metaopt.runner.checkpoint import load_checkpoint
from metaopt.tasks import BilinearGame, IteratedPrisonersDilemma
from tests.conftest import run_cli


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


# IPD, naive learners, tiny GRR: 4 ascent steps (steps 1-4), branching at step 5, 6 steps; a checkpoint at
# step 3, in the ascent.
CLI = ["task=ipd", "outer=grr", "optimizer=sgd", "optimizer.lr=1.0", "task.init_scale=0.0", "outer.steps=6",
       "outer.ascent_steps=4", "outer.lyapunov_steps=3", "outer.num_directions=2", "outer.eval_every=4",
       "log_every=2", "checkpoint_every=3"]


def _run_results(folder):
    summary = json.loads((folder / "summary.json").read_text())
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    solutions = json.loads((folder / "grr_solutions.json").read_text())
    return {k: v for k, v in summary.items() if k not in ("train_seconds", "startup_seconds")}, lines, solutions


@pytest.mark.usefixtures("one_thread")
def test_a_grr_run_resumed_from_the_command_line_ends_as_an_uninterrupted_one(make_config, tmp_path):
    """A run interrupted after its last checkpoint (step 3, in the ascent: its folder as the run left it,
    without the outputs of the end), resumed with ``python -m metaopt.run … resume=true``: through the
    rest of the ascent, the branching and the branches, the metrics, summary and solutions are those of
    the uninterrupted run. (A resume after the branching: test_resume_from_a_state_dict_continues_exactly.)"""
    from metaopt.run import run

    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run(make_config(*CLI), reference)
    shutil.copytree(reference, interrupted)
    for name in ("summary.json", "grr_solutions.json", "grr_solutions.md", "grr_branches.png"):
        (interrupted / name).unlink()
    checkpoint = load_checkpoint(interrupted / "checkpoint.pt")
    assert checkpoint["step"] == 3 and checkpoint["loop"]["branches"] is None   # still ascending
    lines = (interrupted / "metrics.jsonl").read_text().splitlines()
    logged = [line for line in lines if json.loads(line)["step"] <= 3]           # what it had logged by then
    (interrupted / "metrics.jsonl").write_text("\n".join(logged) + "\n")
    result = run_cli(*CLI, "resume=true", "logger=none", "progress=false", "threads=1",
                     f"hydra.run.dir={interrupted}")
    assert result.returncode == 0, result.stderr
    assert _run_results(interrupted) == _run_results(reference)
    summary = _run_results(reference)[0]
    assert summary["steps"] == 6 and summary["num_solutions"] >= 1 and len(lines) == 3 > len(logged)


def test_resume_refuses_a_checkpoint_whose_unset_phases_resolved_otherwise():
    game, sgd = BilinearGame(dim=2), functools.partial(torch.optim.SGD, lr=0.1)
    short = GRRLoop(game, sgd, steps=6)            # ascent_steps unset: min(10, steps - 1) = 5
    longer = GRRLoop(game, sgd, steps=20)          # 10
    with pytest.raises(ValueError, match=r"invalid outer.ascent_steps: 10 \(allowed: 5, as in the checkpoint"):
        longer.load_state_dict(short.state_dict())


@pytest.mark.usefixtures("one_thread")
def test_the_gan_mixture_under_default_settings_gets_the_short_ascent_and_runs(make_config):
    """``task=gan_mixture outer=grr``: the task suggests one torch thread (hints/one_thread); ω (~108k
    numbers with Adam) is past large_size, so the loop picks 4 ascent steps over 4 rounds; an ascent step,
    the branching (Arnoldi on JVPs) and a round of the vmapped branches run on it."""
    from hydra.utils import instantiate

    cfg = make_config("task=gan_mixture", "outer=grr")
    assert cfg.threads == 1 and make_config("task=gan_mixture", "threads=2").threads == 2   # suggested, not forced
    assert make_config("task=ipd", "outer=grr").threads is None
    torch.manual_seed(0)
    task, optimizer = instantiate(cfg.task), instantiate(cfg.optimizer)
    loop = instantiate(cfg.outer)(task=task, optimizer=optimizer, generator=torch.Generator().manual_seed(0))
    assert loop.large and (loop.ascent_steps, loop.lyapunov_steps) == (4, 4) and loop.num_steps == 200
    loop = instantiate(cfg.outer, ascent_steps=1, lyapunov_steps=2)(task=task, optimizer=optimizer,
                                                                  generator=torch.Generator().manual_seed(0))
    first = loop.step()
    assert math.isfinite(first["lyapunov_top"]) and not torch.equal(loop.start, loop.initial_start)
    second = loop.step()
    assert len(loop.branches) == 4 and loop.rounds == 1 and set(second) >= {"generator_objective",
                                                                              "discriminator_objective"}
    moved = [float((b["omega"][: loop.dynamics.num_params] - loop.start).norm()) for b in loop.branches]
    assert all(m > 0.5 for m in moved)   # each branch starts branch_scale = 1 away and has played a round


@pytest.mark.usefixtures("one_thread")
def test_an_ascent_optimizer_gives_the_map_the_start_ascends_and_adam_still_follows():
    """Adam players, SGD's map for the ascent: the exponents are of the map on θ alone (no Adam buffers)
    and rise; the branches carry Adam's state."""
    from metaopt.tasks import GANMixture

    torch.manual_seed(0)
    game = GANMixture(hidden_sizes=(8,), batch_size=32, num_eval_samples=200)
    loop = GRRLoop(game, functools.partial(torch.optim.Adam, lr=1e-3), steps=6, ascent_steps=4, lyapunov_steps=4,
                   ascent_optimizer=functools.partial(torch.optim.SGD, lr=0.05))
    assert loop.ascent_dynamics.size == loop.dynamics.num_params == loop.frame.shape[0]
    assert loop.dynamics.size == 3 * loop.dynamics.num_params   # θ and Adam's two moments
    for _ in range(6):
        loop.step()
    assert sum(loop.exponents[-1]) > sum(loop.exponents[0])
    assert all(b["omega"].numel() == loop.dynamics.size for b in loop.branches)
