"""Meta-training a learned optimizer as an unrolled problem: θ are its weights, a particle is a whole
training run of an inner task sampled from a distribution, the meta-loss its normalised training loss.

(Metz et al., 2019; Vicol et al., 2021 (PES) and 2023 (ES-Single), whose largest experiments meta-train
learned optimizers this way.) Every ES/TBPTT estimator drives it as it drives any ``UnrolledProblem``:
``python -m metaopt.run task=lopt_digits outer=pes``.

Per particle the state holds the task it trains (an index into ``tasks``; a new one is drawn each time the
particle starts a run, from its data stream and episode count, so antithetic partners train the same
task from the same initialisation), and that task's parameters, momenta and second moments in one
zero-padded row (tasks differ in size). Each inner step groups the particles by task and steps each
group at once: ``torch.func.vmap`` of the task's gradient and of the learned optimizer's functional core,
with one row of θ per particle. The meta-loss of a step is the training minibatch loss before the update,
divided by the task's loss at its initialisation (full training split) and clipped at ``loss_clip``, so
that tasks of different scales weigh alike and a diverging run does not dominate the estimate.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call, grad_and_value, vmap

from metaopt.checks import require
from metaopt.optim.functional.learned import (
    FORMS,
    MOMENTUM_DECAYS,
    TIMESCALES,
    LearnedState,
    check_timescales,
    initial_weights,
    learned,
    num_weights,
)
from metaopt.tasks.lopt.distribution import InnerTask, digits_tasks
from metaopt.tasks.unrolled.problem import ParticleState, UnrolledProblem
from metaopt.tasks.unrolled.training_run import stream_batches

__all__ = ["LearnedOptimizerTraining"]

_K = len(MOMENTUM_DECAYS)
META_LOSSES = ("linear", "log")


class _Layout:
    """Where one task's parameters, momenta and second moments sit in a particle's row."""

    def __init__(self, inner: InnerTask):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.model = inner.task.build_model()
        self.model.requires_grad_(False)
        self.names = [n for n, _ in self.model.named_parameters()]
        self.shapes = [p.shape for p in self.model.parameters()]
        self.sizes = [p.numel() for p in self.model.parameters()]
        self.count = sum(self.sizes)
        self.width = (_K + 2) * self.count

    def split(self, rows: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], ...]:
        """``rows`` (n, ≥ width) as (params, momenta (K, *shape) each, second moments), batched over n."""
        n, offset = rows.shape[0], 0
        params, momenta, second = [], [], []
        for shape, size in zip(self.shapes, self.sizes):
            params.append(rows[:, offset: offset + size].reshape(n, *shape))
            start = self.count + _K * offset
            momenta.append(rows[:, start: start + _K * size].reshape(n, _K, *shape))
            start = (_K + 1) * self.count + offset
            second.append(rows[:, start: start + size].reshape(n, *shape))
            offset += size
        return tuple(params), tuple(momenta), tuple(second)

    def join(self, params, momenta, second, width: int) -> torch.Tensor:
        n = params[0].shape[0]
        parts = [t.reshape(n, -1) for t in params] + [t.reshape(n, -1) for t in momenta]
        parts += [t.reshape(n, -1) for t in second]
        row = torch.cat(parts, dim=1)
        return torch.nn.functional.pad(row, (0, width - row.shape[1]))


class LearnedOptimizerTraining(UnrolledProblem):
    """θ: the weights of a learned optimizer with ``hidden`` layers (``metaopt.optim.LearnedOptimizer``),
    starting from ``initial_weights`` (Adam-like; ``weights_seed``; Adam at ``initial_lr``, or, with
    ``final_lr``, annealed from ``initial_lr`` at step ``decay_from`` to ``final_lr`` at ``horizon`` by a
    cosine; time features at ``timescales``) or from ``weights`` (a pretrained name or a saved file). A particle
    trains tasks of ``tasks`` (``"train"``: ``digits_tasks("train")``, or a list of ``InnerTask``) for
    ``horizon`` steps each; ``task_seed`` seeds the draws of tasks and initialisations.
    """

    def __init__(self, tasks: str | Sequence[InnerTask] = "train", hidden: Sequence[int] = (32,),
                 horizon: int = 200, weights_seed: int = 0, task_seed: int = 0, loss_clip: float = 3.0,
                 weights: str | None = None, initial_lr: float | None = None, meta_loss: str = "linear",
                 loss_floor: float = 1e-5, form: str = "direction", final_lr: float | None = None,
                 decay_from: int = 0, timescales: Sequence[float] = TIMESCALES):
        require("task.horizon", horizon, isinstance(horizon, int) and horizon > 0, "a positive integer")
        require("task.loss_clip", loss_clip, isinstance(loss_clip, (int, float)) and loss_clip > 0, "a number > 0")
        require("task.meta_loss", meta_loss, meta_loss in META_LOSSES, f"one of {META_LOSSES}")
        require("task.loss_floor", loss_floor, isinstance(loss_floor, (int, float)) and 0 < loss_floor < loss_clip,
                "a number > 0 and below task.loss_clip")
        require("task.initial_lr", initial_lr, initial_lr is None or (isinstance(initial_lr, (int, float))
                                                                        and initial_lr > 0), "None or a number > 0")
        require("task.form", form, form in FORMS, f"one of {FORMS}")
        require("task.final_lr", final_lr, final_lr is None or (isinstance(final_lr, (int, float)) and final_lr > 0
                                                                and form == "adam"),
                "None, or a number > 0 with task.form=adam")
        require("task.decay_from", decay_from, isinstance(decay_from, int) and 0 <= decay_from < horizon,
                f"an integer step from 0 to task.horizon - 1 ({horizon - 1})")
        try:
            checked_timescales = check_timescales(list(timescales))
        except (TypeError, ValueError):
            checked_timescales = None
        require("task.timescales", timescales, checked_timescales is not None,
                f"{len(TIMESCALES)} positive numbers of steps, e.g. {list(TIMESCALES)}")
        self.meta_loss = meta_loss
        self.loss_floor = float(loss_floor)
        require("task.hidden", list(hidden), all(isinstance(h, int) and h > 0 for h in hidden),
                "a list of positive layer widths")
        self.tasks = digits_tasks(tasks) if isinstance(tasks, str) else list(tasks)
        require("task.tasks", len(self.tasks), len(self.tasks) > 0, "at least one inner task")
        self.hidden = tuple(hidden)
        self.horizon = horizon
        self.task_seed = task_seed
        self.loss_clip = float(loss_clip)
        self.layouts = [_Layout(inner) for inner in self.tasks]
        self.width = max(layout.width for layout in self.layouts)
        if weights is None:
            self.theta0 = initial_weights(self.hidden, torch.Generator().manual_seed(weights_seed), lr=initial_lr,
                                          form=form, final_lr=final_lr, decay=(decay_from, horizon),
                                          timescales=checked_timescales)
            self.form, self.timescales = form, checked_timescales
        else:
            from metaopt.optim.learned import resolve_weights

            theta0, _, self.form, self.timescales, _ = resolve_weights(weights, self.hidden)
            require("task.form", form, form == self.form, f"{self.form!r} (the form of the weights {weights!r})")
            self.theta0 = theta0.float()
        self.dim = num_weights(self.hidden)
        self._gradients = [vmap(grad_and_value(functools.partial(self._loss_one, k))) for k in range(len(self.tasks))]
        self._update = vmap(self._update_one)

    # -- one particle, one step ----------------------------------------------------------------------
    def _loss_one(self, k: int, params, inputs, targets) -> torch.Tensor:
        layout, task = self.layouts[k], self.tasks[k].task
        outputs = functional_call(layout.model, dict(zip(layout.names, params)), (inputs,))
        return task.loss(outputs, targets)

    def _update_one(self, params, grads, momenta, second, age, weights):
        params, state = learned(params, grads, LearnedState(momenta, second, age), weights=weights,
                                hidden=self.hidden, form=self.form, timescales=self.timescales)
        return params, state.momenta, state.second_moment

    # -- particle states -----------------------------------------------------------------------------
    def initial_theta(self) -> torch.Tensor:
        return self.theta0.clone()

    def init_state(self, num_particles: int, steps: torch.Tensor | None = None) -> ParticleState:
        if steps is None:
            steps = torch.zeros(num_particles, dtype=torch.long)
        return {"step": steps.clone(), "task": torch.full((num_particles,), -1, dtype=torch.long),
                "episode": torch.zeros(num_particles, dtype=torch.long),
                "age": torch.zeros(num_particles, dtype=torch.float64),
                "norm": torch.ones(num_particles), "rows": torch.zeros(num_particles, self.width)}

    def reset(self, state: ParticleState, mask: torch.Tensor) -> ParticleState:
        out = dict(state)
        out["step"] = torch.where(mask, 0, state["step"])
        out["task"] = torch.where(mask, -1, state["task"])
        out["episode"] = state["episode"] + mask.long()
        return out

    def start(self, k: int, seed: int) -> tuple[torch.Tensor, float]:
        """Task ``k`` initialised with ``seed``: its row (zero optimizer state) and its initial training loss."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.tasks[k].task.build_model()
        layout = self.layouts[k]
        params = tuple(p.detach()[None] for p in model.parameters())
        zeros = tuple(torch.zeros(1, _K, *p.shape[1:]) for p in params)
        row = layout.join(params, zeros, tuple(torch.zeros_like(p) for p in params), self.width)[0]
        with torch.no_grad():
            inputs, targets = self.tasks[k].task.data.train
            norm = float(self.tasks[k].task.loss(model(inputs), targets))
        return row, max(norm, 1e-8)

    def _assign(self, state: ParticleState, streams: torch.Tensor) -> ParticleState:
        """A task and an initialisation for every particle starting a run, from its stream and episode."""
        todo = (state["task"] < 0).nonzero().flatten().tolist()
        if not todo:
            return state
        state = {k: v.clone() for k, v in state.items()}
        for i in todo:
            key = (self.task_seed * 1_000_003 + int(streams[i]) * 10_007 + int(state["episode"][i])) % (2**62)
            draw = torch.Generator().manual_seed(key)
            k = int(torch.randint(len(self.tasks), (1,), generator=draw))
            row, norm = self.start(k, int(torch.randint(2**31 - 1, (1,), generator=draw)))
            state["rows"][i], state["norm"][i], state["task"][i], state["age"][i] = row, norm, k, 0.0
        return state

    def _step(self, state: ParticleState, theta: torch.Tensor, generator: torch.Generator, streams: torch.Tensor,
              num_streams: int) -> tuple[ParticleState, torch.Tensor]:
        rows, losses = state["rows"], torch.zeros(len(streams), dtype=theta.dtype)
        for k in state["task"].unique().tolist():
            index = (state["task"] == k).nonzero().flatten()
            layout, task = self.layouts[k], self.tasks[k].task
            params, momenta, second = layout.split(rows.index_select(0, index))
            inputs, targets = stream_batches(task, "train", task.batch_size, generator, streams[index], num_streams)
            grads, loss = self._gradients[k](params, inputs, targets)
            params, momenta, second = self._update(params, grads, momenta, second, state["age"][index],
                                                   theta.index_select(0, index))
            rows = rows.index_copy(0, index, layout.join(params, momenta, second, self.width))
            losses = losses.index_copy(0, index, self._meta_loss(loss / state["norm"][index]).to(losses.dtype))
        return {**state, "rows": rows, "age": state["age"] + 1}, losses

    def _meta_loss(self, normalised: torch.Tensor) -> torch.Tensor:
        """A step's meta-loss from the normalised training loss: clipped at ``loss_clip``, and for
        ``meta_loss="log"`` its logarithm, floored at ``log(loss_floor)``."""
        clipped = normalised.clamp(max=self.loss_clip)
        return clipped.clamp(min=self.loss_floor).log() if self.meta_loss == "log" else clipped

    def _unroll(self, state, theta, num_steps, generator, streams, num_streams):
        state = self._assign(state, streams)
        losses, resets = [], []
        for _ in range(num_steps):
            state, loss = self._step(state, theta, generator, streams, num_streams)
            step = state["step"] + 1
            done = step >= self.horizon
            losses.append(loss)
            resets.append(done)
            state = {**state, "step": step}
            if bool(done.any()):
                state = self._assign(self.reset(state, done), streams)
        return state, torch.stack(losses), torch.stack(resets)

    # -- evaluation and export -----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, theta: torch.Tensor, seed: int = 0) -> dict[str, float]:
        """θ trains every task once (initialisation ``seed``) for ``horizon`` steps: the mean normalised loss
        over all runs and steps (``meta_objective``) and each task's final normalised loss."""
        n = len(self.tasks)
        state = self.init_state(n)
        for k in range(n):
            state["rows"][k], state["norm"][k] = self.start(k, seed)
        state["task"] = torch.arange(n)
        generator = torch.Generator().manual_seed(seed)
        streams, thetas = torch.arange(n), theta.detach()[None].expand(n, -1)
        losses = []
        for _ in range(self.horizon):
            state, loss = self._step(state, thetas, generator, streams, n)
            losses.append(loss)
        losses = torch.stack(losses)
        out = {"meta_objective": float(losses.mean())}
        out.update({f"final.{inner.name}": float(losses[-1, k]) for k, inner in enumerate(self.tasks)})
        return out

    def describe(self, theta: torch.Tensor) -> dict[str, float]:
        """A few numbers of θ for logs (its norm and the distance from the start), not all of its weights."""
        return {"theta_norm": float(theta.norm()), "theta_distance": float((theta - self.theta0).norm())}

    def save(self, theta: torch.Tensor, folder: Path) -> Path:
        """``learned_optimizer.pt`` in ``folder``: load it with ``LearnedOptimizer(params, weights=path)``."""
        path = Path(folder) / "learned_optimizer.pt"
        meta: dict[str, Any] = {"horizon": self.horizon, "tasks": [t.name for t in self.tasks]}
        torch.save({"weights": theta.detach().cpu().float().clone(), "hidden": list(self.hidden), "form": self.form,
                    "timescales": list(self.timescales), "meta": meta}, path)
        return path
