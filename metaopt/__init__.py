"""metaopt: meta-optimization for PyTorch.

Drop-in optimizers (``metaopt.optim``), tasks (``metaopt.tasks``), games (``metaopt.games``), outer
loops (``metaopt.outer``), gradient estimators for unrolled computation graphs (``metaopt.unrolled``),
bilevel outer loops (``metaopt.bilevel``), reward fine-tuning of diffusion models (``metaopt.diffusion``:
DRaFT, DDPO, ES; diffusers and peft are the optional ``diffusion`` extra) and a Hydra experiment runner
(``python -m metaopt.run``).

The subpackages are imported on first use (PEP 562), so that ``import metaopt.optim`` costs torch and
the optimizers only, and the runner's ``--help`` does not wait for every task to load.
"""

import importlib

__version__ = "0.1.0"
__all__ = ["bilevel", "diffusion", "games", "optim", "outer", "tasks", "unrolled", "__version__"]
_SUBPACKAGES = frozenset(__all__) - {"__version__"}


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"metaopt.{name}")
    raise AttributeError(f"module 'metaopt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBPACKAGES)
