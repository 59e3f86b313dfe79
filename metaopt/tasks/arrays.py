"""A user's own data as a ``SplitData``: arrays or tensors in, seeded train/validation/test splits out.

A loader ``def load(): return from_arrays(inputs, targets)`` is a data ``_target_`` for the runner
(``task=custom task.data._target_=my_project.tasks.load``), like the bundled ``load_digits``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metaopt.checks import require
from metaopt.tasks.data import SplitData, random_split

__all__ = ["from_arrays"]

_KINDS = ("classification", "regression")


def _array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"invalid {name}: cannot be read as an array ({error})") from None


def from_arrays(inputs: Any, targets: Any, val_fraction: float = 0.2, test_fraction: float = 0.2,
                split_seed: int = 0, kind: str = "classification") -> SplitData:
    """Split ``inputs`` (one row per example: ``(n, features)`` or ``(n, channels, height, width)``) and
    ``targets`` (``n`` class indices for ``kind="classification"``; ``(n,)`` or ``(n, outputs)`` numbers for
    ``"regression"``) into train/validation/test at random (``split_seed``), as the bundled loaders do:
    inputs float32, class targets int64, regression targets float32. Numpy arrays, tensors or lists."""
    require("kind", kind, kind in _KINDS, f"one of {_KINDS}")
    x, y = _array("inputs", inputs), _array("targets", targets)
    require("inputs", f"an array of shape {x.shape}", x.ndim >= 2,
            "one row per example, at least 2 dimensions (reshape a single feature to (n, 1))")
    if len(x) != len(y):
        raise ValueError(f"inputs has {len(x)} examples but targets has {len(y)}; they must match row for row")
    if len(x) == 0:
        raise ValueError("inputs and targets hold no examples")
    require("inputs", f"an array of dtype {x.dtype}", np.issubdtype(x.dtype, np.number) and not
            np.iscomplexobj(x), "real numbers")
    require("inputs", "an array with NaN or Inf", bool(np.isfinite(x).all()), "finite numbers")
    if kind == "classification":
        integral = y.ndim == 1 and np.issubdtype(y.dtype, np.number) and bool(np.isfinite(y).all()) \
            and bool((np.round(y) == y).all()) and bool((y >= 0).all())
        require("targets", f"an array of shape {y.shape} and dtype {y.dtype}", integral,
                "one class index (an integer >= 0) per example for kind=classification; "
                "kind=regression for real-valued targets")
    else:
        require("targets", f"an array of dtype {y.dtype}", np.issubdtype(y.dtype, np.number)
                and bool(np.isfinite(y).all()), "finite real numbers")
    data = random_split(x, y, val_fraction, test_fraction, split_seed,
                  target_dtype=torch.long if kind == "classification" else torch.float32)
    count = len(x)
    for name, fraction, part in (("val_fraction", val_fraction, data.val), ("test_fraction", test_fraction,
                                                                             data.test)):
        # The runner evaluates every split: an empty one would give NaN metrics and stop the run.
        require(name, fraction, len(part.inputs) > 0, f"at least 1/{count} of the {count} examples, so that the "
                "split is not empty")
    require("val_fraction + test_fraction", val_fraction + test_fraction, len(data.train.inputs) > 0,
            f"small enough to leave a training example out of {count}")
    return data
