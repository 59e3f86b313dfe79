"""Embedded digits, and the MNIST / CIFAR-10 loaders on tiny fake folders in the real file formats."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from metaopt.tasks import LinearRegression, SupervisedTask
from metaopt.tasks.data import load_cifar10, load_digits, load_fashion_mnist, load_mnist


def _write_idx(path, array, compress):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _fake_mnist(folder, n_train=30, n_test=10, compress=False):
    rng = np.random.default_rng(0)
    folder.mkdir()
    train_images = rng.integers(0, 256, (n_train, 28, 28))
    train_labels = np.arange(n_train) % 10
    _write_idx(folder / "train-images-idx3-ubyte", train_images, compress)
    _write_idx(folder / "train-labels-idx1-ubyte", train_labels, compress)
    _write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)), compress)
    _write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, compress)
    return train_images, train_labels


def test_digits_split_is_disjoint_and_complete():
    data = load_digits(val_fraction=0.2, test_fraction=0.2, split_seed=0)
    sizes = [len(s.inputs) for s in data]
    assert sum(sizes) == 1797 and sizes[1] == sizes[2] == 359
    assert data.train.inputs.shape[1:] == (64,) and 0 <= data.train.inputs.min() and data.train.inputs.max() <= 1
    rows = {tuple(x.tolist()) + (int(y),) for s in data for x, y in zip(*s)}
    assert len(rows) >= 1790  # (a few digits are exact duplicates in the original data)
    assert set(data.train.targets.tolist()) == set(range(10))
    again = load_digits(split_seed=0)
    assert torch.equal(again.val.inputs, data.val.inputs)
    assert not torch.equal(load_digits(split_seed=1).val.inputs, data.val.inputs)


def test_digits_read_without_importing_sklearn_equal_sklearns_own_loader():
    # load_digits reads scikit-learn's bundled file itself (importing sklearn.datasets costs ~1 s of startup)
    import subprocess
    import sys

    from sklearn.datasets import load_digits as sklearn_digits

    from metaopt.tasks.data import _digits_arrays

    bunch = sklearn_digits()
    data, target = _digits_arrays()
    assert data.dtype == bunch.data.dtype and target.dtype == bunch.target.dtype
    assert np.array_equal(data, bunch.data) and np.array_equal(target, bunch.target)
    code = ("import sys; from metaopt.tasks.data import load_digits; load_digits(); "
            "sys.exit(int(any(m.startswith(('sklearn', 'scipy')) for m in sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_loader_reads_idx_files(tmp_path, compress):
    images, labels = _fake_mnist(tmp_path / "mnist", compress=compress)
    data = load_mnist(str(tmp_path / "mnist"), val_fraction=0.2)
    assert data.train.inputs.shape == (24, 1, 28, 28) and data.val.inputs.shape == (6, 1, 28, 28)
    assert data.test.inputs.shape == (10, 1, 28, 28) and data.test.targets.dtype == torch.long
    # every loaded example is one of the written ones, scaled to [0, 1]
    first = data.train.inputs[0, 0].numpy() * 255
    match = [i for i in range(len(images)) if np.allclose(images[i], first)]
    assert len(match) == 1 and data.train.targets[0] == labels[match[0]]
    fashion = load_fashion_mnist(str(tmp_path / "mnist"), val_fraction=0.2)
    assert torch.equal(fashion.test.inputs, data.test.inputs)


def test_cifar10_loader_reads_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": list(range(4))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    data = load_cifar10(str(tmp_path), val_fraction=0.25)
    assert data.train.inputs.shape == (15, 3, 32, 32) and data.val.inputs.shape == (5, 3, 32, 32)
    assert data.test.inputs.shape == (4, 3, 32, 32) and data.train.inputs.max() <= 1


def test_missing_folders_and_files_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"invalid MNIST data_root: None \(allowed: the path of a local folder"):
        load_mnist(None)
    with pytest.raises(ValueError, match=r"invalid CIFAR-10 data_root: '.*nowhere' \(allowed: an existing folder"):
        load_cifar10(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(str(tmp_path / "empty"))


def test_linreg_condition_number_and_optimum():
    task = LinearRegression(dim=10, condition_number=1000.0, noise=0.0, num_train=4000)
    eig = torch.linalg.eigvalsh(task.covariance)
    assert eig.max() / eig.min() == pytest.approx(1000.0, rel=1e-6)
    x, y = task.data.train
    sample_cov = x.double().T @ x.double() / len(x)
    sample_eig = torch.linalg.eigvalsh(sample_cov)
    assert 300 < sample_eig.max() / sample_eig.min() < 3000
    solution = torch.linalg.lstsq(x.double(), y.double()).solution.squeeze()
    torch.testing.assert_close(solution, task.true_weights, rtol=1e-4, atol=1e-4)
    model = task.build_model()
    with torch.no_grad():
        model[-1].weight.copy_(task.true_weights.float()[None])
    assert task.evaluate(model)["test_loss"] < 1e-8


def test_task_bad_inputs():
    data = load_digits()
    with pytest.raises(ValueError, match=r"invalid task.batch_size: 0 \(allowed: a positive integer\)"):
        SupervisedTask(data, model=None, batch_size=0)
    with pytest.raises(ValueError, match=r"invalid task.kind: 'ranking'"):
        SupervisedTask(data, model=None, kind="ranking")
    with pytest.raises(ValueError, match=r"invalid task.condition_number: 0.5"):
        LinearRegression(condition_number=0.5)


def _rewrite(folder, stem, array):
    (folder / stem).unlink()
    _write_idx(folder / stem, array, compress=False)


@pytest.mark.parametrize("stem,array,pattern", [
    ("train-labels-idx1-ubyte", np.arange(30) % 10 + 200 * (np.arange(30) == 3),
     r"train-labels-idx1-ubyte.*labels must be in 0\.\.9 \(found 203 at index 3\)"),
    ("train-labels-idx1-ubyte", np.arange(29) % 10,
     r"train-images-idx3-ubyte holds 30 images but .*train-labels-idx1-ubyte holds 29 labels"),
    ("t10k-images-idx3-ubyte", np.zeros((10, 27, 27)),
     r"t10k-images-idx3-ubyte.*\(10, 27, 27\).*\(N, 28, 28\)"),
    ("t10k-labels-idx1-ubyte", np.zeros((10, 28, 28)),
     r"t10k-labels-idx1-ubyte.*magic number 0x00000803.*0x00000801"),
])
def test_mnist_loader_checks_the_idx_files(tmp_path, stem, array, pattern):
    _fake_mnist(tmp_path / "mnist")
    _rewrite(tmp_path / "mnist", stem, array)
    with pytest.raises(ValueError, match=pattern):
        load_mnist(str(tmp_path / "mnist"))


def test_mnist_loader_names_a_truncated_header(tmp_path):
    _fake_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*too short"):
        load_mnist(str(tmp_path / "mnist"))


class _RunsCode:
    """A pickle payload that would run a shell command when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_cifar10_loader_refuses_a_pickle_that_runs_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": list(range(4))}
        if name == "data_batch_1":
            batch[b"batch_label"] = _RunsCode(marker)
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with pytest.raises(ValueError, match=r"data_batch_1.*refusing to load (posix|os)\.system"):
        load_cifar10(str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_loader_reads_every_pickle_protocol(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": b"x", b"data": np.full((2, 3072), 255, dtype=np.uint8), b"labels": [0, 9],
                 b"filenames": [b"a.png", b"b.png"]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    data = load_cifar10(str(folder), val_fraction=0.2)
    assert data.test.inputs.shape == (2, 3, 32, 32) and float(data.test.inputs.min()) == 1.0
