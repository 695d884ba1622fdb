"""Exactly-once events across worker deaths: per-stream outboxes written by workers, one log written by the controller.

A worker gives every event of a stream an id ``"<stream>:<epoch>:<n>"`` (``epoch``: the controller's
number for this placement of the stream, ``n``: a counter of the placement) and appends it, fsynced, to
the placement's outbox file on shared storage before anyone else sees it. The controller is the only
writer of the fleet's event log (``vstream.fleet.events.EventLog``): it records an event only if its id is not
in the log yet, so an event it receives twice (polled, then replayed from the outbox of a dead worker)
is logged once, and an event it never received (the worker died before the poll) is recovered from the
outbox. A reopened log reloads the ids it holds.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

from memory.journal import fsync_dir, write_all
from vstream.fleet.events import EventLog

logger = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(stream_id: str) -> str:
    """A file-name form of a stream id (unsafe characters -> '_', plus a short hash when changed)."""
    s = _SAFE.sub("_", stream_id)
    if s != stream_id or s in (".", ".."):
        import hashlib

        s = f"{s}-{hashlib.sha1(stream_id.encode()).hexdigest()[:8]}"
    return s


class Outbox:
    """Append-only, fsynced JSONL file of one stream placement's events (the worker side)."""

    def __init__(self, path: str | Path, stream_id: str, epoch: int) -> None:
        self.path = Path(path)
        self.stream_id, self.epoch = stream_id, int(epoch)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._n = 0
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fsync_dir(self.path.parent)

    def put(self, event: dict) -> dict:
        """Give ``event`` its id, write it durably, return the stamped copy (the fleet's ``seq`` is dropped)."""
        with self._lock:
            if self._fd is None:
                raise RuntimeError(f"outbox of {self.stream_id} is closed")
            ev = {k: v for k, v in event.items() if k != "seq"}
            ev["id"] = f"{self.stream_id}:{self.epoch}:{self._n}"
            self._n += 1
            line = (json.dumps(ev, ensure_ascii=False, default=str) + "\n").encode("utf-8")
            write_all(self._fd, line)
            os.fsync(self._fd)
            return ev

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def read_outbox(path: str | Path) -> list[dict]:
    """The complete events of an outbox file (a torn last line, from a kill mid-write, is skipped)."""
    p = Path(path)
    if not p.exists():
        return []
    return [e for e in EventLog.read(p) if isinstance(e, dict) and "id" in e]


class Journal:
    """The controller's event log with de-duplication by event id. Thread-safe."""

    def __init__(self, path: str | Path | None) -> None:
        self.log = EventLog(path)
        self._lock = threading.Lock()
        self.ids: set[str] = set()
        self.duplicates = 0
        self.last_alert: dict[tuple[str, str], float] = {}  # (stream, condition) -> stream time of its last alert
        if path is not None and Path(path).exists():
            for e in EventLog.read(path):
                if "id" in e:
                    self.ids.add(e["id"])
                self._note(e)

    def _note(self, e: dict) -> None:
        if e.get("type") == "alert" and e.get("condition") is not None:
            key = (e["stream"], e["condition"])
            t = float(e.get("stream_time_s") or 0.0)
            self.last_alert[key] = max(t, self.last_alert.get(key, t))

    def record(self, event: dict, **extra: Any) -> dict | None:
        """Log ``event`` (a worker's stamped event) unless its id was logged before; the logged event or None."""
        eid = event.get("id")
        if not isinstance(eid, str):
            raise ValueError(f"an event to record needs a string 'id', got {event!r}")
        with self._lock:  # check and write under one lock: two recorders never both log an id
            if eid in self.ids:
                self.duplicates += 1
                return None
            fields = {k: v for k, v in event.items() if k not in ("seq", "type", "stream")}
            fields.update(extra)
            ev = self.log.emit(event["type"], event["stream"], **fields)
            self.ids.add(eid)
            self._note(ev)
            return ev

    def replay(self, path: str | Path, **extra: Any) -> int:
        """Record every event of an outbox not logged yet; returns how many were new."""
        return sum(self.record(e, **extra) is not None for e in read_outbox(path))

    def replay_dir(self, directory: str | Path) -> int:
        """Replay, then delete, every outbox file in ``directory`` (left by placements of a dead process)."""
        d = Path(directory)
        n = 0
        for p in sorted(d.glob("*.jsonl")) if d.is_dir() else ():
            n += self.replay(p)
            p.unlink(missing_ok=True)
        return n

    def alert_state(self, stream_id: str) -> dict[str, float]:
        """condition -> stream time of its last logged alert, for one stream (carried to a new placement)."""
        with self._lock:
            return {c: t for (s, c), t in self.last_alert.items() if s == stream_id}

    @property
    def seq(self) -> int:
        return self.log.seq

    def events_since(self, since: int = 0, timeout: float = 1.0, limit: int = 1000) -> list[dict]:
        """Logged events with ``seq >= since`` (waits up to ``timeout`` s for the first one); those older than
        the ones kept in memory (e.g. logged before a restart) are read from the log file."""
        recent = list(self.log._recent)
        oldest = recent[0]["seq"] if recent else self.log.seq
        if since < oldest and self.log.path is not None:
            old = [e for e in read_events(self.log.path, since, limit) if e["seq"] < oldest]
            if old:
                return old
        out = []
        for e in self.iter(since, follow=True, timeout=timeout):
            out.append(e)
            if len(out) >= limit or e["seq"] + 1 >= self.seq:
                break
        return out

    def iter(self, since: int = 0, *, follow: bool = True, timeout: float | None = None):
        return self.log.iter(since, follow=follow, timeout=timeout)

    def close(self) -> None:
        self.log.close()


def read_events(path: str | Path, since: int = 0, limit: int | None = None) -> list[dict]:
    """Events of a log file with ``seq >= since`` (at most ``limit``), read from disk: what a restarted
    controller or a second process serves. Torn or damaged lines are skipped."""
    out: list[dict] = []
    p = Path(path)
    if not p.exists():
        return out
    with open(p, "rb") as f:
        for raw in f:
            e = _parse_line(raw)
            if e is not None and e["seq"] >= since:
                out.append(e)
                if limit is not None and len(out) >= limit:
                    break
    return out


def _parse_line(raw: bytes) -> dict | None:
    if not raw.endswith(b"\n"):
        return None
    try:
        e = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return e if isinstance(e, dict) and isinstance(e.get("seq"), int) else None


async def tail_events(path: str | Path, since: int = 0, *, follow: bool = True, poll_s: float = 0.25,
                      keepalive_s: float = 10.0):
    """Async iterator over a log file's events with ``seq >= since``; with ``follow`` it waits for new
    lines (yielding None every ``keepalive_s`` idle seconds, so a gone client is noticed). Reads the
    file only: no thread, no call to the controller."""
    import asyncio
    import time

    p = Path(path)
    offset, buf = 0, b""
    idle_since = time.monotonic()
    while True:
        got = False
        try:
            with open(p, "rb") as f:
                f.seek(offset)
                data = f.read(1 << 20)
        except FileNotFoundError:
            data = b""
        if data:
            offset += len(data)
            buf += data
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                e = _parse_line(raw + b"\n")
                if e is not None and e["seq"] >= since:
                    got = True
                    yield e
            if len(data) == 1 << 20:
                continue  # more to read now
        if got:
            idle_since = time.monotonic()
        if not follow:
            return
        if time.monotonic() - idle_since >= keepalive_s:
            idle_since = time.monotonic()
            yield None
        await asyncio.sleep(poll_s)
