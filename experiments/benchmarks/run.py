"""``make bench``: run every ``bench_*.py`` here and write ``RESULTS.md``.

Each benchmark module defines ``run(quick=False, devices=("cpu", "cuda")) -> list[dict]`` (CUDA rows
only where a GPU is available); every dict is one table:
``{"title": str, "columns": [str, ...], "rows": [[...], ...], "notes": str}``. Each row states a
ratio against a baseline measured in the same run.

    python -m experiments.benchmarks.run                 # all, writes RESULTS.md
    python -m experiments.benchmarks.run --only runner   # bench_runner.py only, prints the tables
    python -m experiments.benchmarks.run --devices cuda --output RESULTS_cuda.md   # GPU rows only
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import sys
from pathlib import Path

import torch

from metaopt.runner.report import markdown_table

HERE = Path(__file__).resolve().parent


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {os.cpu_count()} cores{gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads")


def format_table(table: dict) -> str:
    text = f"### {table['title']}\n\n" + markdown_table(
        table["columns"], table["rows"], lambda v: f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}")
    return text + (f"\n{table['notes']}\n" if table.get("notes") else "")


def recorded_cuda_tables() -> str:
    """The CUDA tables last recorded on a GPU machine (``cuda/*.md``, written with ``--devices cuda``)."""
    parts = ["## CUDA rows, recorded on a GPU machine\n\nThis machine has no GPU; these tables are the last "
             "ones written by `python -m experiments.benchmarks.run --only NAME --devices cuda --output "
             "experiments/benchmarks/cuda/NAME.md` on a machine with one (its lines say which, and when: they "
             "measure the code of that day, not the changes made since).\n"]
    for path in sorted((HERE / "cuda").glob("*.md")):
        text = path.read_text()
        lines = [line for line in text.splitlines() if line.startswith(("Written by", "Machine:"))]
        tables = text[text.find("### "):] if "### " in text else ""
        parts.append("\n\n".join(lines) + f"\n\n{tables}")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="benchmark names (bench_<name>.py) to run")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke test)")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=["cpu", "cuda"])
    parser.add_argument("--output", help="where to write the tables (default: RESULTS.md when every "
                                          "benchmark runs in full on every device)")
    args = parser.parse_args(argv)
    names = sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; available: {names}")
        names = [n for n in names if n in args.only]
    sections = []
    for name in names:
        print(f"== bench_{name}", flush=True)
        module = importlib.import_module(f"experiments.benchmarks.bench_{name}")
        for table in module.run(quick=args.quick, devices=tuple(args.devices)):
            text = format_table(table)
            print(text, flush=True)
            sections.append(text)
    output = args.output
    if output is None:
        if args.only or args.quick or len(args.devices) < 2:
            return
        output = str(HERE / "RESULTS.md")
    if "cuda" in args.devices and not torch.cuda.is_available():
        sections.append(recorded_cuda_tables())
    header = (f"# Benchmark results\n\nWritten by `make bench` on {datetime.date.today()}.\n\n"
              f"Machine: {machine()}.\n\nEvery ratio compares two timings taken in the same run.\n\n")
    Path(output).write_text(header + "\n".join(sections))
    print(f"wrote {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
