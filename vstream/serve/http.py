"""The HTTP API of a RayFleet, as a FastAPI app deployed on Ray Serve (``vstream serve``).

Routes (JSON; errors are ``{"error": {"message", "type", "code"}}`` with a 4xx/5xx status, the shape
OpenAI clients read):

    GET    /v1/health                    open (no token): workers alive, streams waiting
    POST   /v1/streams                   {"id", "source", "options": {notify, fps, realtime, chunk_seconds, config}}
    GET    /v1/streams                   every stream and where it runs
    GET    /v1/streams/{id}              placement and statistics
    DELETE /v1/streams/{id}
    POST   /v1/streams/{id}/ask          {"question", "max_new_tokens", "history", "stream"}; stream=true: SSE
                                         (``event: piece`` ... ``event: answer`` with the whole answer)
    GET    /v1/events?since=N&follow=1   SSE, one ``data:`` JSON event each, ``id:`` = seq (Last-Event-ID works)
    GET    /v1/search?q=...&top=3        which streams saw it, ranked, with evidence
    GET    /v1/models                    streams, as OpenAI "models"
    POST   /v1/chat/completions          OpenAI-compatible; ``model`` is a stream id; the last user message is
                                         the question (the stream's memory keeps its own history); stream true/false
    GET    /metrics                      Prometheus text
    WS     /v1/realtime?stream=ID        push frames and audio, ask, hear events (vstream.serve.realtime)

Security: a bearer token (``Authorization: Bearer <token>``) on everything but /v1/health when the server
has one. Sources are limited to network URLs, ``synthetic:`` specs and files inside the allow-listed
directory (none by default: file sources are refused until the server is started with ``--allow-dir``);
camera devices and other server paths are refused.
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

logger = logging.getLogger(__name__)

app = FastAPI(title="vstream", version="1", docs_url=None, redoc_url=None)
_STATE: dict[str, Any] = {}  # fleet (RayFleet client), token, allow_dir: set by configure() in each process

_STREAM_OPTIONS = {"notify", "fps", "realtime", "chunk_seconds", "config"}


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str, type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.type = status, message, code, type_


def configure(fleet, *, token: str | None = None, allow_dir: str | Path | None = None) -> None:
    """Point this process's app at a RayFleet client, with the server's token and allow-listed directory."""
    _STATE.update(fleet=fleet, token=token or None,
                  allow_dir=Path(allow_dir).resolve() if allow_dir is not None else None)


def check_source(source: Any, allow_dir: Path | None) -> str:
    """The source to open, or APIError: network URLs, ``synthetic:...`` and files under ``allow_dir`` only."""
    from vstream.sources import SourceError, is_device, is_url, split_synthetic_events, synthetic_kwargs

    if not isinstance(source, str) or not source.strip():
        raise APIError(400, "'source' must be a non-empty string: a network URL, 'synthetic:...' or a file name "
                            "inside the server's allowed directory", "bad_source")
    source = source.strip()
    if source == "synthetic" or source.startswith("synthetic:"):
        spec, events = split_synthetic_events(source)
        try:
            synthetic_kwargs(spec)
        except SourceError as e:
            raise APIError(400, str(e), "bad_source") from None
        if events is None:
            return spec
        path = _allowed_file(events, allow_dir, "synthetic events file")  # a server file like any other
        return f"{spec},events={path}" if ":" in spec else f"{spec}:events={path}"
    if is_url(source):
        return source
    if is_device(source):
        raise APIError(403, f"source {source!r} is a device of the server; only network URLs, 'synthetic:...' "
                            "and files in the allowed directory can be opened over HTTP", "source_not_allowed")
    if "://" in source:
        raise APIError(400, f"unsupported URL scheme in {source!r}; use rtsp, rtmp, srt, udp, tcp, http or https",
                       "bad_source")
    return _allowed_file(source, allow_dir, "file source")


def _allowed_file(name: str, allow_dir: Path | None, what: str) -> str:
    """``name`` resolved (symlinks, ``..``) inside ``allow_dir``, or APIError 403 / 400."""
    if allow_dir is None:
        raise APIError(403, f"{what} {name!r} refused: this server opens no files (start it with "
                            "--allow-dir DIR to allow files inside DIR)", "source_not_allowed")
    p = Path(name)
    real = (p if p.is_absolute() else allow_dir / p).resolve()
    if real != allow_dir and allow_dir not in real.parents:
        raise APIError(403, f"{what} {name!r} is outside the allowed directory {allow_dir}; give a path "
                            "inside it", "source_not_allowed")
    if not real.is_file():
        raise APIError(400, f"{what} {name!r} does not exist in the allowed directory", "bad_source")
    return str(real)


def _fleet():
    f = _STATE.get("fleet")
    if f is None:
        raise APIError(503, "the server is starting; try again", "not_ready", "server_error")
    return f


def _authorize(request: Request) -> None:
    token = _STATE.get("token")
    if token is None:
        return
    got = request.headers.get("authorization", "")
    scheme, _, value = got.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise APIError(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'", "unauthorized",
                       "authentication_error")


def _error(status: int, message: str, code: str, type_: str = "invalid_request_error") -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": {"message": message, "type": type_, "code": code}}, status_code=status,
                        headers=headers)


@app.exception_handler(APIError)
def _api_error(_request: Request, e: APIError) -> JSONResponse:
    return _error(e.status, e.message, e.code, e.type)


@app.exception_handler(ValueError)
def _value_error(_request: Request, e: ValueError) -> JSONResponse:
    msg = " ".join(str(e).split())
    if msg.startswith("no stream"):
        return _error(404, msg, "stream_not_found")
    if "already exists" in msg:
        return _error(409, msg, "stream_exists")
    return _error(400, msg, "bad_request")


@app.exception_handler(RuntimeError)
def _runtime_error(_request: Request, e: RuntimeError) -> JSONResponse:
    return _error(503, " ".join(str(e).split()), "unavailable", "server_error")


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise APIError(400, "the body is not valid JSON", "bad_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object", "bad_json")
    return body


def _sse(data: Any, event: str | None = None, id_: Any = None) -> str:
    out = ""
    if id_ is not None:
        out += f"id: {id_}\n"
    if event:
        out += f"event: {event}\n"
    return out + f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def _sse_response(it: Iterator[str]) -> StreamingResponse:
    return StreamingResponse(it, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _int(v: Any, name: str, lo: int = 0) -> int | None:
    if v is None:
        return None
    try:
        n = int(v)
    except (TypeError, ValueError):
        raise APIError(400, f"{name!r} must be an integer, got {v!r}", "bad_request") from None
    if n < lo:
        raise APIError(400, f"{name!r} must be >= {lo}, got {n}", "bad_request")
    return n


def _flag(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.lower() in ("1", "true", "yes"))


# ---- routes -------------------------------------------------------------------------------------
@app.get("/v1/health")
def health() -> JSONResponse:
    try:
        h = _fleet().health()
    except APIError:
        raise
    except Exception as e:  # the controller is gone
        return JSONResponse({"ok": False, "error": str(e)}, status_code=503)
    return JSONResponse(h, status_code=200 if h["workers_alive"] > 0 else 503)


@app.post("/v1/streams", status_code=201)
async def create_stream(request: Request):
    _authorize(request)
    body = await _json(request)
    sid = body.get("id")
    if not isinstance(sid, str) or not sid.strip() or len(sid) > 200:
        raise APIError(400, "'id' must be a non-empty string of at most 200 characters, e.g. \"cam-1\"", "bad_id")
    source = check_source(body.get("source"), _STATE.get("allow_dir"))
    options = body.get("options") or {}
    if not isinstance(options, dict) or set(options) - _STREAM_OPTIONS:
        raise APIError(400, f"'options' is an object with keys among {', '.join(sorted(_STREAM_OPTIONS))}; got "
                            f"{sorted(options) if isinstance(options, dict) else options!r}", "bad_options")
    from starlette.concurrency import run_in_threadpool

    placed = await run_in_threadpool(_fleet().add, sid.strip(), source, **options)
    return JSONResponse({"id": sid.strip(), "source": source, **placed}, status_code=201)


@app.get("/v1/streams")
def list_streams(request: Request):
    _authorize(request)
    return {"streams": [{"id": k, **v} for k, v in _fleet().placement().items()]}


@app.get("/v1/streams/{stream_id}")
def get_stream(stream_id: str, request: Request):
    _authorize(request)
    f = _fleet()
    placement = f.placement()
    if stream_id not in placement:
        raise ValueError(f"no stream {stream_id!r}; streams: {', '.join(sorted(placement)) or 'none'}")
    st = f.stats()["streams"].get(stream_id, {})
    return {"id": stream_id, **placement[stream_id], "stats": st}


@app.delete("/v1/streams/{stream_id}")
def delete_stream(stream_id: str, request: Request):
    _authorize(request)
    _fleet().remove(stream_id)
    return {"id": stream_id, "removed": True}


@app.post("/v1/streams/{stream_id}/ask")
async def ask(stream_id: str, request: Request):
    _authorize(request)
    body = await _json(request)
    q = body.get("question")
    if not isinstance(q, str) or not q.strip():
        raise APIError(400, "'question' must be a non-empty string", "bad_question")
    mnt = _int(body.get("max_new_tokens"), "max_new_tokens", 1)
    history = body.get("history", True) is not False
    f = _fleet()
    from starlette.concurrency import run_in_threadpool

    if not (_flag(body.get("stream")) or _flag(request.query_params.get("stream"))):
        ans = await run_in_threadpool(f.ask, stream_id, q, max_new_tokens=mnt, history=history)
        return ans.to_dict()
    f.actor_of(stream_id)  # 404 now, before the stream starts

    def events() -> Iterator[str]:
        try:
            for item in f.ask_stream(stream_id, q, max_new_tokens=mnt, history=history):
                yield _sse({"text": item}, "piece") if isinstance(item, str) else _sse(item.to_dict(), "answer")
        except Exception as e:  # headers are sent: report in-band
            yield _sse({"error": {"message": " ".join(str(e).split()), "type": "server_error"}}, "error")

    return _sse_response(events())


@app.get("/v1/events")
def events(request: Request, since: int | None = None, follow: str = "true"):
    _authorize(request)
    f = _fleet()
    start = since if since is not None else 0
    last = request.headers.get("last-event-id")
    if last is not None and last.strip().lstrip("-").isdigit():
        start = int(last) + 1
    keep = _flag(follow)

    def gen() -> Iterator[str]:
        for e in _event_feed(f, start, keep):
            yield ": keep-alive\n\n" if e is None else _sse(e, id_=e["seq"])

    return _sse_response(gen())


def _event_feed(f, start: int, follow: bool) -> Iterator[dict | None]:
    nxt = start
    while True:
        batch = f._call("events_since", nxt, 1.0 if follow else 0.0)
        for e in batch:
            nxt = e["seq"] + 1
            yield e
        if not batch:
            if not follow:
                return
            yield None  # a comment line now and then: proxies keep the connection, a gone client is noticed


@app.get("/v1/search")
def search(request: Request, q: str = "", top: int = 3, evidence: int = 3):
    _authorize(request)
    if not q.strip():
        raise APIError(400, "give the query as ?q=...", "bad_query")
    return {"query": q, "results": [h.to_dict() for h in _fleet().ask_all(q, top=top, evidence=evidence)]}


@app.get("/v1/models")
def models(request: Request):
    _authorize(request)
    f = _fleet()
    return {"object": "list", "data": [{"id": sid, "object": "model", "created": 0, "owned_by": "vstream"}
                                       for sid in sorted(f.placement())]}


@app.post("/v1/chat/completions")
async def chat_completions(request: Request):
    _authorize(request)
    body = await _json(request)
    sid = body.get("model")
    if not isinstance(sid, str) or not sid:
        raise APIError(400, "'model' must be the id of a stream (see GET /v1/models)", "bad_model")
    question = _last_user_text(body.get("messages"))
    mnt = _int(body.get("max_completion_tokens", body.get("max_tokens")), "max_tokens", 1)
    f = _fleet()
    placement = f.placement()
    if sid not in placement:
        known = ", ".join(sorted(placement)) or "none"
        raise APIError(404, f"the model {sid!r} does not exist: models are stream ids ({known})", "model_not_found")
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    from starlette.concurrency import run_in_threadpool

    if not _flag(body.get("stream")):
        ans = await run_in_threadpool(f.ask, sid, question, max_new_tokens=mnt)
        return {"id": cid, "object": "chat.completion", "created": created, "model": sid,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": ans.text},
                             "finish_reason": _finish(ans, mnt)}],
                "usage": {"prompt_tokens": 0, "completion_tokens": ans.tokens, "total_tokens": ans.tokens},
                "vstream": {"asked_at_s": ans.asked_at_s, "evidence": [e.to_dict() for e in ans.evidence],
                            "ttft_s": ans.ttft_s}}

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        return _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": sid,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})

    def gen() -> Iterator[str]:
        yield chunk({"role": "assistant"})
        try:
            for item in f.ask_stream(sid, question, max_new_tokens=mnt):
                if isinstance(item, str):
                    yield chunk({"content": item})
                else:
                    yield chunk({}, _finish(item, mnt), vstream={"asked_at_s": item.asked_at_s,
                                                                 "evidence": [e.to_dict() for e in item.evidence]})
        except Exception as e:
            yield _sse({"error": {"message": " ".join(str(e).split()), "type": "server_error"}})
        yield "data: [DONE]\n\n"

    return _sse_response(gen())


def _finish(ans, mnt: int | None) -> str:
    return "length" if mnt is not None and ans.tokens >= mnt else "stop"


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list of {role, content}", "bad_messages")
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, list):  # content parts: the text ones
                c = " ".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")
            if isinstance(c, str) and c.strip():
                return c.strip()
            break
    raise APIError(400, "the last user message has no text: say what to ask the stream", "bad_messages")


@app.get("/metrics")
def metrics(request: Request):
    _authorize(request)
    from vstream.serve.metrics import CONTENT_TYPE, render

    return PlainTextResponse(render(_fleet().stats()), media_type=CONTENT_TYPE)


from vstream.serve.realtime import register as _register_realtime  # noqa: E402

_register_realtime(app)  # WS /v1/realtime (vstream.serve.realtime)


# ---- Ray Serve ----------------------------------------------------------------------------------
def deploy(controller_name: str, *, namespace: str = "vstream", token: str | None = None,
           allow_dir: str | None = None, host: str = "127.0.0.1", port: int = 8000, name: str = "vstream"):
    """Start Serve's HTTP proxy on ``host:port`` and run this app there, talking to the named controller."""
    from ray import serve

    from vstream.serve.client import RayFleet

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
    @serve.ingress(app)
    class VstreamAPI:
        def __init__(self, controller_name: str, namespace: str, token: str | None, allow_dir: str | None) -> None:
            configure(RayFleet.attach(controller_name, namespace), token=token, allow_dir=allow_dir)

    serve.start(http_options={"host": host, "port": int(port)})
    serve.run(VstreamAPI.bind(controller_name, namespace, token, allow_dir), name=name, route_prefix="/",
              blocking=False)
    return f"http://{host}:{port}"


def read_token(path: str | os.PathLike) -> str:
    """The token in a file (surrounding whitespace removed); ValueError when the file is empty."""
    tok = Path(path).read_text(encoding="utf-8").strip()
    if not tok:
        raise ValueError(f"token file {path} is empty; put a secret on its first line")
    return tok
