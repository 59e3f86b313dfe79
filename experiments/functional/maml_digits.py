"""MAML on few-shot tasks cut from scikit-learn's 8x8 digits, with ``DifferentiableOptimizer``.

5-way 5-shot tasks (10 query images per class, labels permuted per task); meta-training draws tasks
from half of the images, evaluation from 100 fixed tasks on the other half. A 64-32-5 tanh MLP adapts
with 2 steps of SGD (lr 0.5) on the support set; the meta-optimizer (Adam, lr 3e-3, 4 tasks per batch)
moves the initial weights (Finn et al., 2017), in four ways: no meta-training, first-order MAML,
MAML, and MAML that also learns a per-layer inner learning rate by the same meta-gradient (a per-layer
Meta-SGD, Li et al., 2017).

    python -m experiments.functional.maml_digits            # ~20 s of CPU on one core
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from metaopt.optim import DifferentiableOptimizer

WAYS, SHOTS, QUERIES, INNER_STEPS, INNER_LR = 5, 5, 10, 2, 0.5


def load_pools(seed: int = 0):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    inputs = torch.tensor(bunch.data / 16.0, dtype=torch.float32)
    targets = torch.tensor(bunch.target)
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    half = len(inputs) // 2
    return inputs, targets, {"train": order[:half], "test": order[half:]}


def sample_task(digits, pool: str, generator: torch.Generator):
    """Support and query sets of one few-shot task: ``WAYS`` random classes, relabelled 0..WAYS−1."""
    inputs, targets, pools = digits
    index = pools[pool]
    support, query = [], []
    for cls in torch.randperm(10, generator=generator)[:WAYS]:
        members = index[targets[index] == cls]
        members = members[torch.randperm(len(members), generator=generator)[:SHOTS + QUERIES]]
        support.append(members[:SHOTS])
        query.append(members[SHOTS:])
    return (inputs[torch.cat(support)], torch.arange(WAYS).repeat_interleave(SHOTS),
            inputs[torch.cat(query)], torch.arange(WAYS).repeat_interleave(QUERIES))


def adapted_query_loss(model, task, lr, first_order=False):
    support_x, support_y, query_x, query_y = task
    inner = DifferentiableOptimizer(model, torch.optim.SGD, lr=lr, first_order=first_order)
    for _ in range(INNER_STEPS):
        inner.step(F.cross_entropy(inner(support_x), support_y))
    outputs = inner(query_x)
    return F.cross_entropy(outputs, query_y), (outputs.argmax(-1) == query_y).float().mean()


def run(method: str, digits, iterations: int, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, WAYS))
    parameters = list(model.parameters())
    # The per-layer inner lr is learned in log space, one value per tensor (weights and biases).
    log_lr = torch.full((len(parameters),), math.log(INNER_LR), requires_grad=method == "maml+lr")
    if method == "maml+lr":
        parameters.append(log_lr)
    meta_optimizer = torch.optim.Adam(parameters, lr=3e-3)
    generator = torch.Generator().manual_seed(seed + 1)
    for _ in range(iterations if method != "none" else 0):
        meta_optimizer.zero_grad()
        losses = [adapted_query_loss(model, sample_task(digits, "train", generator), list(log_lr.exp()),
                                     first_order=method == "fomaml")[0] for _ in range(4)]
        (sum(losses) / len(losses)).backward()
        meta_optimizer.step()
    evaluation = [adapted_query_loss(model, sample_task(digits, "test", torch.Generator().manual_seed(10_000 + i)),
                                     list(log_lr.detach().exp())) for i in range(100)]
    return {"query_loss": sum(float(loss.detach()) for loss, _ in evaluation) / len(evaluation),
            "query_accuracy": sum(float(acc) for _, acc in evaluation) / len(evaluation),
            "inner_lr": [round(float(v), 3) for v in log_lr.detach().exp()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    digits = load_pools()
    print(f"5-way {SHOTS}-shot digits, {INNER_STEPS} inner SGD steps, {args.iterations} meta-iterations x 4 tasks; "
          "100 test tasks")
    print("| method | query loss after adaptation | query accuracy | inner lr per tensor | seconds |")
    print("|---|---|---|---|---|")
    for method in ("none", "fomaml", "maml", "maml+lr"):
        start = time.perf_counter()
        result = run(method, digits, args.iterations, args.seed)
        lr = ", ".join(f"{v:g}" for v in result["inner_lr"]) if method == "maml+lr" else f"{INNER_LR:g}"
        print(f"| {method} | {result['query_loss']:.3f} | {result['query_accuracy']:.1%} | {lr} | "
              f"{time.perf_counter() - start:.1f} |", flush=True)


if __name__ == "__main__":
    main()
