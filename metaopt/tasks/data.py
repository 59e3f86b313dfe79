"""Datasets as in-memory tensors: the embedded digits, and local MNIST / Fashion-MNIST / CIFAR-10.

Nothing is downloaded. MNIST-style folders hold the four IDX files (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, optionally
gzipped) as distributed by their authors; CIFAR-10 is the ``cifar-10-batches-py`` folder of the
python version (``data_batch_1..5``, ``test_batch``).
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from metaopt.checks import require

__all__ = ["Split", "SplitData", "load_digits", "load_mnist", "load_fashion_mnist", "load_cifar10"]


class Split(NamedTuple):
    inputs: torch.Tensor
    targets: torch.Tensor


class SplitData(NamedTuple):
    train: Split
    val: Split
    test: Split


def _split(x: np.ndarray, y: np.ndarray, val_fraction: float, test_fraction: float, split_seed: int,
           target_dtype=torch.long) -> SplitData:
    require("val_fraction", val_fraction, 0 <= val_fraction < 1, "a number in [0, 1)")
    require("test_fraction", test_fraction, 0 <= test_fraction < 1 and val_fraction + test_fraction < 1,
            "a number in [0, 1) with val_fraction + test_fraction < 1")
    order = np.random.default_rng(split_seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    n_val = int(round(val_fraction * len(x)))
    parts = np.split(order, [n_test, n_test + n_val])
    test, val, train = (Split(torch.as_tensor(x[i], dtype=torch.float32),
                              torch.as_tensor(y[i], dtype=target_dtype)) for i in parts)
    return SplitData(train, val, test)


def load_digits(val_fraction: float = 0.2, test_fraction: float = 0.2, split_seed: int = 0) -> SplitData:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return _split(bunch.data.astype(np.float32) / 16.0, bunch.target, val_fraction, test_fraction, split_seed)


def _data_root(data_root: str | None, name: str) -> Path:
    require(f"{name} data_root", data_root, data_root not in (None, "", "???"),
            f"the path of a local folder holding {name} (nothing is downloaded)")
    root = Path(str(data_root)).expanduser()
    require(f"{name} data_root", str(root), root.is_dir(), f"an existing folder holding {name}")
    return root


def _open_maybe_gz(root: Path, stem: str):
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return gzip.open(candidate, "rb") if candidate.suffix == ".gz" else open(candidate, "rb")
    raise FileNotFoundError(f"{root} has neither {stem} nor {stem}.gz")


def read_idx(root: Path, stem: str) -> np.ndarray:
    """Read one IDX file (the MNIST format: magic, big-endian dimension sizes, then uint8 data)."""
    with _open_maybe_gz(root, stem) as f:
        zero, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"{root / stem} is not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{root / stem}: expected {int(np.prod(shape))} values, found {data.size}")
    return data.reshape(shape)


def load_mnist(data_root: str | None = None, val_fraction: float = 1 / 6, split_seed: int = 0,
               name: str = "MNIST") -> SplitData:
    """MNIST-format folder; the validation split is carved out of the training set."""
    root = _data_root(data_root, name)
    # A channel axis (N, 1, 28, 28) so that convolutional models take the images as they are.
    x_train = read_idx(root, "train-images-idx3-ubyte").astype(np.float32)[:, None] / 255.0
    y_train = read_idx(root, "train-labels-idx1-ubyte").astype(np.int64)
    x_test = read_idx(root, "t10k-images-idx3-ubyte").astype(np.float32)[:, None] / 255.0
    y_test = read_idx(root, "t10k-labels-idx1-ubyte").astype(np.int64)
    split = _split(x_train, y_train, val_fraction, 0.0, split_seed)
    return split._replace(test=Split(torch.as_tensor(x_test), torch.as_tensor(y_test)))


def load_fashion_mnist(data_root: str | None = None, val_fraction: float = 1 / 6, split_seed: int = 0) -> SplitData:
    """Fashion-MNIST: same file format and layout as MNIST."""
    return load_mnist(data_root, val_fraction, split_seed, name="Fashion-MNIST")


def load_cifar10(data_root: str | None = None, val_fraction: float = 0.1, split_seed: int = 0) -> SplitData:
    """CIFAR-10, python version (``cifar-10-batches-py``; the folder itself or its parent)."""
    root = _data_root(data_root, "CIFAR-10")
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"

    def read(names):
        xs, ys = [], []
        for n in names:
            path = root / n
            if not path.is_file():
                raise FileNotFoundError(f"CIFAR-10 batch {path} is missing")
            with open(path, "rb") as f:
                # The official distribution format is a pickle; only load folders you trust.
                batch = pickle.load(f, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
        return np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys)

    x_train, y_train = read([f"data_batch_{i}" for i in range(1, 6)])
    x_test, y_test = read(["test_batch"])
    split = _split(x_train, y_train, val_fraction, 0.0, split_seed)
    return split._replace(test=Split(torch.as_tensor(x_test), torch.as_tensor(y_test)))
