"""The bounded queue behind pushed media (``PushSource`` frames, ``AudioPush`` audio).

A producer (a callback, a socket handler) must never block: ``put`` refuses an item that would take the
queue past its capacity, and the caller counts the drop. Capacity is a cost (frames, seconds of audio).
The consumer blocks in ``get`` / iteration until an item arrives or the queue is ended. Producers that
must decide more under the same lock (times, resampler state) hold ``lock`` around ``fits`` and ``put``.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class PushQueue(Generic[T]):
    """Thread-safe FIFO bounded by the summed cost of its items; never blocks a producer."""

    def __init__(self, capacity: float) -> None:
        """``capacity``: the most cost that may wait (> 0)."""
        if not capacity > 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        self.capacity = capacity
        self.lock = threading.Condition()  # hold it around fits() + put() to decide atomically
        self._items: deque[tuple[T, float]] = deque()
        self._queued = 0.0
        self._ended = False

    @property
    def ended(self) -> bool:
        """Whether ``end`` or ``close`` was called (no more items are taken)."""
        return self._ended

    def fits(self, cost: float) -> bool:
        """Whether an item of ``cost`` would be taken now (not ended, room left)."""
        with self.lock:
            return not self._ended and self._queued + cost <= self.capacity

    def put(self, item: T, cost: float = 1.0) -> bool:
        """Queue ``item`` if it fits (see ``fits``); False when it was refused. Never blocks."""
        with self.lock:
            if not self.fits(cost):
                return False
            self.add(item, cost)
            return True

    def add(self, item: T, cost: float) -> None:
        """Queue ``item`` unchecked: for a producer that holds ``lock`` and admitted it with ``fits`` on
        another measure (AudioPush checks the seconds pushed, then queues the seconds resampled)."""
        with self.lock:
            self._items.append((item, cost))
            self._queued += cost
            self.lock.notify()

    def get(self, timeout: float | None = None) -> T | None:
        """The next item, waiting up to ``timeout`` seconds (None: until one comes or the queue ends);
        None on timeout or once the queue is ended and empty."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            while not self._items and not self._ended:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self.lock.wait(left)
            if not self._items:
                return None
            item, cost = self._items.popleft()
            self._queued = max(0.0, self._queued - cost)
            return item

    def __iter__(self) -> Iterator[T]:
        """The items as they come; ends once the queue is ended and empty."""
        while True:
            item = self.get()
            if item is None:
                return
            yield item

    def __len__(self) -> int:
        with self.lock:
            return len(self._items)

    def queued(self) -> float:
        """Summed cost of the waiting items."""
        with self.lock:
            return self._queued

    def end(self) -> None:
        """Take no more items; consumers finish what is queued."""
        with self.lock:
            self._ended = True
            self.lock.notify_all()

    def close(self) -> None:
        """Take no more items and discard those waiting."""
        with self.lock:
            self._ended = True
            self._items.clear()
            self._queued = 0.0
            self.lock.notify_all()
