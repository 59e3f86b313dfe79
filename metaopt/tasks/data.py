"""Datasets as in-memory tensors: the embedded digits, and local MNIST / Fashion-MNIST / CIFAR-10.

Nothing is downloaded. MNIST-style folders hold the four IDX files (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, optionally
gzipped) as distributed by their authors; CIFAR-10 is the ``cifar-10-batches-py`` folder of the
python version (``data_batch_1..5``, ``test_batch``), read by an unpickler that admits only the numpy
array reconstruction those pickles need (a crafted batch cannot run code). MNIST files are checked
against the IDX format (magic numbers, 28x28 images, labels in 0..9, as many labels as images).
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from metaopt.checks import require

__all__ = ["Split", "SplitData", "random_split", "load_digits", "load_mnist", "load_fashion_mnist", "load_cifar10"]


class Split(NamedTuple):
    inputs: torch.Tensor
    targets: torch.Tensor


class SplitData(NamedTuple):
    train: Split
    val: Split
    test: Split


def random_split(x: np.ndarray, y: np.ndarray, val_fraction: float, test_fraction: float, split_seed: int,
                 target_dtype=torch.long) -> SplitData:
    """``x``, ``y`` split at random (``split_seed``) into test, validation and train parts, as tensors."""
    require("val_fraction", val_fraction, isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1,
            "a number in [0, 1)")
    require("test_fraction", test_fraction, isinstance(test_fraction, (int, float)) and 0 <= test_fraction < 1
            and val_fraction + test_fraction < 1, "a number in [0, 1) with val_fraction + test_fraction < 1")
    order = np.random.default_rng(split_seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    n_val = int(round(val_fraction * len(x)))
    parts = np.split(order, [n_test, n_test + n_val])
    test, val, train = (Split(torch.as_tensor(x[i], dtype=torch.float32),
                              torch.as_tensor(y[i], dtype=target_dtype)) for i in parts)
    return SplitData(train, val, test)


def load_digits(val_fraction: float = 0.2, test_fraction: float = 0.2, split_seed: int = 0) -> SplitData:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), pixels scaled to [0, 1]."""
    data, target = _digits_arrays()
    return random_split(data.astype(np.float32) / 16.0, target, val_fraction, test_fraction, split_seed)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``sklearn.datasets.load_digits()``'s ``data`` and ``target``, read from scikit-learn's own file.

    Importing ``sklearn.datasets`` (and the scipy it pulls in) costs about a second, more than the rest of
    a small run's startup; the digits are one gzipped CSV inside the package, which ``find_spec`` locates
    without importing it. Parsed as scikit-learn parses it (``tests/tasks`` checks they are equal); falls
    back to scikit-learn where the file is not where it should be.
    """
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, mode="rt", encoding="utf-8") as f:
                data = np.loadtxt(f, delimiter=",")
            return data[:, :-1], data[:, -1].astype(int, copy=False)
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return bunch.data, bunch.target


def _data_root(data_root: str | None, name: str) -> Path:
    require(f"{name} data_root", data_root, data_root not in (None, "", "???"),
            f"the path of a local folder holding {name} (nothing is downloaded)")
    root = Path(str(data_root)).expanduser()
    require(f"{name} data_root", str(root), root.is_dir(), f"an existing folder holding {name}")
    return root


def _find_maybe_gz(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{root} has neither {stem} nor {stem}.gz")


# IDX magic numbers: two zero bytes, 0x08 (unsigned bytes), then the number of dimensions.
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801
_NUM_CLASSES = 10


def read_idx(root: Path, stem: str, magic: int | None = None) -> np.ndarray:
    """Read one IDX file (the MNIST format: magic, big-endian dimension sizes, then uint8 data).

    ``magic`` (e.g. ``0x00000803``: unsigned bytes, three dimensions) is the one the file must have.
    Every error names the file.
    """
    path = _find_maybe_gz(root, stem)
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        header = f.read(4)
        if len(header) < 4:
            raise ValueError(f"{path}: not an IDX file (too short for the 4-byte magic number)")
        found = struct.unpack(">I", header)[0]
        zero, dtype_code, ndim = struct.unpack(">HBB", header)
        if zero != 0 or dtype_code != 0x08 or (magic is not None and found != magic):
            expected = f"0x{magic:08x}" if magic is not None else "0x000008nn (unsigned bytes)"
            raise ValueError(f"{path}: magic number 0x{found:08x}, expected {expected}; is it the right "
                             f"IDX file?")
        sizes = f.read(4 * ndim)
        if len(sizes) < 4 * ndim:
            raise ValueError(f"{path}: IDX header too short for its {ndim} dimension sizes")
        shape = struct.unpack(f">{ndim}I", sizes)
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: the header says {tuple(shape)} ({int(np.prod(shape))} values), the file holds "
                         f"{data.size}")
    return data.reshape(shape)


def _read_images_and_labels(root: Path, images_stem: str, labels_stem: str) -> tuple[np.ndarray, np.ndarray]:
    """One split of an MNIST-format folder, checked: 28x28 images, labels in 0..9, as many of each."""
    images = read_idx(root, images_stem, _IMAGES_MAGIC)
    labels = read_idx(root, labels_stem, _LABELS_MAGIC)
    images_path, labels_path = _find_maybe_gz(root, images_stem), _find_maybe_gz(root, labels_stem)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: images of shape {images.shape}, expected (N, 28, 28)")
    bad = np.flatnonzero(labels >= _NUM_CLASSES)
    if bad.size:
        raise ValueError(f"{labels_path}: labels must be in 0..{_NUM_CLASSES - 1} (found "
                         f"{int(labels[bad[0]])} at index {int(bad[0])})")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                         f"{len(labels)} labels")
    return images, labels


def load_mnist(data_root: str | None = None, val_fraction: float = 1 / 6, split_seed: int = 0,
               name: str = "MNIST") -> SplitData:
    """MNIST-format folder; the validation split is carved out of the training set."""
    root = _data_root(data_root, name)
    x_train, y_train = _read_images_and_labels(root, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    x_test, y_test = _read_images_and_labels(root, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    # A channel axis (N, 1, 28, 28) so that convolutional models take the images as they are.
    x_train = x_train.astype(np.float32)[:, None] / 255.0
    x_test = x_test.astype(np.float32)[:, None] / 255.0
    split = random_split(x_train, y_train.astype(np.int64), val_fraction, 0.0, split_seed)
    return split._replace(test=Split(torch.as_tensor(x_test), torch.as_tensor(y_test.astype(np.int64))))


def load_fashion_mnist(data_root: str | None = None, val_fraction: float = 1 / 6, split_seed: int = 0) -> SplitData:
    """Fashion-MNIST: same file format and layout as MNIST."""
    return load_mnist(data_root, val_fraction, split_seed, name="Fashion-MNIST")


# What a CIFAR-10 python batch (a dict of bytes keys, lists and one uint8 array) needs to be rebuilt,
# whichever numpy and pickle protocol wrote it. Nothing here can run code or touch files.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes in protocols 0-2 written by Python 3
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only the objects of a CIFAR-10 batch and refuses every other global."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of a CIFAR-10 batch)")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # numpy 2 renamed numpy.core
        return super().find_class(module, name)


def _load_cifar_batch(path: Path) -> dict:
    """One python-version CIFAR-10 batch, through ``_CifarUnpickler`` (never a plain ``pickle.load``)."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({error})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path}: not a CIFAR-10 python batch (expected a dict with b'data' and b'labels', "
                         f"found {found})")
    return batch


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
            batch = _load_cifar_batch(path)
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
        return np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys)

    x_train, y_train = read([f"data_batch_{i}" for i in range(1, 6)])
    x_test, y_test = read(["test_batch"])
    split = random_split(x_train, y_train, val_fraction, 0.0, split_seed)
    return split._replace(test=Split(torch.as_tensor(x_test), torch.as_tensor(y_test)))
