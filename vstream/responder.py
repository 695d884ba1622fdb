"""Answering beside perception: a bounded query queue, a worker thread, and standing alerts.

A question is bound to a memory snapshot when it is asked; the worker answers on that snapshot
while perception keeps ingesting. Nothing here writes memory: texts to remember (questions and
answers for multi-turn) are handed back through ``on_history``.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from memory.manager import Snapshot
from vstream.types import Alert, Answer

logger = logging.getLogger(__name__)


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


class QueueFull(ValueError):
    """The query queue is full."""


class Responder:
    """One worker thread answering queued questions on their snapshots."""

    def __init__(self, answer_fn: Callable[..., Answer], *, maxsize: int,
                 on_history: Callable[[Answer], None] | None = None, name: str = "vstream-responder") -> None:
        if maxsize < 1:
            raise ValueError("queue_size must be >= 1")
        self._answer_fn = answer_fn
        self._on_history = on_history
        self._q: queue.Queue[Query | None] = queue.Queue(maxsize=maxsize)
        self._closed = threading.Event()
        self._lock = threading.Lock()  # submit vs close: nothing is queued after close() drained the queue
        self._current: Query | None = None
        self.answered = 0
        self.rejected = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, query: Query) -> Future:
        """Queue a question; raises QueueFull (a ValueError) at once when the queue is full."""
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError("the session is closed; open a new one with agent.watch(...)")
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
                ans = self._answer_fn(item.question, item.snapshot, max_new_tokens=item.max_new_tokens,
                                      on_piece=item.on_piece, cancel=item.cancel)
            except BaseException as e:  # delivered to the caller through the future
                self.failed += 1
                logger.warning("answering %r failed: %s", item.question[:60], e)
                item.future.set_exception(e)
            else:
                self.answered += 1
                if item.history and not ans.cancelled and self._on_history is not None:
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


@dataclass
class Condition:
    """A standing instruction: "tell me when <text>"."""

    handle: int
    text: str
    callback: Callable[[Alert], None]
    threshold: float
    cooldown_s: float
    last_fired_s: float | None = None
    fired: int = 0
    active: bool = False  # P >= threshold at the last check (an event in progress)
    errors: int = 0  # probes that raised


def _check_threshold(threshold: float) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}") from None
    if not 0.0 < t < 1.0:  # also rejects NaN
        raise ValueError(f"threshold must be in (0, 1), got {threshold}; e.g. threshold=0.5")
    return t


def _check_cooldown(cooldown_s: float) -> float:
    try:
        c = float(cooldown_s)
    except (TypeError, ValueError):
        raise ValueError(f"cooldown_s must be a number of seconds >= 0, got {cooldown_s!r}") from None
    if math.isnan(c) or c < 0:
        raise ValueError(f"cooldown_s must be >= 0 seconds of stream time, got {cooldown_s}")
    return c


class Notifier:
    """Scores every condition after each chunk and decides which fire.

    A condition fires once per event: on the check where P("Yes") rises to ``threshold`` or above after
    being below it (or at the first check), unless it fired less than ``cooldown_s`` of stream time ago.
    An event whose start falls inside the cool-down does not fire later while it lasts.
    """

    def __init__(self, probe: Callable[[str], float]) -> None:
        self.probe = probe
        self.conditions: dict[int, Condition] = {}
        self._next = 0
        self._lock = threading.Lock()

    def add(self, text: str, callback: Callable[[Alert], None], threshold: float, cooldown_s: float) -> int:
        """Register a condition; returns its handle. ValueError on an empty text or a bad threshold/cool-down."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the alert condition is empty; say what to watch for")
        if not callable(callback):
            raise ValueError(f"callback must be callable (it receives an Alert), got {type(callback).__name__}")
        t, c = _check_threshold(threshold), _check_cooldown(cooldown_s)
        with self._lock:
            h = self._next
            self._next += 1
            self.conditions[h] = Condition(h, text.strip(), callback, t, c)
        return h

    def remove(self, handle: int) -> None:
        with self._lock:
            self.conditions.pop(handle, None)

    def check(self, now_s: float) -> list[tuple[Condition, float]]:
        """Probe every condition at stream time ``now_s``; return (condition, probability) that fire.

        A probe that raises is logged and counts as "not happening" (perception goes on).
        """
        with self._lock:
            conds = list(self.conditions.values())
        fired = []
        for c in conds:
            try:
                p = float(self.probe(c.text))
            except Exception as e:
                c.errors += 1
                logger.warning("probing alert %r failed: %s", c.text[:60], e)
                p = float("nan")
            if not p >= c.threshold:  # NaN counts as below
                c.active = False
                continue
            rising, c.active = not c.active, True
            if not rising:
                continue
            if c.last_fired_s is not None and now_s - c.last_fired_s < c.cooldown_s:
                continue
            c.last_fired_s = now_s
            c.fired += 1
            fired.append((c, p))
        return fired
