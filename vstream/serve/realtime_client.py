"""``RealtimeClient``: push frames and audio to ``WS /v1/realtime`` and read its events (package ``websockets``).

    with RealtimeClient("http://127.0.0.1:8000", "cam-1", token="...") as rt:
        rt.update_session(input_audio_transcription={"model": "default"})
        rt.append_frame(jpeg_bytes, timestamp=time.monotonic())
        rt.append_audio(pcm16_bytes, timestamp=t)         # mono little-endian PCM16 at the session's rate
        answer = rt.ask("What is on the slide?")          # pieces arrive as response.text.delta events
        for ev in rt.events(timeout=0.1): ...             # transcript.delta, alert.fired, gap, error...

Sending is thread-safe; a background thread receives events into a bounded queue (oldest dropped, counted
in ``dropped_events``), so a caller that never reads them never stalls the connection.
"""
from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
from typing import Any, Callable, Iterator

logger = logging.getLogger(__name__)

__all__ = ["RealtimeClient", "RealtimeError", "ws_url"]


class RealtimeError(RuntimeError):
    """The server answered with an ``error`` event where a result was expected, or the session closed."""


def ws_url(url: str, stream_id: str) -> str:
    """``http(s)://host:port`` (or ``ws(s)://``) -> the session's ``ws(s)://host:port/v1/realtime?stream=ID``."""
    from urllib.parse import quote, urlsplit

    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"server URL {url!r} must look like http://HOST:PORT (or ws://, https://, wss://)")
    return f"{scheme}://{parts.netloc}/v1/realtime?stream={quote(stream_id, safe='')}"


class RealtimeClient:
    """A realtime session on one stream (see the module docstring). ``connect()`` opens it (or ``with``)."""

    def __init__(self, url: str, stream_id: str, *, token: str | None = None, max_events: int = 10_000,
                 open_timeout: float = 30.0, on_event: Callable[[dict], None] | None = None) -> None:
        if not isinstance(stream_id, str) or not stream_id.strip():
            raise ValueError("stream_id must be a non-empty string, e.g. 'cam-1'")
        self.url = ws_url(url, stream_id.strip())
        self.stream_id = stream_id.strip()
        self.token = token
        self.open_timeout = open_timeout
        self.on_event = on_event
        self.session: dict[str, Any] = {}
        self.dropped_events = 0
        self.close_code: int | None = None
        self._q: queue.Queue = queue.Queue(max_events)
        self._ws = None
        self._rx: threading.Thread | None = None
        self._send_lock = threading.Lock()

    # ---- connection ---------------------------------------------------------------------------
    def connect(self) -> "RealtimeClient":
        """Open the WebSocket (the token as a bearer header); waits for ``session.created``."""
        from websockets.sync.client import connect

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        self._cm = connect(self.url, additional_headers=headers, subprotocols=["realtime"],
                           open_timeout=self.open_timeout, max_size=None, close_timeout=5)
        self._ws = self._cm.__enter__()  # the context-manager form: the direct one is deprecated
        self.close_code = None
        self._rx = threading.Thread(target=self._receive, name="vstream-realtime-rx", daemon=True)
        self._rx.start()
        first = self.wait_for("session.created", timeout=self.open_timeout)
        self.session = first["session"]
        return self

    def _receive(self) -> None:
        from websockets.exceptions import ConnectionClosed

        ws = self._ws
        try:
            for msg in ws:
                ev = json.loads(msg)
                if ev.get("type") in ("session.created", "session.updated"):
                    self.session = ev["session"]
                if self.on_event is not None:
                    self.on_event(ev)
                self._put(ev)
        except ConnectionClosed:
            pass
        finally:
            rcvd = getattr(ws, "close_code", None)
            self.close_code = rcvd if rcvd is not None else 1006
            self._put({"type": "vstream.closed", "code": self.close_code})

    def _put(self, ev: dict) -> None:
        while True:
            try:
                self._q.put_nowait(ev)
                return
            except queue.Full:
                try:
                    self._q.get_nowait()
                    self.dropped_events += 1
                except queue.Empty:
                    pass

    @property
    def open(self) -> bool:
        return self._ws is not None and self.close_code is None

    def close(self) -> None:
        """Close the connection (the stream and its memory stay on the server)."""
        if self._ws is not None:
            self._cm.__exit__(None, None, None)
            if self._rx is not None:
                self._rx.join(5)
            self._ws = None

    def __enter__(self) -> "RealtimeClient":
        return self.connect() if self._ws is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- sending ------------------------------------------------------------------------------
    def send(self, event: dict[str, Any]) -> None:
        """Send one event (a dict with ``type``)."""
        if self._ws is None:
            raise RealtimeError("the session is not connected; call connect() first")
        text = json.dumps(event)
        with self._send_lock:
            self._ws.send(text)

    def update_session(self, **fields: Any) -> None:
        """``session.update``: fps, chunk_seconds, input_audio_transcription, alerts, input_audio_sample_rate..."""
        self.send({"type": "session.update", "session": fields})

    def append_frame(self, image: bytes, timestamp: float, event_id: str | None = None) -> None:
        """``input_video_frame.append``: JPEG or PNG bytes captured at ``timestamp`` (seconds, client clock)."""
        ev = {"type": "input_video_frame.append", "image": base64.b64encode(image).decode("ascii"),
              "timestamp": float(timestamp)}
        if event_id:
            ev["event_id"] = event_id
        self.send(ev)

    def append_audio(self, pcm16: bytes, timestamp: float | None = None) -> None:
        """``input_audio_buffer.append``: mono PCM16 little-endian at the session's sample rate."""
        ev = {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm16).decode("ascii")}
        if timestamp is not None:
            ev["timestamp"] = float(timestamp)
        self.send(ev)

    def create_question(self, text: str) -> None:
        """``conversation.item.create`` with one ``input_text`` user message."""
        self.send({"type": "conversation.item.create",
                   "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})

    def ask(self, question: str, *, timeout: float = 120.0, max_output_tokens: int | None = None,
            on_delta: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Ask and wait for ``response.done``; returns ``{"text", "deltas", "response", "events"}`` (other events
        seen meanwhile stay in ``events`` of the result, and are not lost to ``events()``: they are re-queued)."""
        self.create_question(question)
        ev: dict[str, Any] = {"type": "response.create"}
        if max_output_tokens:
            ev["response"] = {"max_output_tokens": int(max_output_tokens)}
        self.send(ev)
        deltas: list[str] = []
        others: list[dict] = []
        end = time.monotonic() + timeout
        while True:
            e = self.next_event(max(0.0, end - time.monotonic()))
            if e is None:
                raise RealtimeError(f"no response.done within {timeout:g} s")
            if e["type"] == "response.text.delta":
                deltas.append(e["delta"])
                if on_delta is not None:
                    on_delta(e["delta"])
            elif e["type"] == "response.done":
                for o in others:
                    self._put(o)
                return {"text": "".join(deltas), "deltas": deltas, "response": e["response"], "events": others}
            elif e["type"] == "error" and e["error"]["code"] in ("no_question", "response_failed",
                                                                  "conversation_already_has_active_response"):
                raise RealtimeError(e["error"]["message"])
            elif e["type"] == "vstream.closed":
                raise RealtimeError(f"the session closed (code {e['code']}) before the answer")
            else:
                others.append(e)

    # ---- receiving ----------------------------------------------------------------------------
    def next_event(self, timeout: float | None = None) -> dict | None:
        """The next event (None after ``timeout`` s)."""
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def events(self, timeout: float = 0.0) -> Iterator[dict]:
        """Events received so far, then any arriving within ``timeout`` s of the last one."""
        while True:
            e = self.next_event(timeout if timeout > 0 else None) if timeout > 0 else self._nowait()
            if e is None:
                return
            yield e

    def _nowait(self) -> dict | None:
        try:
            return self._q.get_nowait()
        except queue.Empty:
            return None

    def wait_for(self, type_: str, timeout: float = 30.0, keep: bool = True) -> dict:
        """The next event of ``type_`` (others seen meanwhile are re-queued when ``keep``)."""
        end = time.monotonic() + timeout
        seen = []
        try:
            while True:
                e = self.next_event(max(0.0, end - time.monotonic()))
                if e is None:
                    raise RealtimeError(f"no {type_} event within {timeout:g} s")
                if e["type"] == type_:
                    return e
                if e["type"] == "vstream.closed":
                    raise RealtimeError(f"the session closed (code {e['code']}) while waiting for {type_}")
                seen.append(e)
        finally:
            if keep:
                for e in seen:
                    self._put(e)
