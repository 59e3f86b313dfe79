"""Read an offline wandb run the way ``wandb sync`` will upload it: the records of its ``.wandb`` file.

wandb.Api reads only synced runs, and this wandb has no Python reader of its transaction log, so this is
the log's framing (LevelDB's log format: 32 KiB blocks of records with a 7-byte header, after a 7-byte
``:W&B`` file header) around wandb's own protobuf records.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2

_BLOCK = 32768
_FULL, _LAST = 1, 4


def records(path: str | Path) -> Iterator[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, "not a wandb transaction log"
    pos, chunk = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # the rest of a block is padding
            pos += left
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def _items(items) -> dict:
    """Items as a dict; an item with a ``nested_key`` (an image's ``width``, ``_type``, ...) nests."""
    out: dict = {}
    for item in items:
        *parents, key = list(item.nested_key) or [item.key]
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[key] = json.loads(item.value_json)
    return out


def read_run(run_folder: str | Path, timeout: float = 30.0) -> dict:
    """``{"run": Run record, "config": {...}, "history": [row, ...], "summary": {...}, "files": [...]}``.

    wandb's service writes the log on its own: ``run.finish()`` may return before the log ends (seen when a
    process starts the same run twice), so this waits up to ``timeout`` seconds for its exit record."""
    (path,) = Path(run_folder).glob("*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        try:
            log = list(records(path))
        except DecodeError:  # a record still being written
            log = []
        if any(r.WhichOneof("record_type") == "exit" for r in log) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    run, config, history, summary, files = None, {}, [], {}, []
    for record in log:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config.update(_items(record.run.config.update))
        elif kind == "config":
            config.update(_items(record.config.update))
        elif kind == "history":
            history.append(_items(record.history.item))
        elif kind == "summary":
            summary.update(_items(record.summary.update))
        elif kind == "files":
            files += [f.path for f in record.files.files]
    return {"run": run, "config": config, "history": history, "summary": summary, "files": files}
