"""The bilevel outer loop in its two modes (Vicol et al., 2022, §2 and Algorithms 1–2).

* ``cold_start``: every outer step re-initialises the inner problem to the *same* w₀ (and a fresh
  inner optimizer state), trains it for ``inner_steps`` steps (or until ``‖∇_w f‖ ≤ tolerance``),
  then steps λ along the hypergradient at the final inner parameters. The result is a function of λ
  alone: w_T(λ).
* ``warm_start``: the inner state is carried from one outer step to the next, ``inner_steps`` steps
  per outer step. The inner weights then depend on the whole λ trajectory and can hold information
  about the outer objective that the final λ does not; hence every run also reports the outer
  objective after re-training from scratch (from w₀) on the final λ (``retrain_*`` in the summary).

Memory: the hypergradient methods return detached tensors only, so nothing of one outer step's graph
is alive during the next one; unrolled methods hold a graph linear in the steps they differentiate,
implicit ones a single double-backward graph at the final inner parameters.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from metaopt._tree import tree_norm
from metaopt.bilevel.hypergradient import Hypergradient
from metaopt.bilevel.implicit import ImplicitCG, ImplicitHypergradient
from metaopt.bilevel.inner import InnerOptimizer, InnerState, run_inner
from metaopt.bilevel.linear_solve import ConvergenceWarning
from metaopt.checks import require, target_class
from metaopt.optim.specs import SPECS, spec_for
from metaopt.tasks.bilevel.problem import BilevelProblem

__all__ = ["BilevelLoop", "MODES"]

MODES = ("cold_start", "warm_start")


class BilevelLoop:
    """``steps`` hypergradient steps on the outer parameters of ``task`` (a ``BilevelProblem``).

    ``optimizer`` is the runner's ``cfg.optimizer`` factory: it names the *inner* optimizer, mapped to
    its functional core (``InnerOptimizer.from_config``; ``inner_optimizer`` names a spec directly).
    With an implicit hypergradient, which never differentiates through the inner steps, an optimizer
    without a functional core (APO, a user's own ``torch.optim.Optimizer``) trains the inner problem
    as it is (``StatefulInnerOptimizer``); unrolled hypergradients need a functional core.
    ``outer_optimizer`` is a factory of a ``torch.optim`` optimizer over the outer parameters;
    ``hypergradient`` one of ``Unroll``, ``TruncatedUnroll``, ``ImplicitCG``, ``ImplicitNeumann``,
    ``ImplicitIdentity``. ``retrain_steps`` (default: the inner steps of one cold-start solve, or all
    inner steps of a warm-start run) is the length of the from-scratch re-training of the final
    evaluation.
    """

    accepts = ("bilevel",)

    @staticmethod
    def optimizer_refusal(optimizer: type, kind: str | None, outer: Mapping[str, Any] | None = None) -> str | None:
        hypergradient = target_class((outer or {}).get("hypergradient"))
        if spec_for(optimizer) is not None or (hypergradient is not None
                                               and issubclass(hypergradient, ImplicitHypergradient)):
            return None
        known = ", ".join(s.optimizer.__name__ for s in SPECS.values())
        return (f"{optimizer.__name__} has no functional core, which an unrolled hypergradient differentiates "
                f"through: use an implicit one (outer/hypergradient=ift_cg, ift_neumann or ift_identity), "
                f"which trains the inner problem with any torch.optim.Optimizer, or one of {known}")

    def __init__(self, task: BilevelProblem, optimizer: Callable | None = None,
                 generator: torch.Generator | None = None, mode: str = "cold_start",
                 hypergradient: Hypergradient | None = None, steps: int = 100, inner_steps: int = 100,
                 tolerance: float | None = None, outer_optimizer: Callable | None = None,
                 retrain_steps: int | None = None, eval_every: int = 10, inner_optimizer: str | None = None):
        require("task", type(task).__name__, isinstance(task, BilevelProblem),
                "a metaopt.bilevel problem (task=digits_distill, digits_l2, digits_augment, ...), "
                "not a plain SupervisedTask")
        require("outer.mode", mode, mode in MODES, f"one of {MODES}")
        for name, value in (("steps", steps), ("inner_steps", inner_steps)):
            require(f"outer.{name}", value, isinstance(value, int) and value > 0, "a positive integer")
        require("outer.tolerance", tolerance, tolerance is None or (
            isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool) and math.isfinite(tolerance)
            and tolerance > 0), "null or a finite number > 0")
        require("outer.retrain_steps", retrain_steps,
                retrain_steps is None or (isinstance(retrain_steps, int) and retrain_steps > 0),
                "null or a positive integer")
        require("outer.eval_every", eval_every, isinstance(eval_every, int) and eval_every >= 0,
                "a non-negative integer (0: only at the end)")
        self.problem = task
        self.mode = mode
        self.hypergradient = hypergradient if hypergradient is not None else ImplicitCG()
        self.inner_optimizer = InnerOptimizer.from_config(
            optimizer, inner_optimizer, stateful=isinstance(self.hypergradient, ImplicitHypergradient))
        self.inner_optimizer.check(task)
        self.num_steps = steps
        self.eval_every = eval_every
        self.inner_steps = inner_steps
        self.tolerance = tolerance
        if retrain_steps is None:
            retrain_steps = inner_steps if mode == "cold_start" else inner_steps * steps
        self.retrain_steps = retrain_steps
        self.generator = generator if generator is not None else torch.Generator()
        self.outer_params = tuple(p.detach().clone().requires_grad_() for p in task.init_outer())
        factory = outer_optimizer if outer_optimizer is not None else (lambda p: torch.optim.Adam(p, lr=0.01))
        self.outer_optimizer = factory(self.outer_params)
        self.state = self.inner_optimizer.init(task.init_inner())
        self.unconverged_steps = 0

    def step(self) -> dict[str, float]:
        if self.mode == "warm_start":
            start = self.state
        else:
            start = self.inner_optimizer.init(self.problem.init_inner())
        result = self.hypergradient(self.problem, self.inner_optimizer, self.outer_params, start,
                                    self.inner_steps, self.generator, self.tolerance)
        self.state = result.state
        if self.mode == "cold_start" and self.tolerance is not None and result.residual > self.tolerance:
            if self.unconverged_steps == 0:
                warnings.warn(
                    "bilevel cold start: the inner problem did not converge in "
                    f"inner_steps={self.inner_steps} "
                    f"(residual |grad_w f| = {result.residual:.3g} > tolerance={self.tolerance:g}); the "
                    "hypergradient assumes a converged inner solution. Raise inner_steps or the inner lr "
                    "(later occurrences are counted in unconverged_steps)", ConvergenceWarning, stacklevel=2)
            self.unconverged_steps += 1
        self.outer_optimizer.zero_grad(set_to_none=True)
        for param, grad in zip(self.outer_params, result.grads):
            param.grad = grad.to(param.dtype)
        self.outer_optimizer.step()
        return {"outer_loss": result.outer_loss, "inner_residual": result.residual,
                "hypergradient_norm": float(tree_norm(result.grads)),
                "inner_steps": float(result.inner_steps)}

    def evaluate(self) -> dict[str, float]:
        """Metrics of the current inner parameters (warm: carried; cold: the last inner solution)."""
        return self.problem.evaluate(self.state.params, tuple(p.detach() for p in self.outer_params))

    def retrain(self, steps: int | None = None) -> InnerState:
        """Train from w₀ on the current outer parameters (the cold evaluation), without a graph."""
        outer = tuple(p.detach() for p in self.outer_params)
        start = self.inner_optimizer.init(self.problem.init_inner())
        generator = torch.Generator().manual_seed(0)
        return run_inner(self.problem, self.inner_optimizer, start, outer, steps or self.retrain_steps,
                         generator).state

    def summary(self) -> dict[str, Any]:
        outer = tuple(p.detach() for p in self.outer_params)
        retrained = self.problem.evaluate(self.retrain().params, outer)
        return {**self.evaluate(), **{f"retrain_{k}": v for k, v in retrained.items()},
                "unconverged_steps": self.unconverged_steps, "mode": self.mode,
                "hypergradient": repr(self.hypergradient), "inner_optimizer": repr(self.inner_optimizer)}

    def state_dict(self) -> dict[str, Any]:
        return {"outer_params": [p.detach().clone() for p in self.outer_params],
                "outer_optimizer": self.outer_optimizer.state_dict(),
                "inner_state": self.inner_optimizer.state_dict(self.state),
                "generator": self.generator.get_state(), "unconverged_steps": self.unconverged_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for param, saved in zip(self.outer_params, state["outer_params"]):
                param.copy_(saved)
        self.outer_optimizer.load_state_dict(state["outer_optimizer"])
        self.state = self.inner_optimizer.load_state_dict(self.state, state["inner_state"])
        self.generator.set_state(state["generator"])
        self.unconverged_steps = state["unconverged_steps"]

    def plots(self, folder: Path) -> list[Path]:
        plot = getattr(self.problem, "plot", None)
        if plot is None:
            return []
        return plot(tuple(p.detach() for p in self.outer_params), Path(folder))
