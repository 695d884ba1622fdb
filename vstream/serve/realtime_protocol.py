"""The realtime protocol's limits, message checks and event shapes (``WS /v1/realtime``; see docs/serve.md).

Pure functions, no I/O: ``vstream.serve.realtime`` runs the session, this module says what a client
message means (or which ``ProtocolError`` it is) and how outgoing events look. Event names and shapes
follow the OpenAI Realtime API where one exists; vstream's own events are listed in ``VSTREAM_EVENTS``.
"""
from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from typing import Any

CLIENT_EVENTS = ("session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
                 "input_audio_buffer.clear", "conversation.item.create", "response.create", "response.cancel",
                 "input_video_frame.append")
VSTREAM_EVENTS = ("input_video_frame.append", "commentary.delta", "alert.fired", "transcript.delta", "gap",
                  "stream.state")
SAMPLE_RATES = (16000, 24000)
CREATION_FIELDS = ("fps", "chunk_seconds", "input_audio_transcription", "alerts")  # fixed once the stream exists
SESSION_FIELDS = CREATION_FIELDS + ("input_audio_format", "input_audio_sample_rate", "modalities", "instructions",
                                    "max_response_output_tokens", "stats_interval_s", "commentary")
COMMENTARY_PROMPT = "In one short sentence, what is happening now?"


@dataclass
class RealtimeLimits:
    """Per-session limits of the realtime endpoint (the transport itself refuses messages over 16 MiB)."""

    max_message_bytes: int = 12 * 2**20  # one JSON message as received
    max_frame_bytes: int = 8 * 2**20  # one decoded image
    max_fps: float = 30.0  # frames per second of wall time, per session (1 s windows)
    max_sessions_per_token: int = 8
    idle_timeout_s: float = 60.0  # no message for this long ends the session
    queue_size: int = 32  # frames / audio waiting to go to the worker; more are dropped (counted)
    out_queue_size: int = 256  # events waiting to go to the client; more are dropped (counted)
    max_skew_s: float = 5.0  # client stamps may run ahead of the wall clock by this much
    max_lag_s: float = 60.0  # ... and fall behind it by this much
    batch: int = 8  # frames per call to the worker

    def check(self) -> "RealtimeLimits":
        for k, v in vars(self).items():
            if not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"realtime limit {k} must be a positive number, got {v!r}")
        return self


def limits_from_env() -> RealtimeLimits:
    """``RealtimeLimits`` with the overrides in ``$VSTREAM_REALTIME_LIMITS`` (JSON, e.g. ``{"max_fps": 10}``)."""
    import os

    text = os.environ.get("VSTREAM_REALTIME_LIMITS")
    if not text:
        return RealtimeLimits()
    try:
        over = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError("VSTREAM_REALTIME_LIMITS must be a JSON object, e.g. '{\"max_fps\": 10}'") from None
    known = set(RealtimeLimits.__dataclass_fields__)
    if not isinstance(over, dict) or set(over) - known:
        raise ValueError(f"VSTREAM_REALTIME_LIMITS keys must be among {', '.join(sorted(known))}")
    return RealtimeLimits(**over).check()


class ProtocolError(ValueError):
    """A bad client message: becomes an ``error`` event; the session goes on."""

    def __init__(self, code: str, message: str, event_id: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.event_id = code, message, event_id


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def event(type_: str, **fields: Any) -> dict[str, Any]:
    """An outgoing event: ``{"type", "event_id", ...}``."""
    return {"type": type_, "event_id": new_id("event"), **fields}


def error_event(code: str, message: str, event_id: str | None = None, type_: str = "invalid_request_error") -> dict:
    """The OpenAI Realtime ``error`` event."""
    return event("error", error={"type": type_, "code": code, "message": message, "param": None,
                                 "event_id": event_id})


def parse(text: str | bytes, limits: RealtimeLimits) -> dict[str, Any]:
    """A client message as a dict with a known ``type``; ProtocolError otherwise."""
    if len(text) > limits.max_message_bytes:
        raise ProtocolError("message_too_large", f"the message has {len(text)} bytes, more than the "
                                                 f"{limits.max_message_bytes} allowed; send smaller frames")
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ProtocolError("invalid_json", "the message is not valid JSON; send one JSON object per message") from None
    if not isinstance(msg, dict):
        raise ProtocolError("invalid_event", "a message must be a JSON object with a 'type'")
    t = msg.get("type")
    eid = msg.get("event_id") if isinstance(msg.get("event_id"), str) else None
    if t not in CLIENT_EVENTS:
        raise ProtocolError("unknown_event", f"unknown event type {t!r}; use one of {', '.join(CLIENT_EVENTS)}", eid)
    return msg


def b64(value: Any, what: str, max_bytes: int, eid: str | None) -> bytes:
    """Base64 text -> bytes, within ``max_bytes``."""
    if not isinstance(value, str) or not value:
        raise ProtocolError("invalid_value", f"'{what}' must be a non-empty base64 string", eid)
    if len(value) * 3 // 4 > max_bytes + 3:
        raise ProtocolError("frame_too_large" if what == "image" else "audio_too_large",
                            f"'{what}' has about {len(value) * 3 // 4} bytes, more than the {max_bytes} allowed; "
                            "send it smaller", eid)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("invalid_base64", f"'{what}' is not valid base64", eid) from None


def timestamp(value: Any, eid: str | None, required: bool = True) -> float | None:
    """A client capture time in seconds (finite number)."""
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) > 1e12:
        raise ProtocolError("invalid_timestamp", "'timestamp' must be the capture time in seconds (a number) on the "
                                                 "client's monotonic clock", eid)
    return float(value)


def frame_item(msg: dict, limits: RealtimeLimits) -> tuple[bytes, float]:
    """``input_video_frame.append`` -> (image bytes, client time); the image is checked to be JPEG or PNG."""
    eid = msg.get("event_id")
    data = b64(msg.get("image"), "image", limits.max_frame_bytes, eid)
    if len(data) > limits.max_frame_bytes:
        raise ProtocolError("frame_too_large", f"the frame has {len(data)} bytes, more than the "
                                               f"{limits.max_frame_bytes} allowed; send it smaller", eid)
    if data[:3] != b"\xff\xd8\xff" and data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ProtocolError("invalid_frame", "the frame is not a JPEG or PNG image; send JPEG or PNG bytes, "
                                             "base64", eid)
    return data, timestamp(msg.get("timestamp"), eid)


def audio_item(msg: dict, limits: RealtimeLimits) -> tuple[bytes, float | None]:
    """``input_audio_buffer.append`` -> (PCM16 bytes, client time or None)."""
    eid = msg.get("event_id")
    data = b64(msg.get("audio"), "audio", limits.max_message_bytes, eid)
    if len(data) % 2:
        raise ProtocolError("invalid_audio", "'audio' must be PCM16 (an even number of bytes)", eid)
    return data, timestamp(msg.get("timestamp"), eid, required=False)


def question_of(msg: dict) -> str:
    """The text of a ``conversation.item.create`` user message."""
    eid = msg.get("event_id")
    item = msg.get("item")
    if not isinstance(item, dict) or item.get("type", "message") != "message" or item.get("role", "user") != "user":
        raise ProtocolError("invalid_item", "'item' must be {type: 'message', role: 'user', content: "
                                            "[{type: 'input_text', text: ...}]}", eid)
    parts = item.get("content")
    if not isinstance(parts, list):
        raise ProtocolError("invalid_item", "'item.content' must be a list of {type: 'input_text', text}", eid)
    text = " ".join(p.get("text", "") for p in parts
                    if isinstance(p, dict) and p.get("type") in ("input_text", "text") and isinstance(p.get("text"), str))
    if not text.strip():
        raise ProtocolError("invalid_item", "the message has no input_text: say what to ask the stream", eid)
    return text.strip()


def session_changes(msg: dict, started: bool) -> dict[str, Any]:
    """The fields of a ``session.update`` (checked); creation fields after the stream started: error."""
    eid = msg.get("event_id")
    s = msg.get("session")
    if not isinstance(s, dict):
        raise ProtocolError("invalid_session", "'session' must be an object", eid)
    unknown = sorted(set(s) - set(SESSION_FIELDS) - {"type", "object", "id", "model"})
    if unknown:
        raise ProtocolError("unknown_parameter", f"unknown session field(s) {', '.join(unknown)}; known: "
                                                 f"{', '.join(SESSION_FIELDS)}", eid)
    late = [k for k in CREATION_FIELDS if k in s] if started else []
    if late:
        raise ProtocolError("session_fixed", f"{', '.join(late)} cannot change once the stream has started; "
                                             "open a session on a new stream id", eid)
    out = {k: s[k] for k in SESSION_FIELDS if k in s}
    for k in ("fps", "chunk_seconds", "stats_interval_s"):
        if k in out and (isinstance(out[k], bool) or not isinstance(out[k], (int, float)) or not out[k] > 0):
            raise ProtocolError("invalid_value", f"'{k}' must be a positive number, got {out[k]!r}", eid)
    if "input_audio_format" in out and out["input_audio_format"] != "pcm16":
        raise ProtocolError("invalid_value", "'input_audio_format' must be 'pcm16' (mono, little-endian)", eid)
    if "input_audio_sample_rate" in out and out["input_audio_sample_rate"] not in SAMPLE_RATES:
        raise ProtocolError("invalid_value", f"'input_audio_sample_rate' must be one of {SAMPLE_RATES}", eid)
    if "commentary" in out and not isinstance(out["commentary"], bool):
        raise ProtocolError("invalid_value", "'commentary' must be true or false", eid)
    al = out.get("alerts")
    if al is not None and not (isinstance(al, list) and all(isinstance(a, str) and a.strip() for a in al)):
        raise ProtocolError("invalid_value", "'alerts' must be a list of conditions (strings)", eid)
    mot = out.get("max_response_output_tokens")
    if mot is not None and mot != "inf" and (isinstance(mot, bool) or not isinstance(mot, int) or mot < 1):
        raise ProtocolError("invalid_value", "'max_response_output_tokens' must be an integer >= 1 or 'inf'", eid)
    return out
