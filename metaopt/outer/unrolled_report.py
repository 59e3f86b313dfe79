"""The figure and Markdown table that end an unrolled outer-loop run: start vs tuned vs best grid point."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from metaopt.runner.report import markdown_table  # noqa: E402
from metaopt.tasks.unrolled.problem import UnrolledProblem  # noqa: E402
from metaopt.tasks.unrolled.tuning import TunedRun  # noqa: E402

__all__ = ["plot_unrolled_run", "write_comparison_table", "comparison_rows"]

_COLUMNS = ("meta_objective", "val_loss", "val_accuracy", "test_accuracy", "distance_to_optimum", "distance",
            "modes_covered", "high_quality_fraction",
            # a diffusion task's sampling chain (SamplingChain)
            "eval_reward", "eval_accuracy", "eval_class_entropy", "eval_data_distance")


def _setting(problem: UnrolledProblem, theta: torch.Tensor) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in problem.describe(theta).items())


def comparison_rows(problem: UnrolledProblem, theta_start: torch.Tensor, theta_tuned: torch.Tensor,
                    final: dict[str, dict[str, float]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (start, best grid point, tuned) of the comparison table: each row's setting, what
    finding it cost (``steps_spent``: inner training steps, one particle's step counting one, when the
    loop records it) and what it achieved."""
    columns = [c for c in _COLUMNS if any(c in m for m in final.values())]
    cost = ["steps_spent"] if any("steps_spent" in m for m in final.values()) else []
    rows = []
    for name in ("start", "grid_best", "tuned"):
        if name not in final:
            continue
        metrics = final[name]
        if name == "start":
            setting = _setting(problem, theta_start)
        elif name == "tuned":
            setting = _setting(problem, theta_tuned)
        else:
            setting = ", ".join(f"{k.split('.', 1)[1]}={v:.4g}" for k, v in metrics.items()
                                if k.startswith("setting."))
        spent = [f"{int(metrics['steps_spent']):,}" if "steps_spent" in metrics else ""] if cost else []
        rows.append([name, setting, *spent, *(f"{metrics[c]:.4g}" for c in columns)])
    return ["", "setting", *cost, *columns], rows


def write_comparison_table(problem: UnrolledProblem, theta_start: torch.Tensor, theta_tuned: torch.Tensor,
                           final: dict[str, dict[str, float]], path: Path) -> Path:
    header, rows = comparison_rows(problem, theta_start, theta_tuned, final)
    table = markdown_table(header, rows)
    path.write_text(table)
    print("\n" + table, end="")
    return path


def plot_unrolled_run(problem: UnrolledProblem, trajectory: torch.Tensor, final: dict[str, dict[str, float]],
                      path: Path) -> Path:
    """θ (as ``problem.describe`` shows it) over outer steps; for a tuned optimizer also the learning-rate
    schedules of the start, the tuned θ and the best grid point."""
    panels = 2 if isinstance(problem, TunedRun) and any(key == "lr" for key, _, _ in problem.tuning.entries) else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.8), squeeze=False)
    described = [problem.describe(theta) for theta in trajectory]
    ax = axes[0][0]
    for key in described[0]:
        ax.plot([d[key] for d in described], label=key)
    if all(v > 0 for d in described for v in d.values()):
        ax.set_yscale("log")
    ax.set_xlabel("outer step")
    ax.set_title("outer parameters")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if panels == 2:
        ax = axes[0][1]
        steps = torch.arange(problem.horizon)
        schedules = {"start": trajectory[0], "tuned": trajectory[-1]}
        if "grid_best" in final:
            values = {k.split(".", 1)[1]: v for k, v in final["grid_best"].items()
                      if k.startswith("setting.")}
            schedules["grid best"] = problem.theta_for(**values)
        per_layer = False
        for label, theta in schedules.items():
            theta = theta.cpu()
            lr = problem.hyperparameters(theta[None].expand(len(steps), -1), steps)["lr"]
            per_layer = isinstance(lr, list)
            lr = lr[0] if per_layer else lr
            accuracy = final.get(label.replace(" ", "_"), {}).get("val_accuracy")
            momentum = problem.describe(theta).get("momentum")
            suffix = f", momentum {momentum:.2f}" if momentum is not None else ""
            suffix += f", val acc {accuracy:.3f}" if accuracy is not None else ""
            ax.plot(steps, lr, label=label + suffix)
        ax.set_yscale("log")
        ax.set_xlabel("inner step")
        ax.set_title("learning rate" + (" (first layer)" if per_layer else ""))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
