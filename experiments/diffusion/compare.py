"""DRaFT, DRaFT-K (K=1, 5), DRaFT-LV (n=2), the DDPO baseline and antithetic ES fine-tuning the digits DDPM
(``task=digits_diffusion``) on the classifier's log-probability of a target digit: reward against reward
queries, the diversity of the samples' classes along training, and sample grids before/after and at
LoRA scales 0, 0.5, 1.

python -m experiments.diffusion.compare [--steps 60] [--quick]   (writes experiments/diffusion/results/)
python -m experiments.diffusion.compare --reward digit_accuracy --only DDPO "ES (8 pairs)" --name accuracy
python -m experiments.diffusion.compare --reward digit_accuracy --only "ES-Single (8 pairs)" "PES (8 pairs)" \
    --es-steps 8 --eval-every 2 --lr 3e-3 --name accuracy_chain_es     # ~1000 queries, DDPO's budget above
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch

from metaopt.outer import DDPOLoop, DiffusionESLoop, DRaFTLoop
from metaopt.outer.diffusion import image_grid
from metaopt.tasks.diffusion import DigitsDiffusion

RESULTS = Path(__file__).resolve().parent / "results"


class ChainES:
    """``outer=es_single`` (``estimator="pes"``: ``outer=pes``) on the task (``UnrolledLoop`` with ``ESSingle``
    over truncations of the sampling chain, θ the LoRA adapters in their own units: ``theta_scale=1``) with a
    DiffusionLoop's interface."""

    def __init__(self, task, lr: float, generator, num_pairs: int = 8, sigma: float = 0.02, truncation_length: int = 5,
                 estimator: str = "es_single"):
        from metaopt.outer import UnrolledLoop
        from metaopt.unrolled import PES, ESSingle

        kind = {"es_single": ESSingle, "pes": PES}[estimator]
        self.loop = UnrolledLoop(task, functools.partial(kind, num_particles=2 * num_pairs, sigma=sigma,
                                                         truncation_length=truncation_length),
                                 functools.partial(torch.optim.Adam, lr=lr), generator=generator,
                                 problem={"theta_scale": 1.0}, steps=1, eval_every=0)

    def step(self) -> dict:
        return self.loop.step()

    def samples(self, scale: float = 1.0):
        return self.loop.problem.samples(self.loop.theta.detach(), scale)

    @property
    def reward_queries(self) -> int:
        return self.loop.problem.reward_queries


def methods(lr: float) -> dict:
    def adam(params):
        return torch.optim.Adam(params, lr=lr)

    return {
        "DRaFT": lambda task, g: DRaFTLoop(task, adam, variant="full", generator=g),
        "DRaFT-K (K=1)": lambda task, g: DRaFTLoop(task, adam, variant="truncated", truncation_length=1, generator=g),
        "DRaFT-K (K=5)": lambda task, g: DRaFTLoop(task, adam, variant="truncated", truncation_length=5, generator=g),
        "DRaFT-LV (n=2)": lambda task, g: DRaFTLoop(task, adam, variant="lv", num_noises=2, generator=g),
        "DDPO": lambda task, g: DDPOLoop(task, adam, generator=g),
        "ES (8 pairs)": lambda task, g: DiffusionESLoop(task, adam, num_pairs=8, sigma=0.02, generator=g),
        "ES-Single (8 pairs)": lambda task, g: ChainES(task, lr, g),
        "PES (8 pairs)": lambda task, g: ChainES(task, lr, g, estimator="pes"),
    }


def run_method(name: str, build, task: DigitsDiffusion, steps: int, eval_every: int, seed: int) -> dict:
    torch.manual_seed(seed)
    loop = build(task, torch.Generator().manual_seed(seed))
    curve = []

    def record(step: int, seconds: float) -> None:
        images = loop.samples()
        metrics = task.metrics(images)
        curve.append({"step": step, "reward_queries": loop.reward_queries, "seconds": seconds,
                      "eval_reward": metrics["reward"], "eval_accuracy": metrics["accuracy"],
                      "class_entropy": metrics["class_entropy"], "data_distance": metrics["data_distance"],
                      "class_histogram": task.class_histogram(images)})

    record(0, 0.0)
    seconds = 0.0
    for step in range(1, steps + 1):
        start = time.perf_counter()
        loop.step()
        seconds += time.perf_counter() - start
        if step % eval_every == 0 or step == steps:
            record(step, seconds)
    scales = {scale: loop.samples(scale) for scale in (0.0, 0.5, 1.0)}
    print(f"{name:16s} reward {curve[0]['eval_reward']:.3f} -> {curve[-1]['eval_reward']:.3f}, accuracy "
          f"{curve[0]['eval_accuracy']:.2f} -> {curve[-1]['eval_accuracy']:.2f}, class entropy "
          f"{curve[0]['class_entropy']:.2f} -> {curve[-1]['class_entropy']:.2f}, distance to data "
          f"{curve[0]['data_distance']:.2f} -> {curve[-1]['data_distance']:.2f}, {loop.reward_queries} queries, "
          f"{seconds:.0f} s", flush=True)
    return {"curve": curve, "scales": {str(k): [task.metrics(v)] for k, v in scales.items()},
            "grids": {str(k): image_grid(v).tolist() for k, v in scales.items()}}


def plot(results: dict, folder: Path, prefix: str, reward: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(21, 4.5))
    for name, result in results.items():
        curve = result["curve"]
        queries = [c["reward_queries"] for c in curve]
        axes[0].plot(queries, [c["eval_reward"] for c in curve], marker="o", label=name)
        axes[1].plot(queries, [c["eval_accuracy"] for c in curve], marker="o", label=name)
        axes[2].plot(queries, [c["class_entropy"] for c in curve], marker="o", label=name)
        axes[3].plot(queries, [c["data_distance"] for c in curve], marker="o", label=name)
    for axis, title in zip(axes, (f"eval reward ({reward})", "eval accuracy (target digit)",
                                  "class entropy of the samples (nats; diversity)",
                                  "RMS distance to the nearest training digit")):
        axis.set_xscale("symlog", linthresh=100)
        axis.set_xlabel("reward queries")
        axis.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / f"{prefix}_reward_vs_queries.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(len(results), 3, figsize=(9, 3.2 * len(results)))
    for row, (name, result) in zip(axes, results.items()):
        for axis, scale in zip(row, ("0.0", "0.5", "1.0")):
            axis.imshow(torch.tensor(result["grids"][scale]), cmap="gray", vmin=-1, vmax=1)
            metrics = result["scales"][scale][0]
            axis.set_title(f"{name}, LoRA {scale}\nreward {metrics['reward']:.2f} acc {metrics['accuracy']:.2f}",
                           fontsize=8)
            axis.axis("off")
    fig.tight_layout()
    fig.savefig(folder / f"{prefix}_samples_by_lora_scale.png", dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--es-steps", type=int, default=None, help="steps of the chain ES rows (default --steps)")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--reward", default="digit_logprob", help="task.reward (DRaFT needs a differentiable one)")
    parser.add_argument("--name", default="compare", help="the results' file names")
    parser.add_argument("--quick", action="store_true", help="tiny DDPM and 3 steps: a smoke test")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = DigitsDiffusion(reward=args.reward,
                           **({"pretrain_steps": 20, "classifier_steps": 20} if args.quick else {}))
    steps = 3 if args.quick else args.steps
    RESULTS.mkdir(exist_ok=True)
    results = {}
    for name, build in methods(args.lr).items():
        if args.only and name not in args.only:
            continue
        method_steps = args.es_steps if args.es_steps and name.split(" ")[0] in ("ES-Single", "PES") else steps
        results[name] = run_method(name, build, task, 3 if args.quick else method_steps,
                                   1 if args.quick else args.eval_every, args.seed)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"args": vars(args), "results": {k: {"curve": v["curve"], "scales": v["scales"]} for k, v in results.items()}},
        indent=1))
    plot(results, RESULTS, args.name, args.reward)


if __name__ == "__main__":
    main()
