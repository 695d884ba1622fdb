"""Pipeline stages in their own threads: ``DecodeAhead`` runs a source's iteration (decoding) in a thread
that fills a bounded frame queue; ``StageClock`` adds up the seconds each stage was busy.

The session's stream side runs as decode -> (sample, convert, chunk, preprocess) -> perception, each in
its own thread with bounded queues between them, so ingest time approaches the slowest stage rather
than the sum. Decoders (PyAV, decord), Pillow and torch release the GIL while they work.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Iterator

logger = logging.getLogger(__name__)

#: Stages whose busy seconds a pipeline reports, in pipeline order.
STAGES = ("decode", "convert", "preprocess", "model")


class StageClock:
    """Busy seconds per stage (each stage is written by one thread only)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)

    def add(self, stage: str, seconds: float) -> None:
        """Count ``seconds`` of work in ``stage``."""
        self.seconds[stage] += seconds

    def shares(self) -> dict[str, float]:
        """Each stage's part of the total busy time (0 when nothing was timed)."""
        total = sum(self.seconds.values())
        return {k: (v / total if total else 0.0) for k, v in self.seconds.items()}


class _End:
    """The decode thread finished (``error``: the exception that ended it, if any)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class DecodeAhead:
    """Iterate ``source`` in a daemon thread into a queue of at most ``depth`` frames; iterate this to get them.

    The frames come out in order. An exception raised by the source is re-raised in the consuming thread
    (after the frames decoded before it). ``stop()`` ends the thread at its next frame (or within 0.1 s
    while it waits on a full queue). Time inside the source's iteration counts as ``decode`` in ``clock``;
    time the consumer waits for a frame is in ``waited_s``.
    """

    def __init__(self, source: Any, *, depth: int = 64, clock: StageClock | None = None) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.source = source
        self.clock = clock or StageClock()
        self.waited_s = 0.0
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        end = _End()
        try:
            it = iter(self.source)
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    frame = next(it)
                except StopIteration:
                    break
                finally:
                    self.clock.add("decode", time.perf_counter() - t0)
                if not self._put(frame):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            end.error = e
        self._put(end)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Any]:
        if self._thread is not None:
            raise RuntimeError("DecodeAhead is iterated once; make a new one")
        self._thread = threading.Thread(target=self._run, name="vstream-decode", daemon=True)
        self._thread.start()
        try:
            while True:
                t0 = time.perf_counter()
                while True:
                    try:
                        item = self._q.get(timeout=0.1)
                        break
                    except queue.Empty:
                        if self._stop.is_set():
                            return
                self.waited_s += time.perf_counter() - t0
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            self.stop()

    def stop(self, join_s: float = 0.0) -> None:
        """Ask the decode thread to end; wait up to ``join_s`` seconds for it."""
        self._stop.set()
        if self._thread is not None and join_s > 0:
            self._thread.join(join_s)

    @property
    def thread(self) -> threading.Thread | None:
        """The decode thread once iteration started."""
        return self._thread
