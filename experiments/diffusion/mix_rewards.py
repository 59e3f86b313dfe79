"""Mixing two LoRAs trained on different rewards (Clark et al., 2024), entirely from the command line: two
ordinary DRaFT runs (through all 10 steps: DRaFT-1 at lr 3e-3 and 60 steps blew the symmetry run up, eval
reward −3500, likely because the adapter it trains on the last step also acts on every earlier one) on the
digits DDPM, one on the classifier's log-probability of a 3
(``digit_logprob``), one on left-right symmetry (``symmetry``), then ``python -m metaopt.diffusion.mix`` on
their run folders over the scales {0, 0.5, 1} × {0, 0.5, 1}. Writes ``results/mix.md`` (both rewards at each
pair of scales) and ``results/mix.png`` (the samples of each pair).

python -m experiments.diffusion.mix_rewards [--steps 30] [--lr 1e-3] [--variant full] [--runs outputs/mix_rewards]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def call(args: list[str]) -> None:
    print("$ " + " ".join(args), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}
    subprocess.run([sys.executable, *args], check=True, env=env)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--variant", default="full", help="outer.variant of both runs (full, truncated: K=1, lv)")
    parser.add_argument("--runs", default="outputs/mix_rewards", help="where the two runs' folders go")
    parser.add_argument("--rewards", nargs=2, default=["digit_logprob", "symmetry"])
    args = parser.parse_args()
    runs = Path(args.runs)
    folders = []
    for reward in args.rewards:
        folder = runs / reward
        folders.append(folder)
        if (folder / "lora.pt").exists():
            print(f"{folder} has lora.pt: not retrained", flush=True)
            continue
        call(["-m", "metaopt.run", "task=digits_diffusion", "outer=draft", f"outer.variant={args.variant}",
              "outer.truncation_length=1", f"task.reward={reward}", f"outer.steps={args.steps}",
              "outer.eval_every=20", f"optimizer.lr={args.lr}", "logger=none", "progress=false", "threads=1",
              "overwrite=true", f"hydra.run.dir={folder}"])
    out = runs / "mix"
    call(["-m", "metaopt.diffusion.mix", *map(str, folders), "--scales", "0", "0.5", "1", "--names",
          *args.rewards, "--out", str(out), "--threads", "1"])
    RESULTS.mkdir(exist_ok=True)
    for name in ("mix.md", "mix.png", "mix.json"):
        shutil.copy(out / name, RESULTS / name)
    print(f"copied to {RESULTS}")


if __name__ == "__main__":
    main()
