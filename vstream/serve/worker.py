"""A worker of a RayFleet: one loaded model and one ``vstream.Fleet``, run inside a Ray actor.

The controller (vstream.serve.controller) wraps ``FleetWorker`` with ``ray.remote`` and pins it to one
GPU or a number of CPUs. What a worker adds to a plain Fleet:

- write-through memory: every chunk goes to the stream's long-term store on shared storage as soon as
  it is ingested (not only when the window evicts it), so a stream re-placed after this process dies
  resumes from its last ingested chunk (only chunks in flight are lost);
- resume: a stream added with ``resume=True`` reopens its memory directory, continues the stream clock
  and its source from the newest stored chunk, and starts its alert conditions in the state the
  controller's log says they were in (a condition that fired stays "active": no second alert);
- an outbox per placement (vstream.serve.journal): events are stamped with ids and fsynced there before
  the controller polls them.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from vstream.fleet.core import Fleet
from vstream.serve.journal import Outbox
from vstream.serve.push_stream import PushWorkerMixin, is_push

logger = logging.getLogger(__name__)

_RESTARTABLE = ("synthetic", "file")  # sources that can be reopened at a stream time


def source_kind(spec: str) -> str:
    """'synthetic', 'url' (network / live: reopened from now), or 'file'."""
    from vstream.sources import is_device, is_url

    if spec == "synthetic" or spec.startswith("synthetic:"):
        return "synthetic"
    if is_push(spec):
        return "push"  # frames from a realtime client (vstream.serve.push_stream)
    if is_url(spec) or is_device(spec):
        return "url"
    return "file"


class _Gate:
    """A source whose frames wait until ``open()``: alert state is set before the first chunk is checked."""

    def __init__(self, src) -> None:
        self.src = src
        self.name = getattr(src, "name", "source")
        self.fps = getattr(src, "fps", None)
        self.duration = getattr(src, "duration", None)
        self._open = threading.Event()
        self._closed = False

    def open(self) -> None:
        self._open.set()

    def __iter__(self):
        while not self._open.wait(0.1):
            if self._closed:
                return
        yield from self.src

    def close(self) -> None:
        self._closed = True
        self._open.set()
        if hasattr(self.src, "close"):
            self.src.close()

    def __repr__(self) -> str:
        return repr(self.src)


class _WriteThroughFleet(Fleet):
    """A Fleet whose streams persist each chunk right after it is ingested (see the module docstring)."""

    def _after_chunk(self, s, ch) -> None:
        lt = s.long_term
        if lt is not None and lt.persistent:
            for seg in s.engine.memory.live:
                if seg.kind == "vision" and seg.start_s == ch.start_s:
                    lt.on_evict(seg)  # idempotent: the window's later eviction finds it stored
                    break
        super()._after_chunk(s, ch)


class FleetWorker(PushWorkerMixin):
    """One model, one Fleet; the methods are what the controller and clients call on the actor."""

    def __init__(self, name: str, model: str, config: Any = None, *, device: str = "cpu", dtype: str | None = None,
                 overrides: dict[str, Any] | None = None, threads: int | None = None, max_batch: int = 16) -> None:
        import torch

        from vstream.api import Agent

        if threads:
            torch.set_num_threads(int(threads))
        self.name = name
        self.agent = Agent.from_pretrained(model, config=config, device=device, dtype=dtype, **(overrides or {}))
        self.fleet = _WriteThroughFleet(self.agent, max_batch=max_batch)
        self._lock = threading.Lock()
        self._events: collections.deque[tuple[int, dict]] = collections.deque(maxlen=100_000)
        self._n = 0  # poll cursor: events handed out get increasing numbers
        self._outboxes: dict[str, Outbox] = {}
        self._moving: set[str] = set()
        self._added_wall: dict[str, float] = {}
        self._cancels: dict[str, threading.Event] = {}  # request id -> cancel flag of a question being answered
        # request ids cancelled before their question reached this worker (the asker left at once), newest last
        self._cancelled_early: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.cancelled = 0  # questions cancelled because their asker went away
        self.fleet.log.add_listener(self._on_event)
        self.pid = os.getpid()
        logger.info("worker %s: %s loaded (pid %d)", name, self.agent.model_name, self.pid)

    # ---- events -------------------------------------------------------------------------------
    def _on_event(self, ev: dict) -> None:
        sid = ev.get("stream")
        if ev.get("type") == "removed" and sid in self._moving:
            return  # a move is not a removal
        box = self._outboxes.get(sid)
        if box is None:
            logger.warning("worker %s: event of unknown stream %s dropped", self.name, sid)
            return
        stamped = box.put(ev)
        stamped["worker"] = self.name
        with self._lock:
            self._events.append((self._n, stamped))
            self._n += 1

    def poll(self, after: int = -1) -> dict[str, Any]:
        """Events numbered above ``after`` and the streams held: the controller's heartbeat."""
        with self._lock:
            evs = [(n, e) for n, e in self._events if n > after]
        return {"events": evs, "streams": self.fleet.streams, "pid": self.pid}

    # ---- streams ------------------------------------------------------------------------------
    def add(self, stream_id: str, source: str, *, memory_dir: str, outbox: str, epoch: int, resume: bool = False,
            options: dict[str, Any] | None = None, alert_state: dict[str, float] | None = None) -> dict[str, Any]:
        """Watch ``source`` as ``stream_id`` with memory in ``memory_dir``; ``resume``: continue that memory."""
        from memory.longterm import LongTerm  # noqa: F401  (fail here, not in a thread, if memory is broken)
        from vstream.session.memory_dir import read_sources
        from vstream.sources import open_source

        opts = dict(options or {})
        resume_at = 0.0
        kind = source_kind(source)
        ident = source_spec_identity(source)
        if (Path(memory_dir) / "config.json").exists():  # a memory of this id: the same source resumes it
            claim_identity(memory_dir, ident)  # another source: ValueError (HTTP 409), nothing opened
            resume_at = _latest_end_s(memory_dir)
        if kind == "push":
            src = self._push_source(stream_id, memory_dir, resume_at, resume)
            opts["realtime"] = False  # frames arrive in real time already; a full queue drops (counted)
        else:
            src = open_source(source, start_s=resume_at) if (resume_at > 0 and kind in _RESTARTABLE) else open_source(source)
        if resume_at > 0 and kind not in _RESTARTABLE and kind != "push":  # a live URL restarts its clock at 0
            from vstream.session.memory_dir import ShiftedSource

            src = ShiftedSource(src, resume_at)  # continue after the store
        gate = _Gate(src)
        self._outboxes[stream_id] = Outbox(outbox, stream_id, epoch)
        try:
            s = self.fleet.add(stream_id, gate, memory_dir=memory_dir, notify=opts.get("notify") or (),
                               fps=opts.get("fps"), realtime=opts.get("realtime"),
                               chunk_seconds=opts.get("chunk_seconds"), config=opts.get("config"))
        except BaseException:
            self._outboxes.pop(stream_id).close()
            gate.close()
            self._push_removed(stream_id)
            raise
        if resume_at == 0 and not read_sources(memory_dir):
            claim_identity(memory_dir, ident, check=False)  # the store exists now: record whose memory it is
        if resume_at > 0:
            mm = s.engine.memory
            mm.set_stream_time(max(mm.stream_time_s, resume_at))
        for c in s.alerts.notifier.conditions.values():  # carry what the log knows: fired once, still "on"
            if alert_state and c.text in alert_state:
                c.last_fired_s = float(alert_state[c.text])
                c.active = True
        self._added_wall[stream_id] = time.monotonic()
        if kind == "push":
            self._push_started(stream_id)
        gate.open()
        return {"stream": stream_id, "worker": self.name, "resumed_at_s": resume_at, "epoch": epoch}

    def remove(self, stream_id: str, *, moving: bool = False) -> None:
        """Stop a stream (memory flushed to its directory). ``moving``: no "removed" event (it goes on elsewhere)."""
        if moving:
            self._moving.add(stream_id)
        try:
            self.fleet.remove(stream_id)
        finally:
            self._push_removed(stream_id)
            self._moving.discard(stream_id)
            box = self._outboxes.pop(stream_id, None)
            if box is not None:
                box.close()
            self._added_wall.pop(stream_id, None)

    # ---- questions ----------------------------------------------------------------------------
    def _check_question(self, question: str, max_question_tokens: int | None) -> None:
        if max_question_tokens is None:
            return
        n = len(self.fleet.adapter.tokenize(question))
        if n > max_question_tokens:
            from vstream.serve.limits import LimitExceeded

            raise LimitExceeded(f"the question is {n} tokens, over the server's limit of {max_question_tokens}; "
                                "ask a shorter question", 413, "question_too_long")

    def _start(self, stream_id: str, question: str, max_new_tokens: int | None, history: bool,
               request_id: str | None, max_question_tokens: int | None, on_piece=None, since: Any = None,
               until: Any = None):
        """(future, cancel event) of a question; ``request_id`` names it for ``cancel``."""
        self._check_question(question, max_question_tokens)
        s = self.fleet.stream(stream_id)
        cancel = threading.Event()
        if request_id is not None:
            with self._lock:
                early = self._cancelled_early.pop(request_id, False) is None
                if not early:
                    self._cancels[request_id] = cancel
            if early:  # its asker left before it arrived: it stops at once
                cancel.set()
                self.cancelled += 1
                logger.info("worker %s: question %s cancelled before it started", self.name, request_id)
        try:
            fut = s.ask_async(question, max_new_tokens=max_new_tokens, history=history, on_piece=on_piece,
                              cancel=cancel, since=since, until=until)
        except BaseException:
            self._forget(request_id)
            raise
        return fut, cancel

    def _forget(self, request_id: str | None) -> None:
        if request_id is not None:
            with self._lock:
                self._cancels.pop(request_id, None)

    def cancel(self, request_id: str) -> bool:
        """Stop decoding the question named ``request_id`` (its client went away); False when unknown."""
        with self._lock:
            ev = self._cancels.pop(request_id, None)
            if ev is None:  # not here yet (or done): remember it, a bounded number of them
                self._cancelled_early[request_id] = None
                while len(self._cancelled_early) > 1024:
                    self._cancelled_early.popitem(last=False)
        if ev is not None:
            ev.set()
            self.cancelled += 1
            logger.info("worker %s: question %s cancelled", self.name, request_id)
        return ev is not None

    def ask(self, stream_id: str, question: str, max_new_tokens: int | None = None, history: bool = True,
            timeout: float | None = None, request_id: str | None = None,
            max_question_tokens: int | None = None, since: Any = None, until: Any = None) -> dict[str, Any]:
        fut, cancel = self._start(stream_id, question, max_new_tokens, history, request_id, max_question_tokens,
                                  since=since, until=until)
        try:
            return fut.result(timeout).to_dict()
        finally:
            if not fut.done():
                cancel.set()
                fut.cancel()
            self._forget(request_id)

    def ask_stream(self, stream_id: str, question: str, max_new_tokens: int | None = None,
                   history: bool = True, request_id: str | None = None,
                   max_question_tokens: int | None = None, since: Any = None, until: Any = None) -> Iterator[Any]:
        """Pieces of the answer as they are decoded (str), then the whole answer (dict)."""
        import queue

        pieces: queue.Queue = queue.Queue()
        fut, cancel = self._start(stream_id, question, max_new_tokens, history, request_id, max_question_tokens,
                                  on_piece=pieces.put, since=since, until=until)
        fut.add_done_callback(lambda _f: pieces.put(None))
        try:
            while True:
                p = pieces.get()
                if p is None:
                    break
                yield p
            yield fut.result().to_dict()
        finally:
            if not fut.done():
                cancel.set()
                fut.cancel()
            self._forget(request_id)

    def ask_all(self, question: str, top: int = 3, evidence: int = 3, since: Any = None,
                until: Any = None) -> list[dict[str, Any]]:
        """``Fleet.ask_all`` without the write-through copies: a stored entry of a chunk still in the window
        is left out (the window's own evidence stands for it), so the scores equal a plain Fleet's."""
        from vstream.fleet.search import stream_evidence

        hits = []
        for sid in self.fleet.streams:
            try:
                s = self.fleet.stream(sid)
            except ValueError:
                continue  # removed meanwhile
            live = {seg.start_s for seg in s.engine.snapshot().live if seg.kind == "vision"}
            ev = [e for e in stream_evidence(s.engine, question, evidence + len(live), s.time_range(since, until))
                  if not (e.tier == "long_term" and e.start_s in live)][:evidence]
            if ev:
                hits.append({"stream": sid, "score": ev[0].score, "evidence": [e.to_dict() for e in ev]})
        hits.sort(key=lambda h: -h["score"])
        return hits[:top]

    def wait_chunks(self, stream_id: str, n: int, timeout: float | None = None) -> int:
        """Wait until the stream's memory holds ``n`` ingested chunks in this placement; the count now."""
        s = self.fleet.stream(stream_id)
        s.wait_chunks(n, timeout)
        return s.engine.memory.chunks_ingested

    def stats(self) -> dict[str, Any]:
        st = self.fleet.stats()
        now = time.monotonic()
        for sid, v in st["streams"].items():
            v["uptime_s"] = now - self._added_wall.get(sid, now)
            self._push_stats_into(sid, v)
        st["worker"] = {"name": self.name, "pid": self.pid, "model": self.agent.model_name,
                        "questions_cancelled": self.cancelled}
        return st

    def ping(self) -> int:
        return self.pid

    def close(self) -> None:
        self.fleet.close()
        for box in self._outboxes.values():
            box.close()
        self._outboxes.clear()


def source_spec_identity(spec: str) -> dict:
    """What identifies a source spec across placements and restarts (a URL without its password, a
    synthetic spec, a file's path, size and content fingerprint); the same as the CLI's sources.json."""
    from vstream.session.memory_dir import source_identity
    from vstream.sources.errors import _redact

    kind = source_kind(spec)
    if kind == "url":
        return {"kind": "stream", "name": _redact(spec)}
    if kind == "push":  # frames pushed by a client (WS /v1/realtime)
        return {"kind": "push", "name": spec}
    if kind == "synthetic":
        from vstream.sources import SyntheticSource, synthetic_kwargs

        return source_identity(SyntheticSource(**synthetic_kwargs(spec)))
    p = Path(spec)
    if not p.is_file():
        return {"kind": "file", "path": str(p)}
    from vstream.session.memory_dir import _fingerprint

    r = p.resolve()
    return {"kind": "file", "path": str(r), "size": r.stat().st_size, "fingerprint": _fingerprint(r)}


def claim_identity(memory_dir: str | Path, ident: dict, *, check: bool = True) -> None:
    """Record ``ident`` as the source of a memory directory; ``check``: the directory holds a memory, whose
    recorded source must be ``ident`` (ValueError naming the mismatch otherwise)."""
    from vstream.session.memory_dir import SOURCES_NAME, _write_sources, read_sources

    d = Path(memory_dir)
    recorded = read_sources(d) if check else []
    if recorded:
        if recorded[-1]["identity"] != ident:
            raise ValueError(f"memory dir {d} holds another source than the one given; remove the stream's "
                             "memory or pick another stream id")
        return
    if (d / "config.json").exists() and not (d / SOURCES_NAME).exists():
        logger.warning("memory dir %s had no source record: recording this source", d)
    d.mkdir(parents=True, exist_ok=True)
    _write_sources(d, [{"identity": ident, "offset_s": 0.0}])


def _latest_end_s(memory_dir: str | Path) -> float:
    """End of the newest chunk stored in a memory directory (0 when none)."""
    from memory.store import LongTermStore

    store = LongTermStore.open(Path(memory_dir), expected=None, ram_bytes=0, device="cpu", verify="size")
    try:
        return max((i.end_s for i in store.infos()), default=0.0)
    finally:
        store.close()
