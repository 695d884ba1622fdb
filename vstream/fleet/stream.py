"""One stream of a Fleet: its reader, memory (engine), responder, alerts and retention.

Built from a Session's parts: the ``Pipeline`` reads the source into a bounded chunk queue (realtime:
the oldest chunk is dropped and counted) but starts no perception thread of its own, since the fleet's
perception thread takes ready chunks from many streams and ingests them together (vstream.engine.batching);
the ``Responder`` answers on memory snapshots in the stream's own thread and keeps turns in the engine's
text inbox; ``Alerts`` probe the stream's conditions after each chunk.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import Any


from vstream.session.alerts import Alerts
from vstream.config import AgentConfig
from vstream.engine.core import Engine
from vstream.session.pipeline import Pipeline
from vstream.session.asking import Asking
from vstream.session.responder import Responder
from vstream.session.stats import stream_stats
from vstream.types import Answer, ChunkReport

logger = logging.getLogger(__name__)

UP, STALLED, DOWN = "up", "stalled", "down"


def one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _no_step(_chunk) -> None:
    raise RuntimeError("a fleet stream's pipeline has no perception thread: the fleet ingests its chunks")


class FleetStream(Asking):
    """Per-stream state of a fleet. The fleet's perception thread is the only writer of ``engine``
    (under ``engine.write_lock``)."""

    def __init__(self, stream_id: str, source: Any, engine: Engine, config: AgentConfig, long_term) -> None:
        self.id = stream_id
        self.source = source
        self.engine = engine
        self.config = config
        self.long_term = long_term
        self.adapter = engine.adapter
        self.fps = config.sampler.fps
        self.reports: collections.deque[ChunkReport] = collections.deque(maxlen=10_000)
        self.state = UP
        self.source_done = False  # the reader queued its end marker (source exhausted or failed)
        self.retention_deleted = 0
        self.first_chunk_seen = False
        self.last_chunk_wall = time.monotonic()
        self.removed = False
        self._error: str | None = None
        self._advanced = threading.Condition()
        rc = config.responder
        self.responder = Responder(self._answer, maxsize=rc.queue_size, on_history=engine.remember,
                                   snapshot=engine.snapshot, name=f"vstream-responder-{stream_id}")
        self.alerts = Alerts(self.probe, self.responder.ask, threshold=rc.notify_threshold,
                             cooldown_s=rc.notify_cooldown_s)
        engine.set_perceiving(True)  # the fleet's perception thread applies the text inbox before chunks
        self.pipeline = Pipeline(engine, source, config.sampler, _no_step, background=True)  # the reader starts

    # ---- the reader's queue (the fleet's perception thread) -------------------------------------
    def take(self):
        """The next ready chunk, or None (never waits)."""
        q = self.pipeline.queue
        if q is None or self.source_done:
            return None
        try:
            ch = q.get_nowait()
        except queue.Empty:
            return None
        if ch is None:  # the end marker: every chunk before it was taken already (FIFO)
            self.source_done = True
        return ch

    @property
    def exhausted(self) -> bool:
        """The source ended (or failed) and every chunk it queued was ingested."""
        return self.source_done

    @property
    def waiting(self) -> int:
        q = self.pipeline.queue
        return q.qsize() if q is not None else 0

    @property
    def error(self) -> str | None:
        """Why the stream went down early (perception, else the source), or None."""
        return self._error or self.pipeline.error

    def fail(self, message: str) -> None:
        """Perception of this stream failed: record why (the fleet marks it down)."""
        self._error = message

    def ingested(self, rep: ChunkReport) -> None:
        self.reports.append(rep)
        self.last_chunk_wall = time.monotonic()
        with self._advanced:
            self._advanced.notify_all()

    def mark_down(self) -> None:
        self.state = DOWN
        self.engine.set_perceiving(False)  # text posted from now on enters the window at once
        with self._advanced:
            self._advanced.notify_all()

    # ---- questions ----------------------------------------------------------------------------
    def _answer(self, question: str, snap, **kw) -> Answer:
        try:
            return self.engine.answer(question, snap, **kw)
        except (KeyError, RuntimeError):  # retention deleted a retrieved entry meanwhile: search again
            mc = self.config.memory
            if not (mc.max_disk_bytes or mc.max_age_s):
                raise
            return self.engine.answer(question, snap, **kw)

    @property
    def tz(self) -> str:
        """The zone of this stream's clock (its source's, else this machine's)."""
        from vstream.clock import local_zone

        return getattr(self.source, "tz", None) or local_zone()

    def probe(self, text: str) -> float:
        return self.engine.probe(text, self.engine.snapshot())

    def wait_chunks(self, n: int, timeout: float | None = None) -> bool:
        """Wait until ``n`` chunks were ingested (or the stream is down)."""
        with self._advanced:
            return self._advanced.wait_for(lambda: self.state == DOWN or self.engine.chunks_ingested >= n, timeout)

    # ---- retention ----------------------------------------------------------------------------
    def enforce_retention(self) -> None:
        """Apply memory.max_disk_bytes / max_age_s to this stream's long-term store (oldest first)."""
        mc = self.config.memory
        if self.long_term is None or not (mc.max_disk_bytes or mc.max_age_s):
            return
        from memory.retention import enforce

        try:
            self.retention_deleted += len(enforce(self.long_term.store, self.long_term.index,
                                                  max_disk_bytes=mc.max_disk_bytes, max_age_s=mc.max_age_s,
                                                  now_s=self.engine.stream_time_s))
        except Exception as e:  # retention must not stop perception; the cap is retried after the next chunk
            logger.error("stream %s: retention failed: %s", self.id, one_line(e))

    # ---- state --------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Session-style statistics of this stream (plus its state, waiting chunks and retention)."""
        return {
            "state": self.state,
            **stream_stats(self.engine, self.pipeline, self.responder, self.long_term, self.reports),
            "chunks_waiting": self.waiting,
            "retention_deleted": self.retention_deleted,
            "ended": self.state == DOWN,
            "error": self.error,
        }

    def close(self, timeout: float) -> None:
        """Stop reading and answering, then flush and close the memory (the caller stopped perception)."""
        deadline = time.monotonic() + timeout
        self.pipeline.close(deadline)
        if self.pipeline.reader is not None and self.pipeline.reader.is_alive():
            logger.warning("stream %s: the reader is still blocked in its source; leaving it (daemon)", self.id)
        if not self.responder.close(max(0.0, deadline - time.monotonic())):
            logger.warning("stream %s: responder did not stop in time", self.id)
        if self.long_term is not None:
            with self.engine.write_lock:
                if self.long_term.persistent:
                    self.long_term.flush(self.engine.live_vision())
                    self.enforce_retention()  # the window's chunks just went to disk too
                self.long_term.close()
