"""Checkpoints that cannot be read or written fail with the file's name and the cause, and lose nothing."""

import errno
import os

import pytest
import torch

from metaopt.run import run
from metaopt.runner.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _good(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 3, "weights": torch.arange(1000.0)})
    return path


@pytest.mark.parametrize("damage,cause", [
    (lambda data: data[: len(data) // 2], r"truncated or not a checkpoint"),
    (lambda data: b"", r"empty file"),
    (lambda data: os.urandom(len(data)), r"truncated or not a checkpoint"),
    (lambda data: data[:-30], r"truncated or not a checkpoint"),
])
def test_a_damaged_checkpoint_names_the_file_and_the_cause(tmp_path, damage, cause):
    path = _good(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=rf"cannot read checkpoint {path}: .*{cause}") as info:
        load_checkpoint(path)
    assert "weights_only=False" not in str(info.value)


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4608 vs 4544"),
])
def test_a_failed_write_keeps_the_previous_checkpoint_and_removes_the_partial_file(tmp_path, monkeypatch,
                                                                                  failure):
    path = _good(tmp_path)
    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04" + b"\x00" * 4096)  # part of an archive, as a full disk leaves it
        raise failure

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(CheckpointError, match=rf"could not write checkpoint {path}: .*disk .*full.*"
                                              rf"previous checkpoint .*kept"):
        save_checkpoint(path, {"step": 4, "weights": torch.zeros(1000)})
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no partial .tmp left
    assert load_checkpoint(path)["step"] == 3


def test_a_checkpoint_that_does_not_fit_the_run_names_the_file(make_config, tmp_path):
    """A checkpoint written without a stored config (older runs) by an Adam run, resumed with momentum SGD."""
    first = make_config("task=linreg", "optimizer=adam", "outer.steps=10", "checkpoint_every=5", "log_every=5")
    run(first, tmp_path)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    checkpoint.pop("config", None)
    save_checkpoint(tmp_path / "checkpoint.pt", checkpoint)
    second = make_config("task=linreg", "optimizer=sgd_momentum", "outer.steps=10", "checkpoint_every=5",
                         "log_every=5", "resume=true")
    with pytest.raises(CheckpointError, match=rf"checkpoint {tmp_path / 'checkpoint.pt'} does not fit this run"):
        run(second, tmp_path)
