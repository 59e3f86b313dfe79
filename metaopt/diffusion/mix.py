"""Mix the LoRAs of finished diffusion fine-tuning runs (the DRaFT paper's mixing of adapters trained on
different rewards) and evaluate every run's reward on a grid of mixing scales.

    python -m metaopt.diffusion.mix RUN_A RUN_B [--scales 0 0.5 1] [--out DIR] [--samples 64] [--seed 0]

``RUN_A``, ``RUN_B``, … are run folders of ``python -m metaopt.run task=digits_diffusion outer=draft|ddpo|
draft_es …``: each holds ``lora.pt`` (written at the end of the run) or, for a run that has not finished,
``checkpoint.pt`` (its latest adapters). Every run must fine-tune the same base UNet. The same fixed noise
(``--seed``) is sampled with the base UNet plus ``Σᵢ sᵢ·ΔWᵢ`` for every combination of the scales ``sᵢ``
in ``--scales`` (one list for all runs, or ``--scales`` once per run), and scored by each run's reward.
``DIR`` (default ``outputs/mix/<date>/<time>``) gets ``mix.md`` (the table), ``mix.json`` and ``mix.png``
(the samples of each combination: for two runs a grid, rows the first run's scale, columns the second's).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import pkgutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["MixError", "load_run", "mix_runs", "main"]


class MixError(ValueError):
    """A run folder or an argument that cannot be mixed."""


def load_run(folder: str | Path) -> dict[str, Any]:
    """The adapters of a run folder and what is needed to rebuild its task: ``lora.pt`` when the run has
    finished, else its ``checkpoint.pt`` (the adapters of its latest checkpoint)."""
    import torch

    folder = Path(folder)
    if not folder.is_dir():
        raise MixError(f"invalid run folder: {str(folder)!r} (allowed: the folder of a finished "
                       "task=digits_diffusion run, with lora.pt or checkpoint.pt): no such folder")
    if (folder / "lora.pt").exists():
        data = torch.load(folder / "lora.pt", map_location="cpu", weights_only=True)
        data["source"] = str(folder / "lora.pt")
        return data
    if (folder / "checkpoint.pt").exists():
        checkpoint = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)
        loop, config = checkpoint.get("loop", {}), checkpoint.get("config", {})
        if "lora" not in loop or "task" not in config:
            raise MixError(f"invalid run folder: {str(folder)!r} (allowed: a diffusion fine-tuning run): its "
                           "checkpoint.pt holds no LoRA adapters (a run of another outer loop?)")
        task = {k: v for k, v in config["task"].items() if not k.startswith("_")}
        outer = config.get("outer", {})
        return {"lora": loop["lora"], "lora_rank": outer.get("lora_rank", 4),
                "lora_alpha": float(outer.get("lora_alpha", 4.0)), "task_target": config["task"].get("_target_"),
                "task": task, "reward": task.get("reward"), "reward_queries": loop.get("reward_queries"),
                "source": f"{folder / 'checkpoint.pt'} (step {checkpoint.get('step')}: the run has not finished)"}
    raise MixError(f"invalid run folder: {str(folder)!r} (allowed: the folder of a task=digits_diffusion run, "
                   "with lora.pt or checkpoint.pt): it has neither (did the run finish? set checkpoint_every to "
                   "keep the adapters of an unfinished run)")


def _build_task(run: dict[str, Any], folder: str) -> Any:
    target = run.get("task_target")
    if not isinstance(target, str) or not isinstance(run.get("task"), dict):
        raise MixError(f"invalid run folder: {folder!r}: its LoRA file does not name its task (a task without "
                       "a config cannot be rebuilt)")
    try:
        task_type = pkgutil.resolve_name(target)
    except (ImportError, AttributeError, ValueError) as error:
        raise MixError(f"invalid run folder: {folder!r}: its task {target} cannot be imported ({error})") from error
    return task_type(**run["task"])


def _check_scales(scales: Sequence[Sequence[float]], count: int) -> list[list[float]]:
    if len(scales) == 1:
        scales = list(scales) * count
    if len(scales) != count:
        raise MixError(f"invalid --scales: given {len(scales)} times (allowed: once, for every run, or once per "
                       f"run: {count} times)")
    for values in scales:
        if not values or not all(math.isfinite(v) for v in values):
            raise MixError(f"invalid --scales: {list(values)} (allowed: one or more finite numbers)")
    return [list(v) for v in scales]


def mix_runs(folders: Sequence[str | Path], scales: Sequence[Sequence[float]], samples: int = 64,
             seed: int = 0, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Every combination of ``scales`` (one list per run, or one list for all) of the runs' adapters on their
    common base UNet, sampled from the same ``samples`` noises (seed ``seed``) and scored by every run's
    reward. Every argument and run folder is checked, and every task rebuilt, before any sampling."""
    import torch

    from metaopt.diffusion.lora import mix_loras
    from metaopt.diffusion.sampler import DDIMChain, denoiser, sample

    if not folders:
        raise MixError("invalid runs: none (allowed: one or more run folders)")
    if not (isinstance(samples, int) and samples > 0):
        raise MixError(f"invalid --samples: {samples!r} (allowed: a positive integer)")
    names = list(names) if names else [Path(f).name for f in folders]
    if len(names) != len(folders):
        raise MixError(f"invalid --names: {names} (allowed: one name per run, {len(folders)})")
    scales = _check_scales(scales, len(folders))
    runs = [load_run(f) for f in folders]
    tasks = [_build_task(run, str(f)) for run, f in zip(runs, folders)]
    base = tasks[0].base_model_key()
    for task, folder in zip(tasks[1:], folders[1:]):
        if base is None or task.base_model_key() != base:
            raise MixError(f"invalid run folder: {str(folder)!r}: it fine-tunes another base UNet than "
                           f"{str(folders[0])!r} (different task architecture or pretraining: {task.base_model_key()} "
                           f"against {base}); LoRAs mix only on the model they were trained on")
        if task.image_shape != tasks[0].image_shape:
            raise MixError(f"invalid run folder: {str(folder)!r}: its images are {task.image_shape}, not "
                           f"{tasks[0].image_shape}")

    noise = torch.randn((samples, *tasks[0].image_shape), generator=torch.Generator().manual_seed(seed))
    chain = DDIMChain.from_scheduler(tasks[0].scheduler())
    rows = []
    for combination in itertools.product(*scales):
        unet = tasks[0].pretrained_unet()
        mix_loras(unet, [run["lora"] for run in runs], combination, rank=[int(r["lora_rank"]) for r in runs],
                  alpha=[float(r["lora_alpha"]) for r in runs])
        with torch.no_grad():
            images = sample(denoiser(unet), chain, noise.to(tasks[0].device))
        row: dict[str, Any] = {"scales": list(combination)}
        for name, task in zip(names, tasks):
            row[f"reward[{name}]"] = task.reward(images).mean().item()
        row.update(tasks[0].metrics(images))
        row.pop("reward", None)  # the first run's reward is already in the table under its name
        row["images"] = images.cpu()
        rows.append(row)
    return {"names": names, "rewards": [task.reward_name for task in tasks], "sources": [r["source"] for r in runs],
            "scales": scales, "rows": rows, "tasks": tasks}


def write_results(result: dict[str, Any], out: Path) -> list[Path]:
    """``mix.md``, ``mix.json`` and ``mix.png`` in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metaopt.outer.diffusion import image_grid

    out.mkdir(parents=True, exist_ok=True)
    names, rows = result["names"], result["rows"]
    extra = [k for k in rows[0] if k not in ("scales", "images") and not k.startswith("reward[")]
    header = ([f"scale {n}" for n in names] + [f"reward {r} ({n})" for n, r in zip(names, result["rewards"])]
              + extra)
    lines = ["Runs: " + "; ".join(f"{n}: `{s}`" for n, s in zip(names, result["sources"])), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{s:g}" for s in row["scales"]] + [f"{row[f'reward[{n}]']:.3f}" for n in names]
        cells += [f"{row[k]:.3f}" for k in extra]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "mix.md").write_text("\n".join(lines) + "\n")
    (out / "mix.json").write_text(json.dumps({
        "names": names, "rewards": result["rewards"], "sources": result["sources"], "scales": result["scales"],
        "rows": [{k: v for k, v in row.items() if k != "images"} for row in rows]}, indent=1))

    two = len(names) == 2
    shape = (len(result["scales"][0]), len(result["scales"][1])) if two else (1, len(rows))
    fig, axes = plt.subplots(*shape, figsize=(2.6 * shape[1], 2.9 * shape[0]), squeeze=False)
    for axis, row in zip(axes.flat, rows):
        axis.imshow(image_grid(row["images"][:16], columns=4), cmap="gray", vmin=-1, vmax=1)
        scales = ", ".join(f"{n} {s:g}" for n, s in zip(names, row["scales"]))
        rewards = ", ".join(f"{row[f'reward[{n}]']:.2f}" for n in names)
        axis.set_title(f"{scales}\nrewards {rewards}", fontsize=7)
        axis.axis("off")
    fig.tight_layout()
    fig.savefig(out / "mix.png", dpi=110)
    plt.close(fig)
    return [out / "mix.md", out / "mix.json", out / "mix.png"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metaopt.diffusion.mix", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (with lora.pt or checkpoint.pt)")
    parser.add_argument("--scales", type=float, nargs="+", action="append",
                        help="mixing scales of every run (default 0 0.5 1); repeat once per run for per-run lists")
    parser.add_argument("--names", nargs="+", default=None, help="a short name per run (default: folder names)")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fixed sampler noise")
    parser.add_argument("--out", default=None, help="output folder (default outputs/mix/<date>/<time>)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path("outputs", "mix", time.strftime("%Y-%m-%d"), time.strftime("%H-%M-%S"))
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise MixError(f"invalid --threads: {args.threads} (allowed: a positive integer)")
            import torch

            torch.set_num_threads(args.threads)
        result = mix_runs(args.runs, args.scales or [[0.0, 0.5, 1.0]], args.samples, args.seed, args.names)
    except (MixError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    paths = write_results(result, out)
    print((out / "mix.md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
