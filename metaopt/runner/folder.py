"""Ownership of a run folder: one live run writes into a folder, and a finished run's results stay put.

A run holds ``<folder>/.lock`` under ``fcntl.flock`` for as long as it runs; the file holds the owner's
pid (for the message a second run gets). The kernel drops the lock when its process dies, however it
dies, so a lock file left by a killed run (a dead pid) is simply taken over.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["FolderInUseError", "RunFolderLock", "RESULT_FILES"]

LOCK = ".lock"
# The files of a run's results (README, "What a run writes"): a fresh run refuses to replace them.
RESULT_FILES = ("summary.json", "metrics.jsonl", "checkpoint.pt", "curves.png", "lora.pt")


class FolderInUseError(RuntimeError):
    """Another live run owns the folder."""


class RunFolderLock:
    """Exclusive ownership of ``folder`` while the run lives: ``acquire()`` or fail, ``release()`` at the end."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self._fd: int | None = None

    def acquire(self) -> RunFolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise FolderInUseError(
                    f"run folder {self.folder} is in use by the run of process {owner} (lock {self.path}); "
                    "choose another hydra.run.dir, or wait for that run to end") from None
            # A previous owner may have unlinked the file between our open and our lock: lock the file
            # that is at the path now, or two runs would each hold a lock on a different file.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still holding the lock, so that no waiting run can lock the old file meanwhile.
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
