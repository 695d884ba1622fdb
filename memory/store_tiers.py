"""The long-term store's RAM tier: entries' tensors in an LRU cache bounded in bytes, over the disk tier.

The disk tier is the segment files themselves (``memory.store_io``): every entry is written through to
disk, so the RAM tier is only a cache and may drop anything at any time. Not thread-safe on its own: the
store holds its lock around every call.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

Tensors = dict[str, torch.Tensor]


def tensors_bytes(tensors: Tensors) -> int:
    """Bytes held by a flat tensor dict."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


class RamTier:
    """Least-recently-used entries' tensors, never more than ``limit`` bytes (pinned when ``pin``)."""

    def __init__(self, limit: int, pin: bool = False) -> None:
        """``limit``: bytes (>= 0; 0 keeps nothing). ``pin``: page-lock tensors for fast copies to CUDA."""
        if int(limit) < 0:
            raise ValueError(f"ram_bytes must be >= 0, got {limit}")
        self.limit = int(limit)
        self.pin = bool(pin)
        self.used = 0
        self._lru: OrderedDict[int, Tensors] = OrderedDict()  # least recently used first

    def get(self, eid: int) -> Tensors | None:
        """The entry's tensors (now the most recently used), or None when the tier does not hold it."""
        tensors = self._lru.get(eid)
        if tensors is not None:
            self._lru.move_to_end(eid)
        return tensors

    def peek(self, eid: int) -> Tensors | None:
        """The entry's tensors without touching the LRU order (None when not held)."""
        return self._lru.get(eid)

    def put(self, eid: int, tensors: Tensors) -> None:
        """Hold ``tensors`` for ``eid``, evicting the least recently used entries to make room; an entry
        larger than the whole tier is not held."""
        if eid in self._lru:
            self._lru.move_to_end(eid)
            return
        size = tensors_bytes(tensors)
        if size > self.limit:
            return
        while self._lru and self.used + size > self.limit:
            _, old = self._lru.popitem(last=False)
            self.used -= tensors_bytes(old)
        if self.pin:
            tensors = {k: v.pin_memory() for k, v in tensors.items()}
        self._lru[eid] = tensors
        self.used += size

    def discard(self, eid: int) -> None:
        """Drop the entry if held."""
        old = self._lru.pop(eid, None)
        if old is not None:
            self.used -= tensors_bytes(old)

    def clear(self) -> None:
        """Drop everything."""
        self._lru.clear()
        self.used = 0

    def ids(self) -> list[int]:
        """Held entry ids, least recently used first."""
        return list(self._lru)
