"""Measuring the memory an autograd graph holds, on any device (CPU included).

``tracemalloc`` does not see torch's allocations and the process RSS mixes in the allocator's
caches, so the CPU measure here counts what makes unrolled differentiation expensive: the bytes of
the tensors autograd saves for the backward pass, while they are alive. Each saved tensor is
wrapped in a small holder whose destruction (when the graph is freed) releases its bytes; tensors
sharing a storage are counted once.
"""

from __future__ import annotations

import torch

__all__ = ["SavedTensorMeter"]


class _Held:
    __slots__ = ("tensor", "meter", "key")

    def __init__(self, tensor: torch.Tensor, meter: SavedTensorMeter, key: tuple):
        self.tensor, self.meter, self.key = tensor, meter, key

    def __del__(self):
        self.meter._release(self.key)


class SavedTensorMeter:
    """``with SavedTensorMeter() as meter: …``: ``meter.live`` / ``meter.peak`` bytes saved for backward.

    Only graphs built inside the ``with`` block are counted (including the graphs of double
    backward); ``live`` returns to zero once every such graph has been freed.
    """

    def __init__(self):
        self.live = 0
        self.peak = 0
        self._storages: dict[tuple, list[int]] = {}

    def _pack(self, tensor: torch.Tensor) -> _Held:
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        entry = self._storages.get(key)
        if entry is None:
            self._storages[key] = [1, storage.nbytes()]
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        else:
            entry[0] += 1
        # Detached: holding the tensor with its grad_fn would form a cycle (output → node → holder)
        # that the garbage collector cannot see; unpacking restores the graph edge.
        return _Held(tensor.detach(), self, key)

    @staticmethod
    def _unpack(held: _Held) -> torch.Tensor:
        return held.tensor

    def _release(self, key: tuple) -> None:
        entry = self._storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._storages[key]

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
