"""Fleet: many streams on one loaded model, with batched perception, retention and an event log.

    with Fleet(agent, event_log="events.jsonl", webhook="http://127.0.0.1:9000/hook") as fleet:
        fleet.add("cam-1", "rtsp://10.0.0.5/stream", memory_dir="cams/1", notify=["a person enters"])
        fleet.ask("cam-1", "Who came in?")
        fleet.ask_all("Which camera saw a red car?", top=3)
        for event in fleet.events(): ...

Threads: one reader per stream (source -> sampler -> chunker -> bounded queue; a stalled or failing
source blocks only its own reader), one perception thread for the fleet (round-robin over the streams
with a ready chunk, one chunk per stream per step, all of them ingested together by
``vstream.engine.batching``), and one responder per stream (answers on memory snapshots, as in a
Session). Events (alerts, stream up / down / gap) go to ``vstream.fleet.events.EventLog`` and the webhook.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil

from vstream.config import AgentConfig
from vstream.fleet.events import EventLog, Webhook
from vstream.fleet.stream import DOWN, STALLED, UP, FleetStream, one_line
from vstream.types import Alert, Answer, Evidence

logger = logging.getLogger(__name__)

__all__ = ["Fleet", "StreamHit"]


@dataclass
class StreamHit:
    """One stream's answer to ``Fleet.ask_all``: its best evidence score and the evidence, best first."""

    stream: str
    score: float
    evidence: list[Evidence] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"stream": self.stream, "score": self.score, "evidence": [e.to_dict() for e in self.evidence]}


class Fleet:
    """One model, many streams. A context manager; ``close()`` stops everything and flushes memories."""

    def __init__(self, agent, *, event_log: str | Path | None = None, webhook: str | Webhook | None = None,
                 max_batch: int = 16, gap_s: float = 10.0, webhook_options: dict | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not gap_s > 0:
            raise ValueError(f"gap_s must be > 0 seconds, got {gap_s}")
        self.agent = agent
        self.adapter = agent.adapter
        self.max_batch = int(max_batch)
        self.gap_s = float(gap_s)
        self.log = EventLog(event_log)
        self.webhook = webhook if isinstance(webhook, Webhook) or webhook is None else \
            Webhook(webhook, **(webhook_options or {}))
        if self.webhook is not None:
            self.log.add_listener(self.webhook.send)
        self._streams: dict[str, FleetStream] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._rr = 0  # round-robin: index of the stream served first in the next step
        self._ocr = self._embedder = None
        self._callbacks: dict[str, list[Callable[[dict], None]]] = {}
        self.batches = 0
        self.batched_chunks = 0
        self._t0 = time.monotonic()
        self.adapter._install_projection_hooks()
        from vstream.engine.batching import use_ragged

        self._ragged = use_ragged(self.adapter)  # per-row attention; False: padded batches (non-SDPA models)
        self._thread = threading.Thread(target=self._loop, name="vstream-fleet-perception", daemon=True)
        self._thread.start()

    # ---- streams ------------------------------------------------------------------------------
    def add(self, stream_id: str, source: Any, *, memory_dir: str | Path | None = None, notify=(),
            fps: float | None = None, realtime: bool | None = None, chunk_seconds: float | None = None,
            config: dict[str, Any] | None = None, on_event: Callable[[dict], None] | None = None) -> FleetStream:
        """Start watching ``source`` as ``stream_id``.

        notify: conditions (strings, or dicts with text / threshold / cooldown_s) that raise alerts.
        config: dotted overrides for this stream, e.g. ``{"memory.max_disk_bytes": 10**9}``.
        on_event: called with each event of this stream (alerts, up / down / gap).
        """
        from vstream.engine.core import Engine
        from vstream.engine.longterm import open_long_term
        from vstream.sources import open_source

        if not isinstance(stream_id, str) or not stream_id.strip():
            raise ValueError("stream_id must be a non-empty string, e.g. 'cam-1'")
        with self._lock:
            if self._stop.is_set():
                raise RuntimeError("the fleet is closed; open a new Fleet")
            if stream_id in self._streams:
                raise ValueError(f"stream {stream_id!r} already exists; remove it first or pick another id")
        changes = dict(config or {})
        for key, value in (("sampler.fps", fps), ("sampler.realtime", realtime), ("sampler.chunk_seconds", chunk_seconds)):
            if value is not None:
                changes[key] = value
        cfg: AgentConfig = self.agent.config.replace(**changes).validate() if changes else self.agent.config
        conds = [_condition(c, cfg) for c in ([notify] if isinstance(notify, (str, dict)) else list(notify or ()))]
        src = open_source(source)
        lt = None
        try:
            if cfg.memory.long_term or memory_dir is not None:
                lt = open_long_term(self.adapter, cfg.memory, memory_dir)
                if lt.index.embedder is not None:
                    lt.index.embedder = self._shared_embedder(lt.index.embedder)
            ocr = self._shared_ocr().read if cfg.memory.ocr else None
            eng = Engine(self.adapter, cfg, lt, ocr=ocr)
            eng.start()
            src = _continue_live(src, eng, lt)
        except BaseException:
            if lt is not None:
                lt.close()
            if hasattr(src, "close"):
                src.close()
            raise
        try:
            s = FleetStream(stream_id, src, eng, cfg, lt)  # its reader starts reading now
        except BaseException:
            if lt is not None:
                lt.close()
            raise
        try:
            for text, threshold, cooldown in conds:  # a bad threshold or cool-down raises ValueError here
                self._add_condition(s, text, threshold, cooldown)
            with self._lock:
                if stream_id in self._streams or self._stop.is_set():
                    raise ValueError(f"stream {stream_id!r} already exists (added meanwhile) or the fleet closed")
                self._streams[stream_id] = s
                if on_event is not None:
                    self._callbacks.setdefault(stream_id, []).append(on_event)
        except BaseException:
            s.close(s.config.responder.close_timeout_s)
            raise
        logger.info("fleet: stream %s added (%s)", stream_id, src)
        return s

    def notify_when(self, stream_id: str, condition: str, *, threshold: float | None = None,
                    cooldown_s: float | None = None) -> int:
        """Add an alert condition to a stream; returns its handle."""
        s = self._get(stream_id)
        rc = s.config.responder
        return self._add_condition(s, condition, rc.notify_threshold if threshold is None else threshold,
                                   rc.notify_cooldown_s if cooldown_s is None else cooldown_s)

    def _add_condition(self, s: FleetStream, text: str, threshold: float, cooldown_s: float) -> int:
        def on_alert(al: Alert) -> None:  # responder thread, once the alert's answer is decoded
            self._emit("alert", s, stream_time_s=al.at_s, clock_s=al.wall_s, condition=al.condition,
                       probability=al.probability,
                       answer=al.answer.text if al.answer is not None else None,
                       evidence=[e.to_dict() for e in al.answer.evidence] if al.answer is not None else [])

        return s.alerts.add(text, on_alert, threshold=threshold, cooldown_s=cooldown_s)

    def remove(self, stream_id: str) -> None:
        """Stop watching a stream: its reader and responder stop, its memory is flushed and closed."""
        s = self._get(stream_id)
        with s.engine.write_lock:  # perception is not inside this stream's step
            with self._lock:
                self._streams.pop(stream_id, None)
                s.removed = True
        s.close(s.config.responder.close_timeout_s)
        self._emit("removed", s)
        with self._lock:
            self._callbacks.pop(stream_id, None)

    @property
    def streams(self) -> list[str]:
        with self._lock:
            return list(self._streams)

    def stream(self, stream_id: str) -> FleetStream:
        """The per-stream object (engine, stats, wait_chunks)."""
        return self._get(stream_id)

    def _get(self, stream_id: str) -> FleetStream:
        with self._lock:
            s = self._streams.get(stream_id)
        if s is None:
            raise ValueError(f"no stream {stream_id!r} in this fleet; streams: {', '.join(self.streams) or 'none'}")
        return s

    # ---- questions ----------------------------------------------------------------------------
    def ask(self, stream_id: str, question: str, *, stream: bool = False, max_new_tokens: int | None = None,
            history: bool = True, timeout: float | None = None, since: Any = None,
            until: Any = None) -> Answer | Iterator[str]:
        """Ask one stream, exactly as ``Session.ask`` (``since``/``until``: only what it recorded then)."""
        return self._get(stream_id).ask(question, stream=stream, max_new_tokens=max_new_tokens, history=history,
                                        timeout=timeout, since=since, until=until)

    def ask_async(self, stream_id: str, question: str, **kw):
        """``Session.ask_async`` on one stream: a Future[Answer]."""
        return self._get(stream_id).ask_async(question, **kw)

    def ask_all(self, question: str, *, top: int = 3, evidence: int = 3, since: Any = None,
                until: Any = None) -> list[StreamHit]:
        """The ``top`` streams whose memory best matches ``question``, best first, with their evidence.

        No answer is decoded: every stream's long-term entries and window chunks are scored with the
        stream's retriever (text cosine with the text retriever, mean per-layer key cosine otherwise).
        ``since``/``until``: only what each stream recorded in that wall-clock range (in its own zone).
        """
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty; say what to look for")
        if top < 1 or evidence < 1:
            raise ValueError("top and evidence must be >= 1")
        from vstream.fleet.search import stream_evidence

        with self._lock:
            streams = dict(self._streams)
        ranges = {sid: st.time_range(since, until) for sid, st in streams.items()}  # bad times: ValueError now
        hits = []
        for sid in self.streams:
            try:
                s = self._get(sid)
            except ValueError:
                continue  # removed meanwhile
            ev = stream_evidence(s.engine, question.strip(), evidence, ranges.get(sid))
            if ev:
                hits.append(StreamHit(stream=sid, score=ev[0].score, evidence=ev))
        hits.sort(key=lambda h: -h.score)
        return hits[:top]

    # ---- events and stats ---------------------------------------------------------------------
    def events(self, since: int = 0, *, follow: bool = True, timeout: float | None = None) -> Iterator[dict]:
        """Events (alerts, stream up / down / gap / removed) from ``seq`` ``since`` on; with ``follow``, new
        ones as they happen until the fleet closes (or none came for ``timeout`` seconds)."""
        return self.log.iter(since, follow=follow, timeout=timeout)

    def stats(self) -> dict[str, Any]:
        """``{"streams": {id: session-style stats}, "total": {...}}``."""
        with self._lock:
            streams = dict(self._streams)
        per = {sid: s.stats() for sid, s in streams.items()}
        wall = time.monotonic() - self._t0
        chunks = sum(v["chunks"] for v in per.values())
        total = {
            "streams": len(per),
            "streams_up": sum(v["state"] == UP for v in per.values()),
            "streams_stalled": sum(v["state"] == STALLED for v in per.values()),
            "streams_down": sum(v["state"] == DOWN for v in per.values()),
            "chunks": chunks,
            "chunks_dropped": sum(v["chunks_dropped"] for v in per.values()),
            "frames_dropped": sum(v["frames_dropped"] for v in per.values()),
            "chunks_per_s": chunks / wall if wall > 0 else None,
            "batches": self.batches,
            "mean_batch": self.batched_chunks / self.batches if self.batches else None,
            "memory_bytes": {k: sum(v["memory_bytes"][k] for v in per.values()) for k in ("device", "ram", "disk")},
            "events": self.log.seq,
            "webhook": self.webhook.stats() if self.webhook is not None else None,
            "process_rss_bytes": psutil.Process().memory_info().rss,
        }
        return {"streams": per, "total": total}

    # ---- perception ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            picked = self._pick()
            if picked:
                try:
                    self._perceive(picked)
                except Exception:  # never let one step end the fleet
                    logger.exception("fleet perception step failed")
            self._housekeeping()
            if not picked:
                self._wake.wait(0.02)  # readers fill their queues meanwhile
                self._wake.clear()

    def _pick(self) -> list[tuple[FleetStream, Any]]:
        """Round-robin: from the stream after the last one served, one ready chunk per stream, max_batch."""
        with self._lock:
            order = [s for s in self._streams.values() if s.state != DOWN]
        n = len(order)
        picked: list[tuple[FleetStream, Any]] = []
        last = None
        for j in range(n):
            i = (self._rr + j) % n
            ch = order[i].take()
            if ch is not None:
                picked.append((order[i], ch))
                last = i
                if len(picked) >= self.max_batch:
                    break
        if last is not None:
            self._rr = (last + 1) % max(n, 1)
        return picked

    def _perceive(self, picked: list[tuple[FleetStream, Any]]) -> None:
        from vstream.engine.batching import compute_batch

        groups: dict[float, list[tuple[FleetStream, Any]]] = {}
        for s, ch in picked:  # temporal positions (Qwen2.5-VL) depend on the sampling rate: one rate per batch
            groups.setdefault(s.fps, []).append((s, ch))
        for fps, items in groups.items():
            locks = [s.engine.write_lock for s, _ in items]
            for lk in locks:
                lk.acquire()
            try:
                items = [(s, ch) for s, ch in items if not s.removed]
                for s, _ in items:
                    s.engine.apply_inbox()  # questions and answers enter the window before the chunk
                self.adapter.configure_sampling(fps)
                t0 = time.perf_counter()
                done = []
                try:
                    rows = compute_batch([s.engine for s, _ in items], [ch for _, ch in items], self._ragged)
                except Exception as e:  # nothing was committed: find the culprit by ingesting one by one
                    logger.warning("batched perception failed (%s); ingesting the %d chunks one by one",
                                   one_line(e), len(items))
                    rows = None
                for k, (s, ch) in enumerate(items):
                    try:
                        if rows is None:
                            rep = s.engine.ingest(ch)
                        else:
                            t, st, r = rows[k]
                            rep = s.engine.ingest_prefilled(ch, t, st, r.keys, r.values, r.key_summary, t0=t0)
                        done.append(((s, ch), rep))
                    except Exception as e1:  # this stream's memory is broken; the others go on
                        s.fail(f"perception failed: {one_line(e1)}")
                        logger.exception("stream %s: perception failed", s.id)
                        self._down(s)
                self.batches += 1
                self.batched_chunks += len(done)
                for (s, ch), rep in done:
                    s.ingested(rep)
                    self._after_chunk(s, ch)
            finally:
                for lk in locks:
                    lk.release()

    def _after_chunk(self, s: FleetStream, ch) -> None:
        if not s.first_chunk_seen or s.state == STALLED:
            s.first_chunk_seen = True
            s.state = UP
            self._emit("up", s)
        s.enforce_retention()
        s.alerts.check(ch.end_s, getattr(ch, "wall_end_s", None))

    def _housekeeping(self) -> None:
        now = time.monotonic()
        with self._lock:
            streams = list(self._streams.values())
        for s in streams:
            if s.state == DOWN or s.removed:
                continue
            if s.exhausted:
                self._down(s)
            elif s.state == UP and not s.waiting and now - s.last_chunk_wall > self.gap_s:
                s.state = STALLED
                self._emit("gap", s, silent_s=round(now - s.last_chunk_wall, 3))

    def _down(self, s: FleetStream) -> None:
        if s.state == DOWN:
            return
        s.mark_down()
        self._emit("down", s, error=s.error)

    def _emit(self, type: str, s: FleetStream, **fields) -> None:
        fields.setdefault("stream_time_s", s.engine.stream_time_s)
        try:
            ev = self.log.emit(type, s.id, **fields)
        except Exception as e:  # a broken log disk must not stop perception; it is loud in the log
            logger.error("event log write failed (%s): %s event of %s lost", one_line(e), type, s.id)
            return
        with self._lock:
            cbs = list(self._callbacks.get(s.id, ()))
        for cb in cbs:
            try:
                cb(ev)
            except Exception:
                logger.exception("event callback of stream %s failed", s.id)

    # ---- shared text models -------------------------------------------------------------------
    def _shared_embedder(self, fresh):
        with self._lock:
            if self._embedder is None or self._embedder.name != fresh.name:
                self._embedder = fresh
            return self._embedder

    def _shared_ocr(self):
        with self._lock:
            if self._ocr is None:
                from memory.textvec import OCR

                self._ocr = OCR()
            return self._ocr

    # ---- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop perception, every stream (memories flushed) and the webhook (what is queued gets
        ``close_timeout_s`` to go out); close the event log. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(self.agent.config.responder.close_timeout_s)
        for sid in self.streams:
            s = self._streams.get(sid)
            if s is not None:
                s.close(s.config.responder.close_timeout_s)
        if self.webhook is not None:
            self.webhook.close(self.agent.config.responder.close_timeout_s)
        self.log.close()

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _continue_live(src: Any, eng, lt) -> Any:
    """A live source added on a memory directory that holds entries continues stream time after them (new
    content: chunks at the stored times would be taken for stored ones); files and synthetic sources replay."""
    if lt is None or len(lt) == 0:
        return src
    from vstream.session.memory_dir import ShiftedSource, source_identity

    if source_identity(src).get("kind") != "stream":
        return src
    offset = lt.latest_end_s()
    eng.resume_at(offset)
    logger.info("fleet: live source %s continues after the %d stored entries (from %.1f s)",
                getattr(src, "name", src), len(lt), offset)
    return ShiftedSource(src, offset)


def _condition(c, cfg: AgentConfig) -> tuple[str, float, float]:
    rc = cfg.responder
    if isinstance(c, str):
        return c, rc.notify_threshold, rc.notify_cooldown_s
    if isinstance(c, dict) and isinstance(c.get("text"), str):
        return c["text"], float(c.get("threshold", rc.notify_threshold)), float(c.get("cooldown_s", rc.notify_cooldown_s))
    raise ValueError(f"a notify condition is a string or a dict with 'text' (and threshold, cooldown_s), got {c!r}")
