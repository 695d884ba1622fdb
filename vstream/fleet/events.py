"""Fleet events: an append-only, fsynced JSONL log and an optional webhook that never blocks perception.

An event is a JSON object::

    {"seq": 7, "type": "alert"|"up"|"down"|"gap"|"removed", "stream": "cam-1", "stream_time_s": 12.0,
     "wall_time": 1764581234.5, "condition": "...", "probability": 0.93, "answer": "...", "error": "..."}

``seq`` counts from 0 per log file (a reopened log continues after its last line), so a receiver can
drop a repeat (the webhook retries a POST whose reply it did not see). The log line is written and
fsynced before the event is handed to subscribers and to the webhook queue.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

from memory.journal import fsync_dir, write_all

logger = logging.getLogger(__name__)

EVENT_TYPES = ("alert", "up", "down", "gap", "removed")


class EventLog:
    """Append-only JSONL file of events (one fsynced line each), plus in-process subscribers.

    ``path=None`` keeps events in memory only. ``history`` events are kept in memory for ``iter``.
    """

    def __init__(self, path: str | Path | None = None, *, history: int = 10_000) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._recent: collections.deque[dict] = collections.deque(maxlen=history)
        self._closed = False
        self._fd: int | None = None
        self._listeners: list[Callable[[dict], None]] = []
        self.seq = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.seq = _last_seq(self.path) + 1
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            fsync_dir(self.path.parent)

    def add_listener(self, fn: Callable[[dict], None]) -> None:
        """``fn(event)`` after each event is logged (called with no lock held; must not block)."""
        self._listeners.append(fn)

    def emit(self, type: str, stream: str, **fields: Any) -> dict:
        """Log one event durably and hand it on; returns it (with its ``seq``)."""
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}; one of {', '.join(EVENT_TYPES)}")
        with self._lock:
            if self._closed:
                raise RuntimeError("the event log is closed")
            ev = {"seq": self.seq, "type": type, "stream": str(stream), "wall_time": time.time(), **fields}
            if self._fd is not None:
                line = (json.dumps(ev, ensure_ascii=False, default=str) + "\n").encode("utf-8")
                write_all(self._fd, line)
                os.fsync(self._fd)
            self.seq += 1
            self._recent.append(ev)
            self._cond.notify_all()
        for fn in list(self._listeners):
            try:
                fn(ev)
            except Exception:
                logger.exception("event listener failed")
        return ev

    def iter(self, since: int = 0, *, follow: bool = True, timeout: float | None = None) -> Iterator[dict]:
        """Events with ``seq >= since`` kept in memory; with ``follow``, then new ones until the log is
        closed (or no event came for ``timeout`` seconds)."""
        nxt = since
        while True:
            with self._cond:
                batch = [e for e in self._recent if e["seq"] >= nxt]
                if not batch:
                    if not follow or self._closed:
                        return
                    if not self._cond.wait(timeout) and timeout is not None:
                        return
                    continue
            for e in batch:
                nxt = e["seq"] + 1
                yield e

    @staticmethod
    def read(path: str | Path) -> list[dict]:
        """Every complete line of an event log file (a torn last line is skipped)."""
        out = []
        with open(path, "rb") as f:
            for raw in f:
                if raw.endswith(b"\n"):
                    try:
                        out.append(json.loads(raw))
                    except json.JSONDecodeError:
                        logger.warning("%s: bad event line skipped", path)
        return out

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._cond.notify_all()


class Webhook:
    """POSTs each event as JSON to ``url`` from its own thread: bounded queue, bounded retries with back-off.

    ``send`` never blocks: when ``queue_size`` events wait, the new one is dropped and counted. A POST
    that fails (connection error, timeout, HTTP status >= 400) is retried ``retries`` times with
    ``backoff_s * 2**i`` seconds between tries, then dropped and counted in ``failed``.
    """

    def __init__(self, url: str, *, timeout_s: float = 5.0, retries: int = 3, backoff_s: float = 0.5,
                 queue_size: int = 1000, headers: dict[str, str] | None = None) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must start with http:// or https://, got {url!r}")
        if retries < 0 or timeout_s <= 0 or backoff_s < 0 or queue_size < 1:
            raise ValueError("webhook needs retries >= 0, timeout_s > 0, backoff_s >= 0 and queue_size >= 1")
        self.url, self.timeout_s, self.retries, self.backoff_s = url, float(timeout_s), int(retries), float(backoff_s)
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self._q: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self.sent = self.dropped = self.failed = self.attempts = 0
        self._thread = threading.Thread(target=self._run, name="vstream-webhook", daemon=True)
        self._thread.start()

    def send(self, event: dict) -> bool:
        """Queue ``event``; False (and counted in ``dropped``) when the queue is full or the hook is closed."""
        if self._stop.is_set():
            self.dropped += 1
            return False
        try:
            self._q.put_nowait(event)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    @property
    def pending(self) -> int:
        return self._q.qsize()

    def _post(self, body: bytes) -> None:
        req = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # raises HTTPError on >= 400
            resp.read()

    def _run(self) -> None:
        while True:
            ev = self._q.get()
            if ev is None:
                return
            body = json.dumps(ev, ensure_ascii=False, default=str).encode("utf-8")
            for attempt in range(self.retries + 1):
                if self._stop.is_set():
                    break
                self.attempts += 1
                try:
                    self._post(body)
                    self.sent += 1
                    break
                except (urllib.error.URLError, OSError, ValueError) as e:
                    logger.debug("webhook POST of event %s failed (try %d): %s", ev.get("seq"), attempt + 1, e)
                    if attempt < self.retries:
                        self._stop.wait(self.backoff_s * (2 ** attempt))
            else:
                self.failed += 1
                logger.warning("webhook gave up on event %s after %d tries", ev.get("seq"), self.retries + 1)

    def stats(self) -> dict:
        return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped, "pending": self.pending,
                "attempts": self.attempts}

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within ``timeout`` seconds, then stop (the rest is counted as dropped)."""
        deadline = time.monotonic() + timeout
        while self._q.qsize() and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.02)
        self._stop.set()
        while True:
            try:
                if self._q.get_nowait() is not None:
                    self.dropped += 1
            except queue.Empty:
                break
        try:
            self._q.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()) + 0.1)


def _last_seq(path: Path) -> int:
    """The ``seq`` of the last complete line of an existing log (-1 when none); a torn tail is cut off."""
    if not path.exists():
        return -1
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        logger.warning("%s: torn last event line (%d bytes) removed", path, len(data) - cut)
        with open(path, "r+b") as f:
            f.truncate(cut)
            os.fsync(f.fileno())
        data = data[:cut]
    for raw in reversed(data.splitlines()):
        try:
            return int(json.loads(raw)["seq"])
        except (ValueError, KeyError, TypeError):
            continue
    return -1
