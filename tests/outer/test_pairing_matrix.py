"""The pairing matrix: every optimizer config × every outer config, on a small task of the kind the outer
loop drives, either runs with default settings (tiny step counts) or is refused before any work with an
error that names the pairing, the reason and what to use instead. The README's matrix is this table."""

import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from metaopt.outer.pairing import PairingError
from metaopt.run import run

CONF = Path(__file__).resolve().parents[2] / "metaopt" / "conf"
OPTIMIZERS = sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml"))
OUTERS = ["none", "apo", "game", "grr", "tbptt", "full_es", "truncated_es", "pes", "es_single", "bilevel_cold",
          "bilevel_warm", "draft", "ddpo", "draft_es"]
ES = ["tbptt", "full_es", "truncated_es", "pes", "es_single"]
APO = ["apo_lr", "apo_precond"]
DIFFUSION = ["draft", "ddpo", "draft_es"]
# a DDPM pretrained for a few steps (cached in a session tmp folder), 2 DDIM steps, 2 images a step
TINY_DIFFUSION = ["outer.steps=2", "outer.eval_every=0", "outer.eval_samples=4", "task.pretrain_steps=5",
                  "task.pretrain_batch_size=8", "task.classifier_steps=5", "task.num_inference_steps=2",
                  "task.batch_size=2"]

# an ES loop on the diffusion task's sampling chain (2 DDIM steps): 1 antithetic pair, truncations of 1 step
TINY_CHAIN = [o for o in TINY_DIFFUSION if not o.startswith("outer.eval_samples")] + [
    "outer.estimator.num_particles=2", "+outer.problem.eval_samples=4"]

# Tiny settings of each kind of loop (the defaults otherwise).
TINY = {
    "none": ["outer.steps=3", "outer.eval_every=0"],
    "apo": ["outer.steps=3", "outer.eval_every=0", "optimizer.meta_interval=2"],
    "game": ["outer.steps=3", "outer.eval_every=0"],
    "grr": ["outer.steps=4", "outer.ascent_steps=2", "outer.lyapunov_steps=3", "outer.eval_every=0"],
    **{es: ["outer.steps=2", "outer.eval_every=0", "outer.problem.horizon=6", "outer.estimator.num_particles=4",
            "outer.grid=null"] + ([] if es == "full_es" else ["outer.estimator.truncation_length=3"])
       for es in ES},
    "bilevel_cold": ["outer.steps=2", "outer.eval_every=0", "outer.inner_steps=3", "outer.retrain_steps=3"],
    "bilevel_warm": ["outer.steps=2", "outer.eval_every=0", "outer.inner_steps=3", "outer.retrain_steps=3"],
    "draft": TINY_DIFFUSION + ["outer.variant=truncated", "outer.truncation_length=1"],
    "ddpo": TINY_DIFFUSION,
    "draft_es": TINY_DIFFUSION + ["outer.num_pairs=1"],
}
# The task of each kind: supervised for plain/APO training and the ES loops, a game for outer=game and the
# ES loops (a whole game run is an unrolled problem too), a bilevel problem for the bilevel loops.
TASKS = {"none": ["digits_mlp"], "apo": ["digits_mlp"], "game": ["bilinear_game"], "grr": ["ipd"],
         **{es: ["digits_mlp", "bilinear_game", "digits_diffusion"] for es in ES},
         "bilevel_cold": ["digits_l2"], "bilevel_warm": ["digits_l2"],
         **{diffusion: ["digits_diffusion"] for diffusion in DIFFUSION}}


def expected_refusal(optimizer: str, outer: str, task: str) -> str | None:
    """The message a refused pairing must contain; ``None`` where it must run."""
    if task == "digits_diffusion" and outer == "tbptt":
        return "TBPTT on a diffusion task's sampling chain.*DRaFT-K"
    if optimizer not in APO or task == "digits_diffusion" and outer in ES:  # ES: θ are the LoRA adapters
        return None
    if outer in DIFFUSION:
        return "its meta-step needs a supervised model and batches, which a diffusion fine-tuning task"
    if outer in ES and task == "digits_mlp":  # APO's own hyperparameters, tuned over whole training runs
        return "TBPTT differentiates through the inner steps" if outer == "tbptt" else None
    return {"none": "never calls APO's meta_step", "apo": None, "game": "its meta-step needs a supervised model",
            "grr": "APO has no functional core: GRR",
            # bilevel_cold's default hypergradient (ift_cg) trains the inner problem with APO as it is;
            # bilevel_warm's (unroll) differentiates through the inner steps
            "bilevel_cold": None, "bilevel_warm": "APO has no functional core, which an unrolled hypergradient",
            }.get(outer, "APO has no functional core: an ES/TBPTT loop")


CASES = [(optimizer, outer, task) for outer in OUTERS for optimizer in OPTIMIZERS for task in TASKS[outer]]
# The optimizer whose runs also render their figures: the loops' plotting code runs once per (outer, task)
# pairing; the other optimizers' runs skip matplotlib's drawing (about half of a tiny run's time), not the
# plotting code itself.
RENDERED = "sgd"


@pytest.fixture
def figures_unrendered(monkeypatch):
    """Figures are built but neither laid out nor rasterised: ``savefig`` writes an empty file."""
    from matplotlib.figure import Figure

    monkeypatch.setattr(Figure, "tight_layout", lambda self, *args, **kwargs: None)
    monkeypatch.setattr(Figure, "savefig", lambda self, path, *args, **kwargs: Path(path).write_bytes(b""))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("optimizer,outer,task", CASES, ids=[f"{o}-{l}-{t}" for o, l, t in CASES])
def test_pairing_runs_or_is_refused_before_any_work(optimizer, outer, task, tmp_path, diffusion_cache, request):
    if optimizer != RENDERED:
        request.getfixturevalue("figures_unrendered")
    tiny = TINY[outer]
    if task == "digits_diffusion" and outer in ES:
        tiny = TINY_CHAIN + ([] if outer == "full_es" else ["outer.estimator.truncation_length=1"])
    overrides = [f"task={task}", f"optimizer={optimizer}", f"outer={outer}", "logger=none", "progress=false",
                 "name=matrix", *tiny]
    if outer == "apo" and optimizer not in APO:
        overrides.remove("optimizer.meta_interval=2")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    refusal = expected_refusal(optimizer, outer, task)
    if refusal is not None:
        with pytest.raises(PairingError, match=rf"invalid pairing.*{refusal}.*(use|train with|play)"):
            run(cfg, tmp_path)
        assert not list(tmp_path.iterdir()), "a refused pairing must fail before it writes anything"
        return
    summary = run(cfg, tmp_path)
    assert summary["steps"] == cfg.outer.steps
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged and all(math.isfinite(v) for record in logged for v in record.values()
                          if isinstance(v, float))


NOT_DIFFUSION = [outer for outer in OUTERS if outer not in DIFFUSION and outer not in ES]


@pytest.mark.parametrize("outer", NOT_DIFFUSION)
def test_the_other_loops_refuse_the_diffusion_task(outer, tmp_path):
    overrides = ["task=digits_diffusion", f"outer={outer}", "logger=none", "progress=false", "name=matrix"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with pytest.raises(PairingError, match=r"invalid pairing.*DigitsDiffusion is a diffusion task \(use outer=draft"):
        run(cfg, tmp_path)
    assert not list(tmp_path.iterdir())


def test_the_matrix_covers_every_config():
    assert set(OPTIMIZERS) >= {"sgd", "sgd_momentum", "adam", "adamw", "rmsprop", "adagrad", "complex_momentum",
                               "complex_adam", *APO}
    assert set(OUTERS) == {p.stem for p in (CONF / "outer").glob("*.yaml")} - {"unrolled"}
