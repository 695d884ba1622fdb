"""One stream of a Fleet: its reader thread, bounded chunk queue, memory (engine), responder and alerts.

Perception does not run here: the fleet's perception thread takes ready chunks from many streams and
ingests them together (vstream.batching). This module owns everything per stream around that: reading
the source into a bounded queue (realtime: the oldest chunk is dropped and counted), answering on
memory snapshots in the stream's own responder thread, and the session-style statistics.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Iterator

import numpy as np

from vstream.config import AgentConfig
from vstream.engine import Engine
from vstream.responder import Notifier, Query, Responder
from vstream.types import Answer, ChunkReport

logger = logging.getLogger(__name__)

UP, STALLED, DOWN = "up", "stalled", "down"


def _percentile(xs, q: float) -> float | None:
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if len(xs) else None


def one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


class FleetStream:
    """Per-stream state of a fleet. The fleet's perception thread is the only writer of ``engine``."""

    def __init__(self, stream_id: str, source: Any, engine: Engine, config: AgentConfig, long_term,
                 *, wake: Callable[[], None]) -> None:
        self.id = stream_id
        self.source = source
        self.engine = engine
        self.config = config
        self.long_term = long_term
        self.adapter = engine.adapter
        self.fps = config.sampler.fps
        self.realtime = config.sampler.realtime
        self._wake = wake
        self.queue: queue.Queue = queue.Queue(maxsize=config.sampler.max_backlog_chunks)
        self.write_lock = threading.RLock()  # held while this stream's memory is written
        self._pending_text: queue.SimpleQueue = queue.SimpleQueue()
        self.reports: collections.deque[ChunkReport] = collections.deque(maxlen=10_000)
        self.state = UP
        self.source_done = False  # the reader ended (source exhausted or failed)
        self.error: str | None = None
        self.chunks_dropped = 0
        self.frames_dropped_backlog = 0
        self.retention_deleted = 0
        self.first_chunk_seen = False
        self.last_chunk_wall = time.monotonic()
        self.removed = False
        self._ttfts: collections.deque[float] = collections.deque(maxlen=10_000)
        self._decode = [0, 0.0]
        self.last_answer: Answer | None = None
        self._advanced = threading.Condition()
        self._stop = threading.Event()
        self._sampler = None
        self.notifier = Notifier(self.probe)
        self.responder = Responder(self._answer, maxsize=config.responder.queue_size, on_history=self._remember,
                                   name=f"vstream-responder-{stream_id}")
        self._reader = threading.Thread(target=self._read, name=f"vstream-reader-{stream_id}", daemon=True)

    # ---- reading ------------------------------------------------------------------------------
    def start(self) -> None:
        self._reader.start()

    def _read(self) -> None:
        from vstream.sources import Chunker, Sampler

        sc = self.config.sampler
        try:
            self._sampler = Sampler(sc.fps, realtime=sc.realtime)
            fpc = self.adapter.frames_per_chunk(sc.fps, sc.chunk_seconds)
            for ch in Chunker(sc.chunk_seconds, frames_per_chunk=fpc)(self._sampler(iter(self.source))):
                if self._stop.is_set():
                    break
                self._put(ch)
        except Exception as e:  # a failing source takes down this stream only
            self.error = one_line(e)
            logger.error("stream %s: source failed: %s", self.id, self.error)
        finally:
            self.source_done = True
            self._wake()

    def _put(self, ch) -> None:
        if self.realtime:  # never wait: drop the oldest waiting chunk (counted) when perception is behind
            while True:
                try:
                    self.queue.put_nowait(ch)
                    break
                except queue.Full:
                    try:
                        old = self.queue.get_nowait()
                        self.chunks_dropped += 1
                        self.frames_dropped_backlog += len(old.frames)
                    except queue.Empty:
                        pass
        else:
            while not self._stop.is_set():
                try:
                    self.queue.put(ch, timeout=0.1)
                    break
                except queue.Full:
                    continue
        self._wake()

    def take(self):
        """The next ready chunk, or None (never waits)."""
        try:
            return self.queue.get_nowait()
        except queue.Empty:
            return None

    @property
    def exhausted(self) -> bool:
        """The reader ended and every chunk it queued was ingested."""
        return self.source_done and self.queue.empty()

    # ---- writer side (called by the fleet's perception thread) ---------------------------------
    def apply_pending_text(self) -> None:
        with self.write_lock:
            while True:
                try:
                    text, at_s = self._pending_text.get_nowait()
                except queue.Empty:
                    return
                self.engine.add_text(text, at_s)

    def ingested(self, rep: ChunkReport) -> None:
        self.reports.append(rep)
        self.last_chunk_wall = time.monotonic()
        with self._advanced:
            self._advanced.notify_all()

    def mark_done(self) -> None:
        with self._advanced:
            self._advanced.notify_all()
        self.apply_pending_text()

    # ---- questions ----------------------------------------------------------------------------
    def _answer(self, question: str, snap, **kw) -> Answer:
        try:
            ans = self.engine.answer(question, snap, **kw)
        except (KeyError, RuntimeError):  # retention deleted a retrieved entry meanwhile: search again
            mc = self.config.memory
            if not (mc.max_disk_bytes or mc.max_age_s):
                raise
            ans = self.engine.answer(question, snap, **kw)
        self._ttfts.append(ans.ttft_s)
        self._decode[0] += ans.tokens
        self._decode[1] += max(ans.latency_s - ans.ttft_s, 0.0)
        self.last_answer = ans
        return ans

    def _remember(self, ans: Answer) -> None:
        a = self.adapter
        self._pending_text.put((a.question_text(ans.question) + ans.text + a.answer_close_text(), ans.asked_at_s))
        if self.state == DOWN:  # no perception step will come: write it now
            self.apply_pending_text()

    def ask_async(self, question: str, *, max_new_tokens: int | None = None, history: bool = True,
                  on_piece: Callable[[str], None] | None = None, cancel: threading.Event | None = None) -> Future:
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty; ask something about the stream")
        if not self._pending_text.empty():  # earlier turns enter the text window before this snapshot
            self.apply_pending_text()
        q = Query(question=question, snapshot=self.engine.snapshot(), future=Future(), max_new_tokens=max_new_tokens,
                  on_piece=on_piece, history=history, cancel=cancel if cancel is not None else threading.Event())
        return self.responder.submit(q)

    def ask(self, question: str, *, stream: bool = False, max_new_tokens: int | None = None, history: bool = True,
            timeout: float | None = None) -> Answer | Iterator[str]:
        if not stream:
            return self.ask_async(question, max_new_tokens=max_new_tokens, history=history).result(timeout)
        pieces: queue.Queue = queue.Queue()
        cancel = threading.Event()
        fut = self.ask_async(question, max_new_tokens=max_new_tokens, history=history, on_piece=pieces.put,
                             cancel=cancel)
        fut.add_done_callback(lambda _f: pieces.put(None))
        return self._iter_pieces(pieces, fut, cancel)

    @staticmethod
    def _iter_pieces(pieces: queue.Queue, fut: Future, cancel: threading.Event) -> Iterator[str]:
        try:
            while True:
                p = pieces.get()
                if p is None:
                    break
                yield p
            fut.result()
        finally:
            if not fut.done():
                cancel.set()
                fut.cancel()

    def probe(self, text: str) -> float:
        return self.engine.probe(text, self.engine.snapshot())

    def wait_chunks(self, n: int, timeout: float | None = None) -> bool:
        """Wait until ``n`` chunks were ingested (or the stream is down)."""
        with self._advanced:
            return self._advanced.wait_for(
                lambda: self.state == DOWN or self.engine.memory.chunks_ingested >= n, timeout)

    # ---- state --------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Session-style statistics of this stream."""
        lat = [r.latency_s for r in list(self.reports)]
        s, lt, mm = self._sampler, self.long_term, self.engine.memory
        tok, secs = self._decode
        return {
            "state": self.state,
            "stream_time_s": mm.stream_time_s,
            "frames_in": getattr(s, "frames_in", 0),
            "frames_kept": getattr(s, "frames_kept", 0) - self.frames_dropped_backlog,
            "frames_dropped": getattr(s, "frames_dropped", 0) + self.frames_dropped_backlog
            + getattr(self.source, "dropped", 0),
            "chunks": mm.chunks_ingested,
            "chunks_dropped": self.chunks_dropped,
            "chunks_waiting": self.queue.qsize(),
            "chunk_latency_p50": _percentile(lat, 50),
            "chunk_latency_p95": _percentile(lat, 95),
            "chunk_latency_p99": _percentile(lat, 99),
            "ttft_p50": _percentile(self._ttfts, 50),
            "ttft_p95": _percentile(self._ttfts, 95),
            "tokens_per_s": tok / secs if secs > 0 else None,
            "context_tokens": mm.context_tokens,
            "queries_pending": self.responder.pending,
            "queries_answered": self.responder.answered,
            "queries_rejected": self.responder.rejected,
            "memory_bytes": {"device": mm.device_bytes(), "ram": lt.ram_bytes() if lt else 0,
                             "disk": lt.disk_bytes() if lt else 0},
            "long_term_entries": len(lt) if lt else 0,
            "retention_deleted": self.retention_deleted,
            "ended": self.state == DOWN,
            "error": self.error,
        }

    def close(self, timeout: float) -> None:
        """Stop reading and answering, then flush and close the memory (the caller stopped perception)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        if hasattr(self.source, "close"):
            try:
                self.source.close()
            except Exception as e:
                logger.warning("stream %s: closing the source failed: %s", self.id, e)
        self._reader.join(max(0.0, deadline - time.monotonic()))
        if self._reader.is_alive():
            logger.warning("stream %s: the reader is still blocked in its source; leaving it (daemon)", self.id)
        if not self.responder.close(max(0.0, deadline - time.monotonic())):
            logger.warning("stream %s: responder did not stop in time", self.id)
        if self.long_term is not None:
            with self.write_lock:
                if self.long_term.persistent:
                    self.long_term.flush([s for s in self.engine.memory.live if s.kind == "vision"])
                    self.enforce_retention()  # the window's chunks just went to disk too
                self.long_term.close()

    def enforce_retention(self) -> None:
        """Apply memory.max_disk_bytes / max_age_s to this stream's long-term store (oldest first)."""
        mc = self.config.memory
        if self.long_term is None or not (mc.max_disk_bytes or mc.max_age_s):
            return
        from memory.retention import enforce

        try:
            self.retention_deleted += len(enforce(self.long_term.store, self.long_term.index,
                                                  max_disk_bytes=mc.max_disk_bytes, max_age_s=mc.max_age_s,
                                                  now_s=self.engine.memory.stream_time_s))
        except Exception as e:  # retention must not stop perception; the cap is retried after the next chunk
            logger.error("stream %s: retention failed: %s", self.id, one_line(e))
