"""A whole training run with APO as an unrolled problem: an ES loop tunes APO's own hyperparameters
(``meta_lr``, ``lambda_fsd``, ``lambda_wsd``) over whole training runs, "tuning the tuner".

APO is a stateful ``torch.optim.Optimizer`` with no functional core (its meta-step reads the model it
trains), so the particles cannot be ``vmap``-ed as in ``TrainingRun``: each particle is an ordinary
model with its own APO, stepped one after the other (the non-vectorized path). Between truncations a
particle lives in the ``ParticleState`` as the bytes of ``torch.save({"model", "optimizer"})`` in a
``uint8`` row, so that the estimators copy, reset and checkpoint it with tensor operations like any
other state, and a checkpoint still loads with ``weights_only=True``.

Cost: one ordinary APO training step per particle and inner step (the runner's ``outer=apo`` step),
plus rebuilding each particle's model and APO from its bytes once per truncation; N particles cost N
training runs' worth of steps, serially, against the fraction of one that ``TrainingRun`` pays per
particle when vectorized.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from metaopt.checks import require
from metaopt.optim.apo import APO, training_step
from metaopt.optim.specs import LR, SCALE, OptimizerSpec, factory_kwargs
from metaopt.tasks.supervised import SupervisedTask
from metaopt.tasks.unrolled.problem import ParticleState, where_particles
from metaopt.tasks.unrolled.training_run import stream_batches
from metaopt.tasks.unrolled.tuning import TunedHyperparameters, TunedRun

__all__ = ["APOTrainingRun", "APO_HYPERPARAMETERS"]

APO_HYPERPARAMETERS = OptimizerSpec(
    name="apo", optimizer=APO, functional=None,  # type: ignore[arg-type]  (no core: never in SPECS)
    hyperparameters={"meta_lr": LR, "lambda_fsd": SCALE, "lambda_wsd": SCALE}, flags=(),
    natural=("meta_lr", "lambda_fsd"))
"""What an outer loop may tune of APO, on a log scale; by default its meta-optimizer's step size and the
weight of its function-space term."""


def _pack(model: nn.Module, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def _rows(blobs: Sequence[torch.Tensor], width: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``blobs`` as the rows of one zero-padded (N, W) uint8 tensor, and their lengths (N,)."""
    lengths = torch.tensor([len(b) for b in blobs], dtype=torch.long)
    rows = torch.zeros(len(blobs), max(width, int(lengths.max())), dtype=torch.uint8)
    for row, blob in zip(rows, blobs):
        row[: len(blob)] = blob
    return rows, lengths


def _widen(rows: torch.Tensor, width: int) -> torch.Tensor:
    return rows if rows.shape[1] >= width else torch.nn.functional.pad(rows, (0, width - rows.shape[1]))


class APOTrainingRun(TunedRun):
    """Train ``task``'s model for ``horizon`` steps with APO (``optimizer``, an ``APO`` factory such as
    ``instantiate(cfg.optimizer)``), the outer parameters θ being APO's hyperparameters named in ``tuned``
    (``None``: ``meta_lr`` and ``lambda_fsd`` from the factory's values; log scale; a start of 0 starts at
    1e-8). Every step is the one ``outer=apo`` takes (``metaopt.optim.apo.training_step``: APO meta-steps
    every ``meta_interval`` steps on a fresh training minibatch). The meta-loss of a step is the loss on a
    ``meta_split`` minibatch after the update ("val"), or the training minibatch loss before it
    ("train"), as in ``TrainingRun``. ES only: the run is not differentiable in θ (TBPTT refuses it).

    ``schedule`` applies to a tuned ``lr`` only, which APO learns itself: it has no effect here; ``per_layer``
    and ``compile`` (vectorized runs only) must stay empty/false.
    """

    differentiable = False

    def __init__(self, task: SupervisedTask, optimizer: Callable, tuned: Mapping[str, float] | None = None,
                 schedule: str = "constant", per_layer: Sequence[str] = (), fixed: Mapping[str, Any] | None = None,
                 horizon: int = 1000, meta_split: str = "val", batch_size: int | None = None, init_seed: int = 0,
                 compile: bool = False):
        target = getattr(optimizer, "func", optimizer)
        require("optimizer", getattr(target, "__name__", repr(target)),
                isinstance(target, type) and issubclass(target, APO),
                "an APO factory (optimizer=apo_lr or apo_precond)")
        require("outer.problem.compile", compile, not compile,
                "false with APO (its particles are trained one after the other, not vectorized)")
        require("outer.problem.per_layer", list(per_layer), not per_layer,
                "[] with APO (its hyperparameters are global)")
        require("outer.problem.meta_split", meta_split, meta_split in ("train", "val"), "'train' or 'val'")
        require("outer.problem.horizon", horizon, isinstance(horizon, int) and horizon > 0, "a positive integer")
        self.task = task
        self.horizon = horizon
        self.meta_split = meta_split
        self.batch_size = batch_size or task.batch_size
        self.device = task.device
        kwargs = factory_kwargs(optimizer)
        self.tuning = TunedHyperparameters(
            APO_HYPERPARAMETERS, {k: v for k, v in kwargs.items() if k in APO_HYPERPARAMETERS.hyperparameters},
            tuned, schedule, horizon=horizon, fixed=fixed)
        self.factory = optimizer
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.model = task.build_model()
        model, apo = self._fresh()
        self._start = _pack(model, apo)

    def _fresh(self) -> tuple[nn.Module, APO]:
        """A copy of the initial model and a new APO over it (the fixed hyperparameters applied)."""
        model = copy.deepcopy(self.model)
        return model, self.factory(model.parameters(), **self.fixed)

    def _restore(self, blob: torch.Tensor, hyperparameters: Mapping[str, float]) -> tuple[nn.Module, APO]:
        model, apo = self._fresh()
        saved = torch.load(io.BytesIO(blob.numpy().tobytes()), weights_only=True)
        model.load_state_dict(saved["model"])
        apo.load_state_dict(saved["optimizer"])
        for name, value in hyperparameters.items():
            if name == "meta_lr":
                apo.meta_lr = value
                for group in apo.meta_optimizer.param_groups:
                    group["lr"] = value
            else:
                setattr(apo, name, value)
        return model, apo

    def init_state(self, num_particles: int, steps: torch.Tensor | None = None) -> ParticleState:
        if steps is None:
            steps = torch.zeros(num_particles, dtype=torch.long, device=self.device)
        rows, lengths = _rows([self._start] * num_particles)
        return {"step": steps.clone(), "blob": rows, "length": lengths}

    def reset(self, state: ParticleState, mask: torch.Tensor) -> ParticleState:
        width = state["blob"].shape[1]
        fresh = {"step": torch.zeros((), dtype=torch.long, device=self.device),
                 "blob": _widen(self._start[None], width)[0], "length": torch.tensor(len(self._start))}
        return where_particles(mask, fresh, state)

    def _unroll(self, state, theta, num_steps, generator, streams, num_streams):
        return self._run(state, theta, num_steps, generator, streams, num_streams, reset=True)

    def _run(self, state: ParticleState, theta: torch.Tensor, num_steps: int, generator: torch.Generator,
             streams: torch.Tensor, num_streams: int, reset: bool
             ) -> tuple[ParticleState, torch.Tensor, torch.Tensor]:
        hyper = self.hyperparameters(theta.detach(), state["step"])
        per_particle = [{k: float(v[i]) for k, v in hyper.items()} for i in range(theta.shape[0])]
        live = [self._restore(blob[:length], h)
                for blob, length, h in zip(state["blob"], state["length"].tolist(), per_particle)]
        step = state["step"].clone()
        losses = torch.empty(num_steps, len(live))
        resets = torch.zeros(num_steps, len(live), dtype=torch.bool)
        for t in range(num_steps):
            inputs, targets = stream_batches(self.task, "train", self.batch_size, generator, streams, num_streams)
            fresh, _ = stream_batches(self.task, "train", self.batch_size, generator, streams, num_streams)
            if self.meta_split == "val":
                meta_inputs, meta_targets = stream_batches(self.task, "val", self.batch_size, generator, streams,
                                                           num_streams)
            for i, (model, apo) in enumerate(live):
                with torch.enable_grad():
                    loss = training_step(model, apo, self.task.loss, (inputs[i], targets[i]),
                                         lambda row=fresh[i]: row)
                if self.meta_split == "val":
                    with torch.no_grad():
                        loss = self.task.loss(model(meta_inputs[i]), meta_targets[i])
                losses[t, i] = loss
            step += 1
            done = step >= self.horizon
            resets[t] = done
            if reset:
                for i in done.nonzero().flatten().tolist():
                    live[i] = self._restore(self._start, per_particle[i])
                step = torch.where(done, torch.zeros_like(step), step)
        rows, lengths = _rows([_pack(model, apo) for model, apo in live])
        return {"step": step, "blob": rows, "length": lengths}, losses, resets

    @torch.no_grad()
    def evaluate_many(self, thetas: torch.Tensor, seed: int = 0) -> list[dict[str, float]]:
        """Train one model per row of ``thetas`` (M, dim) for a whole run (same data), then report each one's
        ``meta_objective`` (mean meta-loss over the run) and the full-split losses and accuracies."""
        num = thetas.shape[0]
        generator = torch.Generator().manual_seed(seed)
        streams = torch.zeros(num, dtype=torch.long, device=self.device)
        state, losses, _ = self._run(self.init_state(num), thetas, self.horizon, generator, streams, 1, reset=False)
        results = []
        for i, meta in enumerate(losses.mean(0).tolist()):
            model, _ = self._restore(state["blob"][i, : int(state["length"][i])], {})
            metrics = {"meta_objective": meta}
            for split in ("train", "val", "test"):
                inputs, targets = self.task.eval_split(split)
                metrics.update(self.task.metrics(model(inputs), targets, split))
            results.append(metrics)
        return results
