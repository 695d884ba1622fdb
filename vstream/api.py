"""The facade that the CLI, the app and the eval harness call: Agent, Session, Answer, Evidence."""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import psutil

from vstream.config import AgentConfig, from_name
from vstream.engine import Engine
from vstream.models.base import ModelAdapter
from vstream.responder import Notifier, Query, Responder
from vstream.types import Alert, Answer, ChunkReport, CommentaryItem, Evidence

logger = logging.getLogger(__name__)

__all__ = ["Agent", "Session", "Answer", "Evidence", "CommentaryItem", "Alert"]


def _percentile(xs, q: float) -> float | None:
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if len(xs) else None


class Agent:
    """A loaded model plus its configuration; opens sessions on streams."""

    def __init__(self, adapter: ModelAdapter, config: AgentConfig) -> None:
        self.adapter = adapter
        self.config = config.validate()

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, config: AgentConfig | str | None = None, *,
                        device: str | None = None, dtype: str | None = None, seed: int = 0,
                        **overrides: Any) -> "Agent":
        """Load a preset (``tiny-smolvlm``...), a hub id or a local checkpoint directory.

        config: an AgentConfig, a preset name ("default", "streamingvlm", "rekv", "tiny") or None.
        overrides: dotted config fields, e.g. ``**{"memory.window_chunks": 8}``.
        """
        from vstream.models.registry import load_model

        if config is None:
            cfg = from_name("tiny" if (name_or_path or "").startswith("tiny-") else "default")
        elif isinstance(config, str):
            cfg = from_name(config)
        else:
            cfg = config
        changes = dict(overrides)
        if device is not None:
            changes["device"] = device
        if dtype is not None:
            changes["dtype"] = dtype
        cfg = cfg.replace(**changes) if changes else cfg
        adapter = load_model(name_or_path, device=cfg.device, dtype=cfg.dtype, seed=seed)
        cfg = cfg.replace(model=adapter.name)
        return cls(adapter, cfg)

    @property
    def model_name(self) -> str:
        return self.adapter.name

    def watch(self, source: Any, *, background: bool = True, realtime: bool | None = None, fps: float | None = None,
              chunk_seconds: float | None = None, memory_dir: str | Path | None = None, commentary: bool = False,
              previous_text: str = "", start_s: float = 0.0, end_s: float | None = None,
              commentary_replay: dict[int, str | list[int]] | None = None, progress: bool = False) -> "Session":
        """Open a session on ``source`` (path, URL, device, "synthetic:...", or a VideoSource)."""
        from vstream.sources import open_source

        cfg = self.config
        changes: dict[str, Any] = {}
        if realtime is not None:
            changes["sampler.realtime"] = realtime
        if fps is not None:
            changes["sampler.fps"] = fps
        if chunk_seconds is not None:
            changes["sampler.chunk_seconds"] = chunk_seconds
        if changes:
            cfg = cfg.replace(**changes).validate()
        kw: dict[str, Any] = {"start_s": start_s, "end_s": end_s} if (start_s or end_s is not None) else {}
        src = open_source(source, **kw)
        return Session(self, cfg, src, background=background, memory_dir=memory_dir, commentary=commentary,
                       previous_text=previous_text, commentary_replay=commentary_replay, progress=progress)

    def load(self, directory: str | Path) -> "Session":
        """A session over memory saved earlier (no source): ``ask`` answers from the stored entries."""
        return Session(self, self.config, None, background=False, memory_dir=directory, load_existing=True)


class Session:
    """One stream being watched: perception in the background, answers on snapshots."""

    def __init__(self, agent: Agent, config: AgentConfig, source: Any, *, background: bool,
                 memory_dir: str | Path | None = None, commentary: bool = False, previous_text: str = "",
                 commentary_replay: dict[int, str | list[int]] | None = None, progress: bool = False,
                 load_existing: bool = False) -> None:
        self.agent = agent
        self.config = config
        self.source = source
        self.adapter = agent.adapter
        self.long_term = None
        if config.memory.long_term or memory_dir is not None:
            from vstream.memory_wiring import open_long_term

            self.long_term = open_long_term(self.adapter, config.memory, memory_dir, load_existing=load_existing)
        ocr = self.long_term.ocr if (self.long_term is not None and config.memory.ocr) else None
        self.engine = Engine(self.adapter, config, self.long_term, ocr=ocr)
        self.engine.start(previous_text)
        if load_existing and self.long_term is not None:
            self.engine.memory.set_stream_time(self.long_term.latest_end_s())
        self.commentary_on = commentary
        self.commentary_replay = dict(commentary_replay or {})
        self.commentary_items: list[CommentaryItem] = []
        self._commentary_cbs: list[Callable[[CommentaryItem], None]] = []
        self.reports: collections.deque[ChunkReport] = collections.deque(maxlen=10_000)
        self.last_answer: Answer | None = None
        self.ended = source is None
        self.error: str | None = None
        self._progress = progress
        self._write_lock = threading.RLock()  # held while memory is written (ingest, add_text)
        self._pending_text: queue.SimpleQueue = queue.SimpleQueue()
        self._ttfts: collections.deque[float] = collections.deque(maxlen=10_000)
        self._decode = [0, 0.0]  # tokens, seconds
        self._closed = False
        self._stop = threading.Event()
        self._chunk_iter: Iterator | None = None
        self._chunk_queue: queue.Queue | None = None
        self._feeder: threading.Thread | None = None
        self._perception: threading.Thread | None = None
        self._advanced = threading.Condition()
        self.chunks_dropped = 0
        self.frames_dropped_backlog = 0
        self._sampler = None
        self.notifier = Notifier(self.probe)
        self.responder = Responder(self._answer, maxsize=config.responder.queue_size, on_history=self._remember)
        self.background = background
        if source is not None:
            self._open_pipeline(background)
        if background and source is not None:
            self._perception = threading.Thread(target=self._perceive_loop, name="vstream-perception", daemon=True)
            self._perception.start()

    # ---- pipeline -----------------------------------------------------------------------------
    def _open_pipeline(self, background: bool) -> None:
        from vstream.sources import Chunker, Sampler

        sc = self.config.sampler
        self._sampler = Sampler(sc.fps, realtime=sc.realtime)
        self.adapter.configure_sampling(sc.fps)
        fpc = self.adapter.frames_per_chunk(sc.fps, sc.chunk_seconds)
        chunks = Chunker(sc.chunk_seconds, frames_per_chunk=fpc)(self._sampler(iter(self.source)))
        if self._progress and getattr(self.source, "duration", None):
            from tqdm import tqdm

            chunks = tqdm(chunks, total=int(np.ceil(self.source.duration / sc.chunk_seconds)), unit="chunk",
                          desc="watching", leave=False)
        if background:
            # A reader thread decodes ahead into a bounded queue. Realtime: the oldest chunk is dropped
            # (counted) when perception falls behind. Otherwise the reader waits (no drops, no backlog).
            self._chunk_queue = queue.Queue(maxsize=sc.max_backlog_chunks)
            self._feeder = threading.Thread(target=self._feed, args=(chunks,), name="vstream-reader", daemon=True)
            self._feeder.start()
        else:
            self._chunk_iter = iter(chunks)

    def _feed(self, chunks: Iterator) -> None:
        q = self._chunk_queue
        try:
            for ch in chunks:
                if self._stop.is_set():
                    break
                if self.config.sampler.realtime:
                    while True:
                        try:
                            q.put_nowait(ch)
                            break
                        except queue.Full:
                            try:
                                old = q.get_nowait()
                                self.chunks_dropped += 1
                                self.frames_dropped_backlog += len(old.frames)
                            except queue.Empty:
                                pass
                else:
                    while not self._stop.is_set():
                        try:
                            q.put(ch, timeout=0.1)
                            break
                        except queue.Full:
                            continue
        except Exception as e:  # a source that fails mid-stream ends the session with a clear error
            self._source_failed(e)
        finally:
            self._put_end(q)

    def _source_failed(self, e: Exception) -> None:
        """Record a source failure as the session's one-line error."""
        self.error = str(e).splitlines()[0] if str(e) else type(e).__name__
        logger.error("source failed: %s", self.error)

    def _put_end(self, q: queue.Queue) -> None:
        """Tell perception the source ended; never block once the session is stopping."""
        while True:
            try:
                q.put(None, timeout=0.1)
                return
            except queue.Full:
                if self._stop.is_set():
                    return

    def _next_chunk(self):
        if self._chunk_queue is not None:
            while not self._stop.is_set():
                try:
                    return self._chunk_queue.get(timeout=0.1)
                except queue.Empty:
                    continue
            return None
        try:
            return next(self._chunk_iter)
        except StopIteration:
            return None
        except Exception as e:
            self._source_failed(e)
            return None

    def _perceive_loop(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._step():
                    break
        except Exception as e:
            self.error = f"perception failed: {e}"
            logger.exception("perception failed")
        finally:
            self._mark_ended()

    def _mark_ended(self) -> None:
        with self._advanced:
            self.ended = True
            self._advanced.notify_all()
        self._apply_pending_text()

    def _step(self) -> bool:
        """Ingest one chunk (plus commentary and alerts). False when the source is exhausted."""
        chunk = self._next_chunk()
        if chunk is None:
            return False
        with self._write_lock:
            self._apply_pending_text()
            rep = self.engine.ingest(chunk)
            self.reports.append(rep)
            if self.commentary_on:
                item = self.engine.commentary(chunk, self.config.responder.commentary_tokens,
                                              replay=self.commentary_replay.get(chunk.index))
                self.commentary_items.append(item)
                for cb in list(self._commentary_cbs):
                    cb(item)
        if self.notifier.conditions:
            self._check_alerts(chunk.end_s)
        with self._advanced:
            self._advanced.notify_all()
        return True

    def _apply_pending_text(self) -> None:
        with self._write_lock:
            while True:
                try:
                    text, at_s = self._pending_text.get_nowait()
                except queue.Empty:
                    return
                self.engine.add_text(text, at_s)

    # ---- driving the stream -------------------------------------------------------------------
    @property
    def stream_time_s(self) -> float:
        return self.engine.memory.stream_time_s

    def advance_to(self, t_s: float) -> float:
        """Ingest until stream time >= ``t_s`` or the source ends; returns the stream time reached."""
        if self.background:
            with self._advanced:
                self._advanced.wait_for(lambda: self.ended or self.stream_time_s >= t_s)
            return self.stream_time_s
        while not self.ended and self.stream_time_s < t_s:
            if not self._step():
                self._mark_ended()
        return self.stream_time_s

    def run_to_end(self) -> float:
        """Ingest the whole source; returns the final stream time."""
        return self.advance_to(float("inf"))

    def wait_chunks(self, n: int, timeout: float | None = None) -> bool:
        """Wait until ``n`` chunks have been ingested (or the stream ended)."""
        with self._advanced:
            return self._advanced.wait_for(lambda: self.ended or self.engine.memory.chunks_ingested >= n, timeout)

    # ---- questions ----------------------------------------------------------------------------
    def _answer(self, question: str, snap, **kw) -> Answer:
        ans = self.engine.answer(question, snap, **kw)
        self._ttfts.append(ans.ttft_s)
        self._decode[0] += ans.tokens
        self._decode[1] += max(ans.latency_s - ans.ttft_s, 0.0)
        self.last_answer = ans
        return ans

    def _remember(self, ans: Answer) -> None:
        """Keep the question and its answer in the text window (multi-turn)."""
        a = self.adapter
        text = a.question_text(ans.question) + ans.text + a.answer_close_text()
        self._pending_text.put((text, ans.asked_at_s))
        if self.ended or not self.background:
            self._apply_pending_text()

    def ask_async(self, question: str, *, max_new_tokens: int | None = None, history: bool = True,
                  on_piece: Callable[[str], None] | None = None, cancel: threading.Event | None = None) -> Future:
        """Queue a question on the memory as of now; returns a Future[Answer]. Raises ValueError when full."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty; ask something about the stream")
        if not self._pending_text.empty():  # earlier turns enter the text window before this snapshot
            self._apply_pending_text()
        q = Query(question=question, snapshot=self.engine.snapshot(), future=Future(),
                  max_new_tokens=max_new_tokens, on_piece=on_piece, history=history,
                  cancel=cancel if cancel is not None else threading.Event())
        return self.responder.submit(q)

    def ask(self, question: str, *, stream: bool = False, max_new_tokens: int | None = None, history: bool = True,
            timeout: float | None = None) -> Answer | Iterator[str]:
        """Answer a question about what has been seen so far (perception keeps running meanwhile).

        stream=True returns an iterator of text pieces; the final Answer is then ``session.last_answer``.
        """
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
            fut.result()  # re-raise a failure
        finally:
            if not fut.done():  # the caller stopped reading: stop decoding too
                cancel.set()
                fut.cancel()

    def probe(self, text: str) -> float:
        """P("Yes") that ``text`` happened in the latest chunk (one forward step)."""
        return self.engine.probe(text, self.engine.snapshot())

    def notify_when(self, condition: str, callback: Callable[[Alert], None], *, threshold: float | None = None,
                    cooldown_s: float | None = None) -> int:
        """Standing instruction: after each chunk, if P(condition) >= threshold, answer and call back."""
        rc = self.config.responder
        return self.notifier.add(condition, callback, rc.notify_threshold if threshold is None else threshold,
                                 rc.notify_cooldown_s if cooldown_s is None else cooldown_s)

    def _check_alerts(self, now_s: float) -> None:
        for cond, p in self.notifier.check(now_s):
            def done(f: Future, cond=cond, p=p) -> None:
                ans = f.result() if not f.cancelled() and f.exception() is None else None
                try:
                    cond.callback(Alert(condition=cond.text, at_s=now_s, probability=p, answer=ans))
                except Exception:
                    logger.exception("alert callback failed")
            try:
                fut = self.ask_async(f"Describe what happened: {cond.text}", history=False)
            except ValueError:  # queue full: report the alert without a full answer
                logger.warning("query queue full; alert %r reported without an answer", cond.text)
                f: Future = Future()
                f.set_result(None)
                fut = f
            fut.add_done_callback(done)

    def on_commentary(self, callback: Callable[[CommentaryItem], None]) -> None:
        self._commentary_cbs.append(callback)

    def add_text(self, text: str) -> None:
        """Put text into the text window (e.g. earlier questions with their gold answers)."""
        if not text:
            raise ValueError("empty text")
        self._pending_text.put((text, self.stream_time_s))
        if not self.background or self.ended:
            self._apply_pending_text()

    # ---- state --------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Frames in / kept / dropped, latencies, tokens/s and memory bytes per tier."""
        lat = [r.latency_s for r in list(self.reports)]  # copy: perception appends concurrently
        s = self._sampler
        lt = self.long_term
        mm = self.engine.memory
        tok, secs = self._decode
        return {
            "stream_time_s": self.stream_time_s,
            "frames_in": getattr(s, "frames_in", 0),
            "frames_kept": getattr(s, "frames_kept", 0) - self.frames_dropped_backlog,
            "frames_dropped": getattr(s, "frames_dropped", 0) + self.frames_dropped_backlog
            + getattr(self.source, "dropped", 0),  # a PushSource drops when its own queue is full
            "chunks": mm.chunks_ingested,
            "chunks_dropped": self.chunks_dropped,
            "chunk_latency_p50": _percentile(lat, 50),
            "chunk_latency_p95": _percentile(lat, 95),
            "chunk_latency_p99": _percentile(lat, 99),
            "ttft_p50": _percentile(self._ttfts, 50),
            "ttft_p95": _percentile(self._ttfts, 95),
            "tokens_per_s": tok / secs if secs > 0 else None,
            "context_tokens": mm.context_tokens,
            "visual_tokens_kept": self.engine.visual_tokens_kept,
            "visual_tokens_dropped": self.engine.visual_tokens_dropped,
            "queries_pending": self.responder.pending,
            "queries_answered": self.responder.answered,
            "queries_rejected": self.responder.rejected,
            "memory_bytes": {"device": mm.device_bytes(), "ram": lt.ram_bytes() if lt else 0,
                             "disk": lt.disk_bytes() if lt else 0},
            "long_term_entries": len(lt) if lt else 0,
            "process_rss_bytes": psutil.Process().memory_info().rss,
            "ended": self.ended,
            "error": self.error,
        }

    def save(self, directory: str | Path) -> None:
        """Write the memory (long-term entries plus the chunks still in the window) to ``directory``."""
        if self.long_term is None:
            raise ValueError("this session keeps no long-term memory (memory.long_term=False); nothing to save")
        with self._write_lock:
            live = [s for s in self.engine.memory.live if s.kind == "vision"]
            self.long_term.save(directory, extra=live)

    def close(self) -> None:
        """Stop perception and answering; waits at most responder.close_timeout_s."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        deadline = time.monotonic() + self.config.responder.close_timeout_s
        if self.source is not None and hasattr(self.source, "close"):
            try:
                self.source.close()
            except Exception as e:
                logger.warning("closing the source failed: %s", e)
        for t in (self._perception, self._feeder):
            if t is not None:
                t.join(max(0.0, deadline - time.monotonic()))
        if not self.responder.close(max(0.0, deadline - time.monotonic())):
            logger.warning("responder did not stop within %.1fs", self.config.responder.close_timeout_s)
        if self.long_term is not None:
            with self._write_lock:
                if self.long_term.persistent:
                    self.long_term.flush([s for s in self.engine.memory.live if s.kind == "vision"])
                self.long_term.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
