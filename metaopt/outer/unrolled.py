"""``outer=tbptt|full_es|truncated_es|pes|es_single``: learn θ of an unrolled problem with an estimator."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from metaopt.checks import require, target_class
from metaopt.optim.apo.step import meta_learns
from metaopt.optim.specs import SPECS, spec_for
from metaopt.tasks.data import Split, SplitData
from metaopt.tasks.diffusion.base import DiffusionTask
from metaopt.tasks.diffusion.chain import SamplingChain
from metaopt.tasks.games.game import Game
from metaopt.tasks.supervised import SupervisedTask
from metaopt.tasks.unrolled.apo_run import APOTrainingRun
from metaopt.tasks.unrolled.game_run import GameRun
from metaopt.tasks.unrolled.problem import UnrolledProblem
from metaopt.tasks.unrolled.training_run import TrainingRun
from metaopt.tasks.unrolled.tuning import TunedRun
from metaopt.unrolled.es_single import ESSingle

__all__ = ["UnrolledLoop"]


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def init_distributed(device: torch.device) -> None:
    """Join the ``torchrun`` process group (gloo on CPU, nccl on CUDA) when there are several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def _rank_device(task: SupervisedTask) -> None:
    """Under ``torchrun`` with CUDA, move the task's data to this process's GPU (``cuda:LOCAL_RANK``)."""
    if task.device.type != "cuda" or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    torch.cuda.set_device(device)
    task.data = SplitData(*(Split(s.inputs.to(device), s.targets.to(device)) for s in task.data))
    task.device = device


class UnrolledLoop:
    """Outer loop: ``θ ← outer_optimizer(θ, ĝ)`` with ``ĝ`` from ``estimator`` (one truncation per step).

    ``task`` is an ``UnrolledProblem`` (``InfluenceBalancing``, ``Toy2DSchedule``), a ``SupervisedTask``
    (wrapped in a ``TrainingRun``: a whole training run; with APO, an ``APOTrainingRun``, whose θ are
    APO's own hyperparameters), a ``Game`` (wrapped in a ``GameRun``: a whole game run) or a
    ``DiffusionTask`` (wrapped in a ``SamplingChain``: its DDIM chain, θ its LoRA adapters, updated by
    ``outer_optimizer``; ``problem`` the chain's arguments: ``theta_scale``, ``lora_rank``, ``eval_samples``,
    …). The supervised and game wrappers train with ``optimizer``, the factory of ``cfg.optimizer``, through its
    functional core (its spec, ``metaopt.optim.specs``): θ are its hyperparameters, by default its
    natural knobs from the values the factory carries; ``problem`` holds the wrapper's arguments
    (``tuned``, ``schedule``, ``per_layer``, ``horizon``, …). ``estimator`` and ``outer_optimizer`` are
    factories (``_partial_`` configs); any ``torch.optim`` or metaopt optimizer works as the outer
    optimizer. ``grid`` (wrapped tasks only), e.g. ``{lr: [...], momentum: [...]}``, is a set of fixed
    settings evaluated at the end for comparison with the start and the tuned θ.

    Under ``torchrun`` every process holds a block of the particles; the estimate is all-reduced, so θ
    and the outer optimizer state are identical on every rank. The state dict holds this rank's
    particle states, accumulators, generators, θ and the outer optimizer state.
    """

    accepts = ("supervised", "game", "unrolled", "diffusion")

    @staticmethod
    def optimizer_refusal(optimizer: type, kind: str | None, outer: Any = None) -> str | None:
        estimator = target_class((outer or {}).get("estimator"))
        if kind == "diffusion":  # θ are the LoRA adapters, updated by outer.outer_optimizer: cfg.optimizer unused
            if estimator is not None and getattr(estimator, "differentiates", False):
                return (f"{estimator.__name__} on a diffusion task's sampling chain: the ES loops copy θ into the "
                        "adapters, which is not differentiable; truncated backpropagation through the chain is "
                        "DRaFT-K (use outer=draft outer.variant=truncated, or an ES loop: outer=es_single, pes, "
                        "truncated_es, full_es)")
            return None
        if kind == "unrolled" or spec_for(optimizer) is not None:
            return None
        if meta_learns(optimizer) and kind in ("supervised", None):
            if estimator is not None and getattr(estimator, "differentiates", False):
                return (f"{estimator.__name__} differentiates through the inner steps, and a training run with "
                        f"{optimizer.__name__} is not differentiable in its hyperparameters: use an ES loop "
                        "(outer=pes, es_single, truncated_es, full_es) to tune them")
            return None
        known = ", ".join(s.optimizer.__name__ for s in SPECS.values())
        why = (f"{optimizer.__name__} has no functional core: an ES/TBPTT loop runs every particle's whole "
               f"{'game' if kind == 'game' else 'training run'} through one (with a spec: {known}; "
               "declare yours with metaopt.optim.specs.register)")
        if meta_learns(optimizer):
            why += (f"; {optimizer.__name__} needs a supervised model: train with outer=apo, or tune its base "
                    "optimizer here (e.g. optimizer=sgd_momentum)")
        return why

    def __init__(self, task: SupervisedTask | UnrolledProblem, estimator: Callable, outer_optimizer: Callable,
                 optimizer: Callable | str | None = None, generator: torch.Generator | None = None,
                 problem: Mapping[str, Any] | None = None, steps: int = 500, eval_every: int = 100,
                 grid: Mapping[str, Sequence[float]] | None = None):
        require("outer.steps", steps, isinstance(steps, int) and steps > 0, "a positive integer")
        require("outer.eval_every", eval_every, isinstance(eval_every, int) and eval_every >= 0,
                "a non-negative integer (0: only at the end)")
        problem_args = dict(_plain(problem) or {})
        optimizer = optimizer if optimizer is not None else "sgd"
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        estimator_type = getattr(estimator, "func", estimator)
        if isinstance(task, UnrolledProblem):
            self.problem = task
        elif isinstance(task, DiffusionTask):
            # The shared config's training-run arguments do not apply to a sampling chain (its horizon is
            # task.num_inference_steps, its θ the LoRA adapters): refuse a compile that would be ignored.
            require("outer.problem.compile", problem_args.get("compile"), not problem_args.pop("compile", False),
                    "false for a diffusion task (compile=true applies to supervised training runs)")
            for key in ("tuned", "schedule", "per_layer", "horizon", "meta_split"):
                problem_args.pop(key, None)
            require("outer.estimator", getattr(estimator_type, "__name__", repr(estimator_type)),
                    not getattr(estimator_type, "differentiates", False),
                    "an ES estimator (pes, es_single, truncated_es, full_es): the sampling chain's θ are copied "
                    "into the LoRA adapters (TBPTT through the chain is outer=draft outer.variant=truncated)")
            # the estimator's truncation against the chain's length, before the UNet is built (or pretrained)
            truncation = getattr(estimator, "keywords", {}).get("truncation_length")
            chain_steps = task.num_inference_steps
            require("outer.estimator.truncation_length", truncation, truncation is None or (
                isinstance(truncation, int) and 1 <= truncation <= chain_steps and (
                    chain_steps % truncation == 0 or estimator_type is not ESSingle)),
                    f"an integer in [1, task.num_inference_steps={chain_steps}] (the sampling chain's length)"
                    + (", dividing it (ES-Single keeps one ε per chain)" if estimator_type is ESSingle else ""))
            self.problem = SamplingChain(task, seed=int(torch.randint(2**31 - 1, (1,), generator=generator)),
                                         **problem_args)
        elif isinstance(task, Game):
            # Supervised-only arguments of the shared config: refuse a value that would be ignored.
            require("outer.problem.compile", problem_args.get("compile"), not problem_args.pop("compile", False),
                    "false for a game (compile=true applies to supervised training runs)")
            problem_args.pop("meta_split", None)
            self.problem = GameRun(task, optimizer, **problem_args)
        else:
            require("task", type(task).__name__, isinstance(task, SupervisedTask),
                    "a SupervisedTask, a Game or an UnrolledProblem")
            _rank_device(task)
            run = APOTrainingRun if meta_learns(optimizer) else TrainingRun
            self.problem = run(task, optimizer, **problem_args)
        require("outer.estimator", getattr(estimator_type, "__name__", repr(estimator_type)),
                getattr(self.problem, "differentiable", True) or not getattr(estimator_type, "differentiates", False),
                f"an ES estimator (pes, es_single, truncated_es, full_es): {type(self.problem).__name__} is not "
                "differentiable in θ")
        self.grid = {k: list(v) for k, v in (_plain(grid) or {}).items()}
        require("outer.grid", self.grid, not self.grid or isinstance(self.problem, TunedRun),
                "null unless the task is a SupervisedTask or a Game (whose optimizer is tuned)")
        init_distributed(self.problem.device)
        self.num_steps = steps
        self.eval_every = eval_every
        self.estimator = estimator(problem=self.problem, seed=seed)
        self.theta = torch.nn.Parameter(self.problem.initial_theta())
        self.theta_start = self.theta.detach().clone()
        self.outer_optimizer = outer_optimizer([self.theta])
        # θ of every step, for the report (not for a problem with a large θ, e.g. a diffusion model's adapters)
        self.record_trajectory = getattr(self.problem, "record_trajectory", True)
        self.trajectory: list[list[float]] = [self.theta.tolist()] if self.record_trajectory else []
        self._final: dict[str, dict[str, float]] | None = None

    @property
    def steps_spent(self) -> int:
        """Inner steps the estimator has run so far, over all particles (``GradientEstimator.steps_spent``)."""
        return self.estimator.steps_spent

    def step(self) -> dict[str, float]:
        gradient, info = self.estimator.estimate(self.theta.detach())
        # Every particle diverged: the estimate is NaN and the runner stops on the NaN loss; θ (and the
        # outer optimizer's state, which a checkpoint keeps) stay as they were.
        all_diverged = info["num_diverged"] == self.estimator.num_particles
        if not all_diverged:
            self.outer_optimizer.zero_grad(set_to_none=True)
            self.theta.grad = gradient.to(self.theta.dtype)
            self.outer_optimizer.step()
        if self.record_trajectory:
            self.trajectory.append(self.theta.tolist())
        counters = getattr(self.problem, "counters", None)  # e.g. a sampling chain's reward queries
        return {"unroll_loss": float("nan") if all_diverged else info["loss"],
                "estimate_norm": float(gradient.norm()), "num_diverged": float(info["num_diverged"]),
                "steps_spent": float(self.steps_spent), **self.problem.describe(self.theta.detach()),
                **(counters() if counters else {})}

    def evaluate(self) -> dict[str, float]:
        return self.problem.evaluate(self.theta.detach())

    @property
    def eval_images(self):
        """The problem's images of each evaluation (e.g. a sampling chain's samples), where it makes some."""
        images = getattr(self.problem, "eval_images", None)
        return None if images is None else (lambda folder, step: images(self.theta.detach(), folder, step))

    def _comparison(self) -> dict[str, dict[str, float]]:
        """Evaluations of the starting θ, the tuned θ and (a tuned optimizer with ``grid``) the best grid point,
        each with ``steps_spent``, the inner steps its search cost: 0 for the start, the estimator's
        particle-steps for the tuned θ, every grid point's whole run (``points × horizon``) for the grid's
        best. The evaluations made for this comparison (one run per row) are not counted."""
        tuned_cost = {"steps_spent": float(self.steps_spent)}
        if not isinstance(self.problem, TunedRun):
            return {"start": {**self.problem.evaluate(self.theta_start), "steps_spent": 0.0},
                    "tuned": {**self.evaluate(), **tuned_cost}}
        candidates = [self.theta_start, self.theta.detach()]
        settings = []
        if self.grid:
            settings = [dict(zip(self.grid, values)) for values in itertools.product(*self.grid.values())]
        candidates += [self.problem.theta_for(**s) for s in settings]
        results = self.problem.evaluate_many(torch.stack(candidates))
        out = {"start": {**results[0], "steps_spent": 0.0}, "tuned": {**results[1], **tuned_cost}}
        if settings:
            best = min(range(len(settings)), key=lambda i: results[2 + i]["meta_objective"])
            setting = {f"setting.{k}": float(v) for k, v in settings[best].items()}
            out["grid_best"] = {**results[2 + best], "steps_spent": float(len(settings) * self.problem.horizon),
                                **setting}
        return out

    def summary(self) -> dict[str, Any]:
        self._final = self._comparison()
        out: dict[str, Any] = dict(self._final["tuned"])
        out.update({f"theta.{k}": v for k, v in self.problem.describe(self.theta.detach()).items()})
        if hasattr(self.problem, "counters"):
            out.update(self.problem.counters())
        for name, metrics in self._final.items():
            if name != "tuned":
                out.update({f"{name}.{k}": v for k, v in metrics.items()})
        return out

    def state_dict(self) -> dict[str, Any]:
        state = {"theta": self.theta.detach().clone(), "outer_optimizer": self.outer_optimizer.state_dict(),
                 "estimator": self.estimator.state_dict(), "trajectory": [list(t) for t in self.trajectory]}
        if hasattr(self.problem, "state_dict"):  # e.g. a sampling chain's count of reward queries
            state["problem"] = self.problem.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.theta.copy_(state["theta"])
        self.outer_optimizer.load_state_dict(state["outer_optimizer"])
        self.estimator.load_state_dict(state["estimator"])
        self.trajectory = [list(t) for t in state["trajectory"]]
        if hasattr(self.problem, "load_state_dict"):
            self.problem.load_state_dict(state["problem"])

    def plots(self, folder: Path) -> list[Path]:
        from metaopt.outer.unrolled_report import plot_unrolled_run, write_comparison_table

        final = self._final if self._final is not None else self._comparison()
        paths = []
        if self.record_trajectory:
            trajectory = torch.tensor(self.trajectory)
            paths.append(plot_unrolled_run(self.problem, trajectory, final, Path(folder) / "unrolled.png"))
        # a problem whose θ is a product (a learned optimizer, a diffusion model's LoRA adapters)
        save = getattr(self.problem, "save", None)
        if save is not None:
            saved = save(self.theta.detach(), Path(folder))
            paths += saved if isinstance(saved, list) else []  # figures to log
        write_comparison_table(self.problem, self.theta_start, self.theta.detach(), final,
                               Path(folder) / "comparison.md")
        return paths
