"""The one validation layer of the HTTP API: typed request models with bounds, allow-listed options and
config fields, and the source check. Every refusal is an ``APIError`` (a 4xx with a one-line message
that names the problem and the fix, never a server path or an internal detail).

Any route of the app (HTTP or WebSocket) validates with these: ``parse_body`` (size-capped JSON),
``CreateStream`` / ``AskBody`` / ``ChatBody`` (pydantic), ``config_overrides``, ``check_source``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Union
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vstream.serve.limits import ServeLimits


class APIError(Exception):
    """An answer to the client: HTTP ``status``, one-line ``message``, machine ``code``, OpenAI error ``type``."""

    def __init__(self, status: int, message: str, code: str, type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.type = status, message, code, type_


# ---- bodies -------------------------------------------------------------------------------------
def parse_body(raw: bytes, limits: ServeLimits) -> dict[str, Any]:
    """A request body as a JSON object: 413 over ``max_body_bytes``, 400 for anything but strict JSON
    (no NaN/Infinity, no lone surrogates)."""
    if len(raw) > limits.max_body_bytes:
        raise APIError(413, f"the body is {len(raw)} bytes, over the server's limit of {limits.max_body_bytes}; "
                            "send less", "body_too_large")

    def _no_constant(name: str):
        raise ValueError(name)

    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError):
        raise APIError(400, "the body is not valid JSON (numbers must be finite: no NaN or Infinity)",
                       "bad_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object", "bad_json")
    try:  # a lone surrogate ("\ud800") parses but cannot be encoded anywhere later
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "the body holds an invalid unicode character (a lone surrogate); send valid UTF-8 "
                            "text", "bad_json") from None
    return body


def validate(model: type[BaseModel], body: dict[str, Any]) -> Any:
    """``model`` from ``body``, or APIError 400 naming the first bad field (never echoing its value)."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        err = e.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field; see docs/serve.md for the fields of this request"
        raise APIError(400, f"{where}: {msg}", "bad_request") from None


_Finite = dict(allow_inf_nan=False)


class NotifyCondition(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str = Field(min_length=1, max_length=500)
    threshold: float | None = Field(None, ge=0.0, le=1.0, **_Finite)
    cooldown_s: float | None = Field(None, ge=0.0, le=1e7, **_Finite)


class StreamOptions(BaseModel):
    """What a client may set on a stream (``POST /v1/streams`` ``options``)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    notify: Union[str, NotifyCondition, list[Union[str, NotifyCondition]], None] = None
    fps: float | None = Field(None, gt=0.0, le=60.0, **_Finite)
    realtime: bool | None = None
    chunk_seconds: float | None = Field(None, ge=0.1, le=60.0, **_Finite)
    config: dict[str, Any] | None = None

    @field_validator("notify")
    @classmethod
    def _notify_texts(cls, v):
        items = [v] if isinstance(v, (str, NotifyCondition)) else list(v or ())
        for c in items:
            if isinstance(c, str) and not 0 < len(c.strip()) <= 500:
                raise ValueError("a condition is a non-empty text of at most 500 characters")
        return v


class CreateStream(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str = Field(min_length=1, max_length=200, pattern=r"\S")
    source: str = Field(min_length=1, max_length=4096)
    options: StreamOptions | None = None


#: a time a client may give: finite epoch seconds, or a short ISO / relative text ("10m", "yesterday 08:00")
_When = Union[Annotated[float, Field(allow_inf_nan=False)], Annotated[str, Field(min_length=1, max_length=64)]]


class AskBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    question: str = Field(min_length=1, pattern=r"\S")
    max_new_tokens: int | None = Field(None, ge=1)
    history: bool = True
    stream: bool = False
    since: Union[_When, None] = None  # a clock range (vstream.clock.parse_when)
    until: Union[_When, None] = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    role: str = Field(max_length=32)
    content: Union[str, list[dict[str, Any]], None] = None


class ChatBody(BaseModel):
    """The part of OpenAI's chat request a stream can answer; the rest is refused, not ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool | None = False
    n: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, **_Finite)
    top_p: float | None = Field(None, **_Finite)


def cap_tokens(n: int | None, limits: ServeLimits, name: str = "max_new_tokens") -> int | None:
    """``n`` within ``limits.max_new_tokens``, else APIError 400; None (the stream's configured length,
    itself capped by ``config_overrides``) stays None."""
    if n is None:
        return None
    if n > limits.max_new_tokens:
        raise APIError(400, f"{name} is {n}, over the server's limit of {limits.max_new_tokens}; ask for fewer",
                       "max_tokens_too_large")
    return n


def check_question(q: str, limits: ServeLimits) -> str:
    """The question stripped, or APIError 413 when it is longer than the server takes."""
    q = q.strip()
    if not q:
        raise APIError(400, "'question' must be a non-empty string", "bad_question")
    if len(q) > limits.max_question_chars:
        raise APIError(413, f"the question is {len(q)} characters, over the server's limit of "
                            f"{limits.max_question_chars}; ask a shorter question", "question_too_long")
    return q


def chat_question(body: ChatBody, limits: ServeLimits) -> str:
    """The text of the last user message; 400 for image parts and for anything but one choice."""
    if body.n is not None and body.n != 1:
        raise APIError(400, f"n={body.n}: a stream gives one answer per question; send n=1 or leave it out",
                       "unsupported_n")
    for m in body.messages:
        if isinstance(m.content, list):
            for p in m.content:
                if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                    kind = p.get("type") if isinstance(p, dict) else type(p).__name__
                    raise APIError(400, f"message content part of type {kind!r} is not supported: the stream is "
                                        "the video; send text parts only", "unsupported_content")
    for m in reversed(body.messages):
        if m.role == "user":
            c = m.content
            if isinstance(c, list):
                c = " ".join(p["text"] for p in c)
            if isinstance(c, str) and c.strip():
                return check_question(c, limits)
            break
    raise APIError(400, "the last user message has no text: say what to ask the stream", "bad_messages")


# ---- config overrides -----------------------------------------------------------------------------
#: The config fields a client may override per stream: field -> ("int"|"float"|"bool"|choices, lo, hi).
CONFIG_FIELDS: dict[str, tuple[Any, float | None, float | None]] = {
    "sampler.fps": ("float", 0.01, 60.0),
    "sampler.chunk_seconds": ("float", 0.1, 60.0),
    "sampler.realtime": ("bool", None, None),
    "sampler.max_backlog_chunks": ("int", 1, 64),
    "memory.window_chunks": ("int", 1, 256),
    "memory.text_window_tokens": ("int", 0, 8192),
    "memory.prev_text_head": ("int", 0, 8192),
    "memory.prev_text_tail": ("int", 0, 8192),
    "memory.long_term": ("bool", None, None),
    "memory.quantize": (("none", "int8", "int4", "k4v2", "k2v1.58"), None, None),
    "memory.retrieve_k": ("int", 0, 64),
    "memory.retriever": (("internal", "text", "both"), None, None),
    "memory.query_layers": ("float", 0.01, 1.0),
    "memory.max_disk_bytes": ("int", 0, 1 << 40),
    "memory.max_age_s": ("float", 0.0, 1e9),
    "memory.token_drop_floor": ("float", 0.0, 1.0),
    "generation.temperature": ("float", 0.0, 2.0),
    "generation.top_p": ("float", 0.01, 1.0),
    "generation.seed": ("int", 0, 2**31 - 1),
    "responder.commentary_tokens": ("int", 0, 256),
    "responder.notify_threshold": ("float", 0.0, 1.0),
    "responder.notify_cooldown_s": ("float", 0.0, 1e7),
}


def config_overrides(config: dict[str, Any] | None, limits: ServeLimits) -> dict[str, Any]:
    """A new dict of checked overrides: allow-listed fields (``CONFIG_FIELDS``, plus
    ``generation.max_new_tokens`` up to the server's cap), each value of its type and range."""
    fields = dict(CONFIG_FIELDS)
    fields["generation.max_new_tokens"] = ("int", 1, limits.max_new_tokens)
    out: dict[str, Any] = {}
    for key, value in (config or {}).items():
        spec = fields.get(key)
        if spec is None:  # one message for every refused field: nothing about the server is revealed
            raise APIError(400, f"options.config field {str(key)[:80]!r} cannot be set over HTTP; allowed: "
                                f"{', '.join(sorted(fields))}", "bad_config")
        kind, lo, hi = spec
        ok = {"int": isinstance(value, int) and not isinstance(value, bool),
              "float": isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value),
              "bool": isinstance(value, bool)}.get(kind) if isinstance(kind, str) else value in kind
        if ok and lo is not None and not lo <= value <= hi:
            ok = False
        if not ok:
            want = (f"one of {', '.join(kind)}" if not isinstance(kind, str) else
                    f"a{'n' if kind == 'int' else ''} {kind}" + (f" in [{lo:g}, {hi:g}]" if lo is not None else ""))
            raise APIError(400, f"options.config {key!r} must be {want}", "bad_config")
        out[key] = float(value) if kind == "float" else value
    return out


def stream_options(opts: StreamOptions | None, limits: ServeLimits) -> dict[str, Any]:
    """Plain keyword arguments for ``RayFleet.add`` from checked options (config overrides copied)."""
    if opts is None:
        return {}
    out: dict[str, Any] = {}
    if opts.notify is not None:
        items = [opts.notify] if isinstance(opts.notify, (str, NotifyCondition)) else list(opts.notify)
        if len(items) > limits.max_conditions:
            raise APIError(400, f"options.notify has {len(items)} conditions, over the server's limit of "
                                f"{limits.max_conditions}", "bad_options")
        out["notify"] = [c.strip() if isinstance(c, str) else c.model_dump(exclude_none=True) for c in items]
    for k in ("fps", "realtime", "chunk_seconds"):
        if getattr(opts, k) is not None:
            out[k] = getattr(opts, k)
    if opts.config:
        out["config"] = config_overrides(opts.config, limits)
    return out


# ---- sources ------------------------------------------------------------------------------------
_LISTEN_KEYS = {"listen", "mode", "listen_timeout", "localport", "local_port", "localaddr", "rtsp_flags",
                "reuse", "reuse_socket"}
_PLAYLIST_SUFFIXES = {".m3u8", ".m3u", ".ffconcat", ".concat", ".sdp", ".txt", ".pls", ".xspf"}
_PLAYLIST_HEADS = (b"#EXTM3U", b"ffconcat", b"v=0", b"[playlist]", b"<?xml")
_SYNTHETIC_MAX = {"duration_s": 86400.0 * 7, "fps": 60.0}
_SYNTHETIC_MAX_SIDE = 1920


def check_source(source: Any, allow_dir: Path | None, limits: ServeLimits | None = None) -> str:
    """The source to open, or APIError: allow-listed network URLs (nothing that listens), bounded
    ``synthetic:...`` specs, and video files (not playlists) under ``allow_dir``."""
    from vstream.sources import SourceError, is_device, split_synthetic_events, synthetic_kwargs

    limits = limits or ServeLimits()
    if not isinstance(source, str) or not source.strip():
        raise APIError(400, "'source' must be a non-empty string: a network URL, 'synthetic:...' or a file name "
                            "inside the server's allowed directory", "bad_source")
    source = source.strip()
    if any(ord(c) < 32 for c in source):
        raise APIError(400, "'source' holds control characters; give a plain URL or file name", "bad_source")
    if source == "synthetic" or source.startswith("synthetic:"):
        spec, events = split_synthetic_events(source)
        try:
            kw = synthetic_kwargs(spec)
        except SourceError as e:
            raise APIError(400, str(e), "bad_source") from None
        for k, hi in _SYNTHETIC_MAX.items():
            v = kw.get(k)
            endless = k == "duration_s" and v == math.inf
            if v is not None and not endless and not (math.isfinite(v) and 0 < v <= hi):
                raise APIError(400, f"synthetic {k} must be in (0, {hi:g}] (duration may be 'inf')", "bad_source")
        w, h = kw.get("size", (64, 64))
        if not (0 < w <= _SYNTHETIC_MAX_SIDE and 0 < h <= _SYNTHETIC_MAX_SIDE):
            raise APIError(400, f"synthetic size must be at most {_SYNTHETIC_MAX_SIDE}x{_SYNTHETIC_MAX_SIDE}",
                           "bad_source")
        if events is None:
            return spec
        path = _allowed_file(events, allow_dir, "synthetic events file", video=False)
        return f"{spec},events={path}" if ":" in spec else f"{spec}:events={path}"
    if "://" in source:
        return _check_url(source, limits)
    if is_device(source) or source.startswith("/dev/"):
        raise APIError(403, "source is a device of the server; only network URLs, 'synthetic:...' and files in the "
                            "allowed directory can be opened over HTTP", "source_not_allowed")
    return _allowed_file(source, allow_dir, "file source")


def _check_url(source: str, limits: ServeLimits) -> str:
    try:
        parts = urlsplit(source)
        parts.port  # noqa: B018  (a bad port raises here)
    except ValueError:
        raise APIError(400, "the source URL does not parse; give e.g. rtsp://host:554/stream", "bad_source") from None
    scheme = parts.scheme.lower()
    if scheme not in limits.schemes:
        raise APIError(400, f"URL scheme {scheme[:20]!r} is not allowed here; use one of "
                            f"{', '.join(limits.schemes)}", "bad_source")
    if not parts.hostname:
        raise APIError(400, "the source URL names no host; give e.g. rtsp://host:554/stream", "bad_source")
    keys = {k.lower() for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
    if keys & _LISTEN_KEYS or "listen" in parts.query.lower():
        raise APIError(400, "listen / mode options in a source URL are refused: the server only connects to "
                            "sources, it never listens for them", "bad_source")
    return source


def _allowed_file(name: str, allow_dir: Path | None, what: str, *, video: bool = True) -> str:
    """``name`` resolved (symlinks, ``..``) inside ``allow_dir`` and not a playlist, or APIError 403 / 400."""
    if allow_dir is None:
        raise APIError(403, f"{what} refused: this server opens no files (start it with --allow-dir DIR to allow "
                            "files inside DIR)", "source_not_allowed")
    p = Path(name)
    try:
        real = (p if p.is_absolute() else allow_dir / p).resolve()
    except (OSError, RuntimeError, ValueError):
        raise APIError(400, f"{what} is not a usable file name", "bad_source") from None
    if real != allow_dir and allow_dir not in real.parents:
        raise APIError(403, f"{what} is outside the allowed directory; give a path inside it", "source_not_allowed")
    if not real.is_file():
        raise APIError(400, f"{what} does not exist in the allowed directory", "bad_source")
    if video:
        try:
            with open(real, "rb") as f:
                head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
        except OSError:
            raise APIError(400, f"{what} cannot be read", "bad_source") from None
        if real.suffix.lower() in _PLAYLIST_SUFFIXES or head.startswith(_PLAYLIST_HEADS):
            raise APIError(400, f"{what} is a playlist or list of files; give a video file (playlists could name "
                                "files outside the allowed directory)", "source_not_allowed")
    return str(real)


def redact_source(source: str) -> str:
    """A source as clients may see it: no password in URLs."""
    from vstream.sources.errors import _redact

    return _redact(source)



def time_range(query: Any, since: Any = None, until: Any = None) -> dict[str, Any]:
    """``{"since", "until"}`` from a body (given) or the ``query`` mapping, checked now: an unreadable time or an
    empty range is a 400 naming it (the stream's own time zone is applied later, by the fleet)."""
    from vstream.clock import parse_range

    when = {"since": since if since is not None else query.get("since"),
            "until": until if until is not None else query.get("until")}
    for k, v in when.items():
        if isinstance(v, str) and len(v) > 64:
            raise APIError(400, f"{k!r} is longer than 64 characters", "bad_request")
    try:
        parse_range(**when)
    except ValueError as e:
        raise APIError(400, " ".join(str(e).split()), "bad_time") from None
    return when
