"""The training loop the APO experiments share: ``outer=apo``'s loop, recording the learned schedule."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from metaopt.optim import APO
from metaopt.tasks import MLP, Autoencoder, SupervisedTask, data

HERE = __import__("pathlib").Path(__file__).resolve().parent


def digits_mlp() -> SupervisedTask:
    """``conf/task/digits_mlp.yaml``: a 64-64-10 ReLU classifier of the 8x8 digits."""
    return SupervisedTask(data.load_digits(), functools.partial(MLP, hidden_sizes=(64,)), batch_size=64)


def digits_autoencoder() -> Autoencoder:
    """``conf/task/digits_autoencoder.yaml``: a 64-64-32-8-32-64-64 tanh autoencoder of the digits."""
    model = functools.partial(MLP, hidden_sizes=(64, 32, 8, 32, 64), activation="tanh")
    return Autoencoder(data.load_digits(), model, batch_size=64)


@dataclass
class Run:
    label: str
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # batch loss averaged over `record_every` steps
    lrs: list[float] = field(default_factory=list)  # η (APO-LR) or mean eigenvalue of P (APO-Precond)
    final: dict = field(default_factory=dict)
    seconds: float = 0.0
    diverged: bool = False


@torch.no_grad()
def _evaluate(task: SupervisedTask, model: torch.nn.Module, dtype: torch.dtype) -> dict[str, float]:
    metrics = {}
    for split in ("train", "test"):
        inputs, targets = getattr(task.data, split)
        outputs = model(inputs.to(dtype)).float()
        targets = targets.float() if task.kind == "regression" else targets
        metrics[f"{split}_loss"] = float(task.loss(outputs, targets))
        if task.kind == "classification":
            metrics[f"{split}_accuracy"] = float((outputs.argmax(-1) == targets).float().mean())
    return metrics


def train(task: SupervisedTask, make_optimizer, steps: int, label: str, seed: int = 0,
          dtype: torch.dtype = torch.float32, record_every: int = 10) -> Run:
    """``steps`` minibatch steps; an APO optimizer meta-steps on a fresh training batch when due."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = task.build_model().to(dtype)
    optimizer = make_optimizer(model.parameters())
    is_apo = isinstance(optimizer, APO)
    run = Run(label)
    window = 0.0
    start = time.perf_counter()
    for step in range(1, steps + 1):
        inputs, targets = task.sample_batch(generator)
        inputs = inputs.to(dtype)
        targets = targets.to(dtype) if task.kind == "regression" else targets
        optimizer.zero_grad(set_to_none=True)
        loss = task.loss(model(inputs), targets)
        loss.backward()
        if is_apo and optimizer.meta_due:
            optimizer.meta_step(model, (inputs, targets), lambda: task.sample_batch(generator)[0].to(dtype),
                                task.loss)
        optimizer.step()
        window += loss.item()
        if not np.isfinite(window) or window / record_every > 1e6:
            run.diverged = True
            break
        if step % record_every == 0:
            run.steps.append(step)
            run.losses.append(window / record_every)
            window = 0.0
            if is_apo:
                schedule = optimizer.schedule()
                run.lrs.append(schedule.get("lr", schedule.get("precond_scale")))
            else:
                run.lrs.append(float(optimizer.param_groups[0]["lr"]))
    run.seconds = time.perf_counter() - start
    run.final = _evaluate(task, model, dtype) if not run.diverged else {"train_loss": float("inf"),
                                                                        "test_loss": float("inf")}
    return run



