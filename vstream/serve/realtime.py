"""``WS /v1/realtime?stream=ID``: a client pushes frames and audio into a fleet stream and talks to it.

One WebSocket session = one stream of the fleet, created on the first media or question (with the
settings of the ``session.update`` events before it) or attached when a pushed stream of that id exists
(a reconnect). The protocol (OpenAI Realtime names where one exists, vstream's own beside them) is in
``vstream.serve.realtime_protocol`` and docs/serve.md. Tasks of a session:

- the reader: checks each message (``ProtocolError`` -> an ``error`` event, the session goes on), limits
  the frame rate, checks the client's stamps (increasing, bounded skew against the wall clock) and puts
  frames and audio on a bounded queue (full: dropped, counted);
- the forwarder: sends the queue to the stream's worker in batches (``PushWorkerMixin.push_frames``);
- the poller: the worker's events of the stream (transcript, alert, gap, state) and, now and then, the
  counters as ``session.updated``;
- the writer: a bounded queue of outgoing events (a client that does not read loses events, counted);
- a response task per ``response.create``: the answer's pieces as ``response.text.delta``.

A client that goes away ends the session; the stream stays (memory kept, write-through) for a reconnect.
When the stream's worker dies, the session says so (``error`` code ``stream_moved``) and closes with
1012; the controller resumes the stream elsewhere from its memory directory and the client reconnects.
"""
from __future__ import annotations

import asyncio
import collections
import hmac
import json
import logging
import time
from typing import Any

from fastapi import WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from vstream.serve import realtime_protocol as rp
from vstream.serve.push_stream import PUSH_SPEC, is_push
from vstream.serve.realtime_responses import answer, commentate

logger = logging.getLogger(__name__)

_SESSIONS: collections.Counter = collections.Counter()  # open sessions per token (this process)
_ACTIVE: dict[str, "RealtimeSession"] = {}  # stream id -> its session in this process
_TOKEN_PROTOCOLS = ("openai-insecure-api-key.", "vstream-token.")


def register(app) -> None:
    """Add the WebSocket route to ``app`` (the state, fleet and token, is ``vstream.serve.state.STATE``)."""

    @app.websocket("/v1/realtime")
    async def realtime(ws: WebSocket) -> None:
        from vstream.serve.state import STATE  # looked up here: Serve runs a pickled copy of the app in its replica

        await serve_session(ws, STATE)


def _token_of(ws: WebSocket) -> str | None:
    scheme, _, value = ws.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for p in ws.scope.get("subprotocols") or ():
        for prefix in _TOKEN_PROTOCOLS:
            if p.startswith(prefix):
                return p[len(prefix):]
    return None


async def serve_session(ws: WebSocket, state: dict[str, Any]) -> None:
    """Authorize, then run one session; refusals close the handshake (HTTP 403) before it is accepted."""
    token = state.get("token")
    got = _token_of(ws)
    if token is not None and (got is None or not hmac.compare_digest(got.encode(), token.encode())):
        logger.info("realtime: refused a connection without the right token")
        await ws.close(code=1008, reason="missing or wrong bearer token")
        return
    limits: rp.RealtimeLimits = state.get("realtime_limits") or rp.limits_from_env()
    key = token or "-"
    sid = (ws.query_params.get("stream") or "").strip()
    fleet = state.get("fleet")
    if not sid or len(sid) > 200 or fleet is None or _SESSIONS[key] >= limits.max_sessions_per_token:
        why = ("give ?stream=ID (1-200 characters)" if not sid or len(sid) > 200 else
               "too many sessions for this token" if fleet is not None else "the server is starting")
        logger.info("realtime: refused a connection: %s", why)
        await ws.close(code=1008, reason=why)
        return
    offered = ws.scope.get("subprotocols") or []
    await ws.accept(subprotocol="realtime" if "realtime" in offered else None)
    _SESSIONS[key] += 1
    try:
        await RealtimeSession(ws, fleet, sid, limits).run()
    finally:
        _SESSIONS[key] -= 1


class RealtimeSession:
    """One client, one stream (see the module docstring)."""

    def __init__(self, ws: WebSocket, fleet, stream_id: str, limits: rp.RealtimeLimits) -> None:
        self.ws, self.fleet, self.sid, self.limits = ws, fleet, stream_id, limits
        self.id = rp.new_id("sess")
        self.config: dict[str, Any] = {"input_audio_format": "pcm16", "input_audio_sample_rate": 24000,
                                       "input_audio_transcription": None, "stats_interval_s": 5.0}
        self.started = False
        self.attached = False
        self.handle = None
        self.origin: float | None = None
        self.inq: asyncio.Queue = asyncio.Queue(limits.queue_size)
        self.outq: asyncio.Queue = asyncio.Queue(limits.out_queue_size)
        self.counts: collections.Counter = collections.Counter()
        self.worker_stats: dict[str, Any] = {}
        self.question: str | None = None
        self.response: asyncio.Task | None = None
        self.closing: tuple[int, str] | None = None
        self._last_t: float | None = None
        self._best_delay: float | None = None  # min over accepted frames of (arrival wall - client stamp)
        self._window = (0.0, 0)  # frame-rate window: (start wall, frames in it)
        self._tasks: list[asyncio.Task] = []
        self.ready = asyncio.Event()  # set once the stream's worker is known
        self._cursor = 0  # the newest worker event handed on
        self._stopped = asyncio.Event()  # set by stop()

    # ---- lifecycle ----------------------------------------------------------------------------
    async def run(self) -> None:
        old = _ACTIVE.get(self.sid)
        if old is not None:
            old.stop(1008, "session_replaced", "another session took over this stream")
        _ACTIVE[self.sid] = self
        self._tasks = [asyncio.create_task(c) for c in (self._writer(), self._forwarder(), self._poller(),
                                                         self._commentator())]
        for t in self._tasks[1:]:
            t.add_done_callback(self._task_done)
        try:
            placement = await run_in_threadpool(self.fleet.placement)
            if self.sid in placement:
                if not is_push(placement[self.sid].get("source", "")):
                    self.stop(1008, "stream_not_pushable", f"stream {self.sid!r} reads its own source; open a "
                                                           "realtime session on a new stream id")
                else:
                    await self._locate()
                    self.started = self.attached = True
            if self.closing is None:
                self.send(rp.event("session.created", session=self._session_obj()))
                await self._reader()
        except WebSocketDisconnect:
            pass
        except Exception as e:  # noqa: BLE001 - one session's failure is reported to it, never to the server
            logger.exception("realtime session %s failed", self.id)
            self.stop(1011, "server_error", f"the session failed: {' '.join(str(e).split())[:200]}")
        finally:
            await self._finish()

    def _task_done(self, t: asyncio.Task) -> None:
        if not t.cancelled() and t.exception() is not None:
            e = t.exception()
            logger.error("realtime session %s: %s failed: %r", self.id, t.get_coro().__name__, e)
            self.stop(1011, "server_error", f"the session failed: {' '.join(str(e).split())[:200]}")

    def stop(self, code: int, err: str | None = None, message: str = "") -> None:
        """End the session: an error event first (when given), then the close frame with ``code``."""
        if self.closing is not None:
            return
        if err:
            self.send(rp.error_event(err, message, type_="server_error" if code >= 1011 else "invalid_request_error"))
        self.closing = (code, err or "")
        self._stopped.set()
        self.outq_put_end()

    def outq_put_end(self) -> None:
        try:
            self.outq.put_nowait(None)
        except asyncio.QueueFull:  # the writer closes the socket when it sees closing
            pass

    async def _finish(self) -> None:
        if self.closing is None:
            self.closing = (1000, "")
            self._stopped.set()
            self.outq_put_end()
        writer = self._tasks[0] if self._tasks else None
        if writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(writer), 2.0)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - a client that does not read
                pass
        for t in self._tasks + ([self.response] if self.response else []):
            t.cancel()
        try:
            await self.ws.close(code=self.closing[0])
        except Exception:  # noqa: BLE001 - already closed
            pass
        if _ACTIVE.get(self.sid) is self:
            _ACTIVE.pop(self.sid, None)
        if self.handle is not None:
            try:
                await self.handle.push_detach.remote(self.sid)
            except Exception:  # noqa: BLE001 - the worker is gone: nothing to detach
                pass
        logger.info("realtime session %s on %s ended (%s)", self.id, self.sid, dict(self.counts))

    # ---- output -------------------------------------------------------------------------------
    def send(self, ev: dict) -> None:
        """Queue an event for the client; dropped (counted) when the client is not reading."""
        try:
            self.outq.put_nowait(ev)
        except asyncio.QueueFull:
            self.counts["events_dropped"] += 1

    def error(self, e: rp.ProtocolError) -> None:
        self.counts["errors"] += 1
        self.send(rp.error_event(e.code, e.message, e.event_id))

    async def _writer(self) -> None:
        while True:
            ev = await self.outq.get()
            if ev is None:
                if self.closing is not None:
                    return
                continue
            await self.ws.send_text(json.dumps(ev, ensure_ascii=False))

    # ---- input --------------------------------------------------------------------------------
    async def _reader(self) -> None:
        stopped = asyncio.ensure_future(self._stopped.wait())  # stop() from another task wakes the reader
        recv = None
        try:
            while self.closing is None:
                recv = recv or asyncio.ensure_future(self.ws.receive())
                done, _ = await asyncio.wait({recv, stopped}, timeout=self.limits.idle_timeout_s,
                                             return_when=asyncio.FIRST_COMPLETED)
                if stopped in done:
                    return
                if not done:
                    self.stop(1000, "idle_timeout", f"no message for {self.limits.idle_timeout_s:g} s; the session "
                                                    "ended (the stream and its memory stay)")
                    return
                msg, recv = recv.result(), None
                if msg["type"] == "websocket.disconnect":
                    return
                self.counts["messages"] += 1
                try:
                    text = msg.get("text") if msg.get("text") is not None else msg.get("bytes") or b""
                    await self._handle(rp.parse(text, self.limits))
                except rp.ProtocolError as e:
                    self.error(e)
                except (ValueError, RuntimeError) as e:  # the fleet refused (e.g. a bad setting): say why
                    self.error(rp.ProtocolError("invalid_request", " ".join(str(e).split())[:300]))
        finally:
            for f in (recv, stopped):
                if f is not None and not f.done():
                    f.cancel()

    async def _handle(self, msg: dict) -> None:
        t = msg["type"]
        eid = msg.get("event_id")
        if t == "session.update":
            self.config.update(rp.session_changes(msg, self.started))
            self.send(rp.event("session.updated", session=self._session_obj()))
        elif t == "input_video_frame.append":
            item = self._frame(msg)
            await self._start()
            self._enqueue(item, "frames_dropped_queue")
        elif t == "input_audio_buffer.append":
            data, ts = rp.audio_item(msg, self.limits)
            self.counts["audio_bytes"] += len(data)
            await self._start()
            self._enqueue(("audio", data, int(self.config["input_audio_sample_rate"]), ts), "audio_dropped")
        elif t == "input_audio_buffer.commit":
            self.send(rp.event("input_audio_buffer.committed", previous_item_id=None, item_id=rp.new_id("item")))
        elif t == "input_audio_buffer.clear":
            self.send(rp.event("input_audio_buffer.cleared"))
        elif t == "conversation.item.create":
            self.question = rp.question_of(msg)
            item = {"id": rp.new_id("item"), "object": "realtime.item", "type": "message", "role": "user",
                    "content": [{"type": "input_text", "text": self.question}]}
            self.send(rp.event("conversation.item.created", previous_item_id=None, item=item))
        elif t == "response.create":
            await self._respond(msg)
        elif t == "response.cancel":
            if self.response is not None and not self.response.done():
                self.response.cancel()
            else:
                raise rp.ProtocolError("response_cancel_not_active", "there is no response to cancel", eid)

    def _frame(self, msg: dict) -> tuple:
        """The checked frame as a queue item; ProtocolError (rate, image, stamps) otherwise."""
        eid = msg.get("event_id")
        now = time.monotonic()
        start, n = self._window
        if now - start >= 1.0:
            start, n = now, 0
        if n >= self.limits.max_fps:
            self.counts["frames_rate_limited"] += 1
            self._window = (start, n)
            raise rp.ProtocolError("rate_limited", f"more than {self.limits.max_fps:g} frames in one second; the "
                                                   "frame was dropped: send fewer frames per second", eid)
        self._window = (start, n + 1)
        data, ts = rp.frame_item(msg, self.limits)
        if self._last_t is not None and ts <= self._last_t:
            self.counts["frames_refused"] += 1
            raise rp.ProtocolError("timestamp_not_increasing", f"frame timestamp {ts:.3f} is not after the previous "
                                                               f"one ({self._last_t:.3f}); the frame was dropped", eid)
        delay = now - ts  # arrival delay + clock offset; the smallest seen is the best clock mapping
        best = self._best_delay if self._best_delay is not None else delay
        if best - delay > self.limits.max_skew_s or delay - best > self.limits.max_lag_s:
            self.counts["frames_refused"] += 1
            raise rp.ProtocolError("timestamp_skew", f"frame timestamp {ts:.3f} is {best - delay:+.1f} s off the "
                                                     "wall clock against the earlier frames (allowed: "
                                                     f"+{self.limits.max_skew_s:g} / -{self.limits.max_lag_s:g} s); "
                                                     "stamp frames with their capture clock", eid)
        self._best_delay = min(best, delay)
        self._last_t = ts
        self.counts["frames_received"] += 1
        return ("frame", data, ts)

    def _enqueue(self, item: tuple, counter: str) -> None:
        try:
            self.inq.put_nowait(item)
        except asyncio.QueueFull:
            self.counts[counter] += 1

    # ---- the stream ---------------------------------------------------------------------------
    async def _start(self) -> None:
        """Create the stream on the first media or question (or attach to it when it appeared meanwhile)."""
        if self.started:
            return
        c = self.config
        opts: dict[str, Any] = {"fps": c.get("fps"), "chunk_seconds": c.get("chunk_seconds"),
                                "notify": list(c.get("alerts") or ())}
        if c.get("input_audio_transcription"):
            opts["config"] = {"memory.asr": True}
        try:
            await run_in_threadpool(self.fleet.add, self.sid, PUSH_SPEC, **opts)
        except ValueError as e:
            if "already exists" not in str(e):
                raise
        self.started = True
        await self._locate()
        self.send(rp.event("session.updated", session=self._session_obj()))

    async def _locate(self) -> None:
        _, self.handle = await run_in_threadpool(self.fleet.actor_of, self.sid)
        got = await self.handle.push_events.remote(self.sid, 1 << 62)  # the clock origin, the newest event
        self._cursor = got["seq"]  # events from now on (an attached stream's older ones were someone else's)
        self.worker_stats = got["feed"]
        self._note_origin(got["feed"])
        self.ready.set()

    def _lost(self, e: BaseException) -> None:
        logger.warning("realtime session %s: the worker of %s is gone (%s)", self.id, self.sid, type(e).__name__)
        self.stop(1012, "stream_moved", "the worker of this stream stopped; reconnect to the same stream id: it "
                                        "resumes from its memory")

    async def _forwarder(self) -> None:
        import ray

        await self.ready.wait()
        while True:
            item = await self.inq.get()
            batches = [[item]]
            while item[0] == "frame" and len(batches[-1]) < self.limits.batch and not self.inq.empty():
                nxt = self.inq.get_nowait()
                if nxt[0] != "frame":
                    batches.append([nxt])
                    break
                batches[-1].append(nxt)
            try:
                for b in batches:
                    await self._push(b)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                self._lost(e)
                return
            except ray.exceptions.RayTaskError as e:  # e.g. the stream was removed meanwhile
                from vstream.serve.rayutil import unwrap

                self.send(rp.error_event("push_failed", " ".join(str(unwrap(e)).split())[:300], type_="server_error"))

    async def _push(self, batch: list[tuple]) -> None:
        if not batch:
            return
        if batch[0][0] == "audio":
            for _, data, rate, ts in batch:
                res = await self.handle.push_audio.remote(self.sid, data, rate, ts)
                self._note_origin(res)
                if res.get("error"):
                    self.counts["errors"] += 1
                    self.send(rp.error_event(*res["error"]))
                elif res.get("ignored") and not self.counts["audio_ignored_notice"]:
                    self.counts["audio_ignored_notice"] += 1
                    self.send(rp.error_event("transcription_off", "audio is ignored: this stream was created "
                                             "without input_audio_transcription (set it in session.update "
                                             "before the first media)"))
            return
        res = await self.handle.push_frames.remote(self.sid, [(d, ts) for _, d, ts in batch])
        self._note_origin(res)
        self.counts["frames_forwarded"] += res["accepted"]
        self.counts["frames_dropped_worker"] += res["dropped"]
        for _i, code, message in res["errors"]:
            self.counts["errors"] += 1
            self.send(rp.error_event(code, message))

    def _note_origin(self, res: dict) -> None:
        if res.get("origin") is not None:
            self.origin = res["origin"]

    # ---- events from the stream ---------------------------------------------------------------
    async def _poller(self) -> None:
        import ray

        last_stats = time.monotonic()
        while True:
            await asyncio.sleep(0.25)
            if self.handle is None:
                continue
            try:
                got = await self.handle.push_events.remote(self.sid, self._cursor)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                self._lost(e)
                return
            except ray.exceptions.RayTaskError:
                continue  # the stream is being re-placed or removed
            self.worker_stats = got["feed"]
            self._note_origin(got["feed"])
            for ev in got["events"]:
                self._cursor = max(self._cursor, ev["n"])
                out = self._map_event(ev)
                if out is not None:
                    self.send(out)
            if time.monotonic() - last_stats >= float(self.config["stats_interval_s"]):
                last_stats = time.monotonic()
                self.send(rp.event("session.updated", session=self._session_obj()))

    def client_time(self, t: float | None) -> float | None:
        """A stream time on the client's clock (None before the first stamp)."""
        return None if t is None or self.origin is None else round(t + self.origin, 6)

    def _map_event(self, ev: dict) -> dict | None:
        typ, st = ev.get("type"), ev.get("stream_time_s")
        if typ == "transcript":
            return rp.event("transcript.delta", delta=ev["text"], start_s=ev["start_s"], end_s=ev["end_s"],
                            client_start=self.client_time(ev["start_s"]), client_end=self.client_time(ev["end_s"]))
        if typ == "alert":
            return rp.event("alert.fired", condition=ev.get("condition"), probability=ev.get("probability"),
                            answer=ev.get("answer"), stream_time_s=st, client_timestamp=self.client_time(st),
                            evidence=[self._evidence(e) for e in ev.get("evidence") or ()])
        if typ == "gap":
            return rp.event("gap", silent_s=ev.get("silent_s"), stream_time_s=st, client_timestamp=self.client_time(st))
        if typ in ("up", "down", "removed"):
            return rp.event("stream.state", state=typ, stream_time_s=st, error=ev.get("error"))
        return None

    def _evidence(self, e: dict) -> dict:
        return {**e, "client_start": self.client_time(e.get("start_s")), "client_end": self.client_time(e.get("end_s"))}

    # ---- answers ------------------------------------------------------------------------------
    async def _respond(self, msg: dict) -> None:
        eid = msg.get("event_id")
        if self.response is not None and not self.response.done():
            raise rp.ProtocolError("conversation_already_has_active_response", "a response is in progress; wait for "
                                   "response.done or send response.cancel", eid)
        r = msg.get("response") if isinstance(msg.get("response"), dict) else {}
        question = self.question or (r.get("instructions") if isinstance(r.get("instructions"), str) else None)
        if not question or not question.strip():
            raise rp.ProtocolError("no_question", "nothing to answer: send conversation.item.create with an "
                                                  "input_text message first", eid)
        mot = r.get("max_output_tokens", self.config.get("max_response_output_tokens"))
        mnt = mot if isinstance(mot, int) and not isinstance(mot, bool) and mot > 0 else None
        self.question = None
        await self._start()
        self.response = asyncio.create_task(self._answer(question.strip(), mnt))

    async def _answer(self, question: str, mnt: int | None) -> None:
        await answer(self, question, mnt)

    async def _commentator(self) -> None:
        await commentate(self)

    # ---- state --------------------------------------------------------------------------------
    def _session_obj(self) -> dict[str, Any]:
        return {"id": self.id, "object": "realtime.session", "model": self.sid, **self.config,
                "vstream": {"stream": self.sid, "started": self.started, "attached": self.attached,
                            "clock_origin": self.origin, "limits": vars(self.limits),
                            "stats": {**dict(self.counts), "worker": self.worker_stats,
                                      "queued": self.inq.qsize()}}}
