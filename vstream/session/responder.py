"""Answering beside perception: a question's whole life, from the check to its place in the text window.

``Responder.ask`` checks the question, binds it to a memory snapshot taken at once, and queues it; one
worker thread answers queued questions on their snapshots while perception keeps ingesting. Answer
statistics (time to first token, decode speed) are kept here. A question asked with ``history`` is
handed, with its answer, to ``on_history`` (``Engine.remember``: the engine's text inbox); nothing here
writes memory. ``stream_answer`` turns the streamed pieces of one answer into an iterator.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

from memory.manager import Snapshot
from vstream.types import Answer

if TYPE_CHECKING:
    from vstream.engine.core import Engine

logger = logging.getLogger(__name__)


def check_question(question: object) -> str:
    """``question`` if it is a non-empty string, else ValueError."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty; ask something about the stream")
    return question


@dataclass
class Query:
    """A question waiting for the worker."""

    question: str
    snapshot: Snapshot
    future: Future
    max_new_tokens: int | None = None
    on_piece: Callable[[str], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    history: bool = True
    submitted: float = field(default_factory=time.perf_counter)
    asked_at_s: float | None = None  # stream time when it was asked (default: the snapshot's)
    wall_range: tuple[float, float] | None = None  # answer only from this wall-clock range (vstream.clock)

    def __post_init__(self) -> None:
        if self.asked_at_s is None and self.snapshot is not None:
            self.asked_at_s = self.snapshot.stream_time_s


class QueueFull(ValueError):
    """The query queue is full."""


def unanswered(ans: Answer) -> bool:
    """True for the answer to a time range with nothing recorded (the model was not called): it is not kept
    in the conversation, where it would cost a forward pass and put an empty exchange into later context."""
    from vstream.clock import NOTHING_RECORDED

    return ans.text == NOTHING_RECORDED and not ans.token_ids


class Responder:
    """One worker thread answering queued questions on their snapshots.

    answer_fn(question, snapshot, max_new_tokens=, on_piece=, cancel=) -> Answer; snapshot() -> the
    memory as of now (needed by ``ask``; ``submit`` takes ready Query objects); on_history(answer) keeps
    a question and its answer for later turns.
    """

    def __init__(self, answer_fn: Callable[..., Answer], *, maxsize: int,
                 on_history: Callable[[Answer], None] | None = None,
                 snapshot: Callable[[], Snapshot] | None = None, name: str = "vstream-responder") -> None:
        if maxsize < 1:
            raise ValueError("queue_size must be >= 1")
        self._answer_fn = answer_fn
        self._on_history = on_history
        self._snapshot = snapshot
        self._q: queue.Queue[Query | None] = queue.Queue(maxsize=maxsize)
        self._closed = threading.Event()
        self._lock = threading.Lock()  # submit vs close: nothing is queued after close() drained the queue
        self._current: Query | None = None
        self.answered = 0
        self.rejected = 0
        self.failed = 0
        self.last_answer: Answer | None = None
        self.ttfts: collections.deque[float] = collections.deque(maxlen=10_000)
        self._decode = [0, 0.0]  # tokens, seconds
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @classmethod
    def for_engine(cls, engine: "Engine", *, maxsize: int) -> "Responder":
        """A responder answering with ``engine`` on its snapshots and keeping turns in its text window."""
        # engine.answer is looked up per question (wrappers installed on the engine later take effect)
        return cls(lambda question, snap, **kw: engine.answer(question, snap, **kw), maxsize=maxsize,
                   on_history=engine.remember, snapshot=engine.snapshot)

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise RuntimeError("the session is closed; open a new one with agent.watch(...)")

    def ask(self, question: str, *, max_new_tokens: int | None = None, history: bool = True,
            on_piece: Callable[[str], None] | None = None, cancel: threading.Event | None = None,
            wall_range: tuple[float, float] | None = None) -> Future:
        """Queue a question on the memory as of now; returns a Future[Answer]. QueueFull (ValueError) when full.

        ``wall_range`` (UTC epoch seconds, half-open): answer only from what was recorded in it."""
        check_question(question)
        self._check_open()
        if self._snapshot is None:
            raise RuntimeError("this responder has no snapshot source; submit Query objects instead")
        snap = self._snapshot()  # the memory as of now, and with it the stream time the question is asked at
        q = Query(question=question, snapshot=snap, future=Future(), max_new_tokens=max_new_tokens,
                  on_piece=on_piece, history=history, cancel=cancel if cancel is not None else threading.Event(),
                  asked_at_s=snap.stream_time_s, wall_range=wall_range)
        return self.submit(q)

    def submit(self, query: Query) -> Future:
        """Queue a question; raises QueueFull (a ValueError) at once when the queue is full."""
        with self._lock:
            self._check_open()
            try:
                self._q.put_nowait(query)
            except queue.Full:
                self.rejected += 1
                raise QueueFull(f"query queue full ({self._q.maxsize} questions waiting); wait for answers or "
                                f"raise responder.queue_size") from None
        return query.future

    @property
    def pending(self) -> int:
        return self._q.qsize()

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed over every answer so far (tokens after the first, per second), None before any."""
        tok, secs = self._decode
        return tok / secs if secs > 0 else None

    def _record(self, ans: Answer) -> None:
        self.ttfts.append(ans.ttft_s)
        self._decode[0] += ans.tokens
        self._decode[1] += max(ans.latency_s - ans.ttft_s, 0.0)
        self.last_answer = ans

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            with self._lock:  # close() either sees this item as current or we see it closed
                if self._closed.is_set():  # taken just before close() drained the queue: never start it
                    item.cancel.set()
                    item.future.cancel()
                    continue
                self._current = item
            if item.cancel.is_set():  # cancelled while waiting: resolve the future, do not answer
                item.future.cancel()
            if not item.future.set_running_or_notify_cancel():
                self._current = None
                continue
            try:
                kw = {"wall_range": item.wall_range} if item.wall_range is not None else {}
                ans = self._answer_fn(item.question, item.snapshot, max_new_tokens=item.max_new_tokens,
                                      on_piece=item.on_piece, cancel=item.cancel, **kw)
            except BaseException as e:  # delivered to the caller through the future
                self.failed += 1
                logger.warning("answering %r failed: %s", item.question[:60], e)
                item.future.set_exception(e)
            else:
                if item.asked_at_s is not None:  # the caller's clock, recorded before the question was queued
                    ans.asked_at_s = item.asked_at_s
                self._record(ans)
                self.answered += 1
                if item.history and not ans.cancelled and not unanswered(ans) and self._on_history is not None:
                    try:
                        self._on_history(ans)
                    except Exception:  # the answer stands; only the multi-turn memory of it is lost
                        logger.exception("keeping %r in the text window failed", item.question[:60])
                item.future.set_result(ans)
            finally:
                self._current = None

    def close(self, timeout: float) -> bool:
        """Stop: cancel queued and running questions, join the worker within ``timeout`` s."""
        with self._lock:
            self._closed.set()
            cur = self._current
            if cur is not None:
                cur.cancel.set()
            while True:
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item.cancel.set()
                    item.future.cancel()
            self._q.put_nowait(None)  # the queue is empty and no submit can race in (lock held)
        self._thread.join(timeout)
        return not self._thread.is_alive()


def stream_answer(ask: Callable[..., Future], question: str, *, piece_timeout_s: float | None = None,
                  **kw) -> tuple[Future, Iterator[str]]:
    """Ask with ``ask(question, on_piece=, cancel=, **kw)`` now; return its Future and an iterator of pieces.

    The iterator yields text pieces as they are decoded and at the end re-raises the answer's failure
    (or CancelledError). It raises TimeoutError when no piece arrives within ``piece_timeout_s``. When the
    caller stops reading before the end (or on that timeout), decoding is cancelled too.
    """
    pieces: queue.Queue[str | None] = queue.Queue()
    cancel = threading.Event()
    fut = ask(question, on_piece=pieces.put, cancel=cancel, **kw)
    fut.add_done_callback(lambda _f: pieces.put(None))
    return fut, _iter_pieces(pieces, fut, cancel, piece_timeout_s)


def _iter_pieces(pieces: queue.Queue, fut: Future, cancel: threading.Event,
                 timeout: float | None) -> Iterator[str]:
    try:
        while True:
            try:
                p = pieces.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no answer within {timeout:.0f} s") from None
            if p is None:
                break
            yield p
        fut.result()  # re-raise a failure
    finally:
        if not fut.done():  # the caller stopped reading: stop decoding too
            cancel.set()
            fut.cancel()
