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
has one, checked before anything else in the request is looked at. Requests are validated by
vstream.serve.validation and bounded by vstream.serve.limits.ServeLimits (docs/serve.md, "Limits and
security"); errors name no server path and no internal detail (those go to the server log).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from vstream.serve.followers import FollowerBudget
from vstream.serve.limits import LimitExceeded, ServeLimits
from vstream.serve.realtime import register as register_realtime
from vstream.serve.state import STATE
from vstream.serve.validation import (APIError, AskBody, ChatBody, CreateStream, cap_tokens, chat_question,
                                      check_question, check_source, parse_body, redact_source, stream_options,
                                      time_range, validate)

logger = logging.getLogger(__name__)

app = FastAPI(title="vstream", version="1", docs_url=None, redoc_url=None, openapi_url=None)
_STATE = STATE  # fleet, token, allow_dir, limits, followers: set by configure() in each process

__all__ = ["APIError", "app", "authorize", "check_source", "configure", "current_limits", "deploy", "read_body"]


def configure(fleet, *, token: str | None = None, allow_dir: str | Path | None = None,
              limits: ServeLimits | dict | None = None) -> None:
    """Point this process's app at a RayFleet client, with the server's token, allowed directory and limits."""
    lim = limits if isinstance(limits, ServeLimits) else ServeLimits.from_dict(limits)
    _STATE.update(fleet=fleet, token=token or None, limits=lim.validate(),
                  allow_dir=Path(allow_dir).resolve() if allow_dir is not None else None,
                  followers=FollowerBudget(lim), event_log=None)


def current_limits() -> ServeLimits:
    """The limits this process's app was configured with (defaults before ``configure``)."""
    return _STATE.get("limits") or ServeLimits()


def _fleet():
    f = _STATE.get("fleet")
    if f is None:
        raise APIError(503, "the server is starting; try again", "not_ready", "server_error")
    return f


def authorize(headers) -> str:
    """The caller's key for per-client limits (a hash of its token); APIError 401 for a missing/wrong token."""
    token = _STATE.get("token")
    if token is None:
        return "anonymous"
    got = headers.get("authorization", "")
    scheme, _, value = got.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise APIError(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'", "unauthorized",
                       "authentication_error")
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _authorize(request: Request) -> str:
    return authorize(request.headers)


async def read_body(request: Request) -> dict[str, Any]:
    """The JSON object of a request, read at most ``max_body_bytes`` far (413 beyond; 400 for bad JSON)."""
    lim = current_limits()
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > lim.max_body_bytes:
        raise APIError(413, f"the body is {declared} bytes, over the server's limit of {lim.max_body_bytes}; "
                            "send less", "body_too_large")
    buf = bytearray()
    async for part in request.stream():
        buf += part
        if len(buf) > lim.max_body_bytes:
            raise APIError(413, f"the body is over the server's limit of {lim.max_body_bytes} bytes; send less",
                           "body_too_large")
    return parse_body(bytes(buf), lim)


def _error(status: int, message: str, code: str, type_: str = "invalid_request_error") -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": {"message": message, "type": type_, "code": code}}, status_code=status,
                        headers=headers)


@app.exception_handler(APIError)
def _api_error(_request: Request, e: APIError) -> JSONResponse:
    return _error(e.status, e.message, e.code, e.type)


@app.exception_handler(RequestValidationError)
def _request_invalid(_request: Request, e: RequestValidationError) -> JSONResponse:
    return _error(400, "the request's parameters are not valid; see docs/serve.md", "bad_request")


@app.exception_handler(LimitExceeded)
def _limit(_request: Request, e: LimitExceeded) -> JSONResponse:
    return _error(e.status, " ".join(str(e).split()), e.code)


#: messages of the fleet that clients may read as they are (they name no path and no internal detail)
_CLIENT_SAFE = ("no stream ", "stream ", "the question is empty", "no live worker", "the server is starting")


@app.exception_handler(ValueError)
def _value_error(_request: Request, e: ValueError) -> JSONResponse:
    from vstream.sources.errors import SourceError

    msg = " ".join(str(e).split())
    if isinstance(e, SourceError):  # its text tells a prober what is on the server's network: log it only
        logger.warning("source refused: %s", msg)
        return _error(400, "cannot open source: check that the URL or file serves video", "cannot_open_source")
    if msg.startswith("no stream"):
        return _error(404, msg, "stream_not_found")
    if "already exists" in msg:
        return _error(409, msg, "stream_exists")
    if "memory dir" in msg and "holds" in msg:
        return _error(409, "this stream id's memory holds another source; remove it from storage or pick "
                           "another id", "source_mismatch")
    logger.warning("request refused: %s", msg)
    if msg.startswith(_CLIENT_SAFE) and "/" not in msg:
        return _error(400, msg, "bad_request")
    return _error(400, "the request was refused (details in the server log); check it against docs/serve.md",
                  "bad_request")


@app.exception_handler(RuntimeError)
def _runtime_error(_request: Request, e: RuntimeError) -> JSONResponse:
    msg = " ".join(str(e).split())
    logger.error("request failed: %s", msg)
    if "no live worker" in msg or msg.startswith("the actor of"):
        return _error(503, msg, "unavailable", "server_error")
    return _error(503, "the server could not answer now; try again", "unavailable", "server_error")


@app.exception_handler(Exception)
def _internal(_request: Request, e: Exception) -> JSONResponse:
    if type(e).__module__.startswith("ray"):  # the controller or a worker is restarting
        logger.warning("fleet unavailable: %s", " ".join(str(e).split())[:300])
        return _error(503, "the server is recovering a process; try again shortly", "unavailable", "server_error")
    logger.exception("internal error: %s", e)
    return _error(500, "internal error (details in the server log)", "internal_error", "server_error")


def _sse(data: Any, event: str | None = None, id_: Any = None) -> str:
    out = ""
    if id_ is not None:
        out += f"id: {id_}\n"
    if event:
        out += f"event: {event}\n"
    return out + f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def _sse_response(it: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(it, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _query_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    v = request.query_params.get(name)
    if v is None or v == "":
        return default
    try:
        n = int(v)
    except ValueError:
        raise APIError(400, f"{name!r} must be an integer", "bad_request") from None
    if not lo <= n <= hi:
        raise APIError(400, f"{name!r} must be in [{lo}, {hi}]", "bad_request")
    return n


def _flag(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.lower() in ("1", "true", "yes"))


def _in_band_error(e: BaseException) -> dict:
    """What a stream that already sent its headers says about a failure (no internal detail)."""
    if isinstance(e, LimitExceeded) or (isinstance(e, ValueError) and str(e).startswith(("no stream", "the question"))):
        msg, kind = " ".join(str(e).split()), "invalid_request_error"
    else:
        logger.error("streamed answer failed: %s", e)
        msg, kind = "the answer failed (details in the server log); ask again", "server_error"
    return {"error": {"message": msg, "type": kind}}


# ---- routes -------------------------------------------------------------------------------------
@app.get("/v1/health")
async def health() -> JSONResponse:
    f = _fleet()
    try:
        h = await asyncio.wait_for(f.controller.health.remote(), timeout=5.0)
    except Exception as e:  # the controller is gone or restarting
        logger.warning("health: controller unreachable: %s", e)
        return JSONResponse({"ok": False, "error": "the controller does not answer"}, status_code=503)
    h = {k: v for k, v in h.items() if k != "pid"}
    return JSONResponse(h, status_code=200 if h["workers_alive"] > 0 else 503)


@app.post("/v1/streams", status_code=201)
async def create_stream(request: Request):
    _authorize(request)
    lim = current_limits()
    req = validate(CreateStream, await read_body(request))
    sid = req.id.strip()
    source = check_source(req.source, _STATE.get("allow_dir"), lim)
    options = stream_options(req.options, lim)
    placed = await run_in_threadpool(_fleet().add, sid, source, max_streams=lim.max_streams, **options)
    return JSONResponse({"id": sid, "source": redact_source(source), **placed}, status_code=201)


def _public(p: dict[str, Any]) -> dict[str, Any]:
    """A placement as clients see it: no password in the source, no server paths."""
    out = {k: v for k, v in p.items() if k != "memory_dir"}
    if "source" in out:
        out["source"] = redact_source(out["source"])
    return out


@app.get("/v1/streams")
async def list_streams(request: Request):
    _authorize(request)
    placement = await run_in_threadpool(_fleet().placement)
    return {"streams": [{"id": k, **_public(v)} for k, v in placement.items()]}


@app.get("/v1/streams/{stream_id}")
async def get_stream(stream_id: str, request: Request):
    _authorize(request)
    f = _fleet()
    placement = await run_in_threadpool(f.placement)
    if stream_id not in placement:
        raise ValueError(f"no stream {stream_id!r}; streams: {', '.join(sorted(placement)) or 'none'}")
    st = (await run_in_threadpool(f.stats))["streams"].get(stream_id, {})
    return {"id": stream_id, **_public(placement[stream_id]), "stats": st}


@app.delete("/v1/streams/{stream_id}")
async def delete_stream(stream_id: str, request: Request):
    _authorize(request)
    await run_in_threadpool(_fleet().remove, stream_id)
    return {"id": stream_id, "removed": True}


async def _answer(request: Request, f, sid: str, q: str, mnt: int | None, history: bool,
                  when: dict | None = None):
    """The Answer of a non-streamed question (``when``: since/until); decoding is cancelled when the client
    goes away."""
    rid = uuid.uuid4().hex
    lim = current_limits()
    task = asyncio.ensure_future(run_in_threadpool(f.ask, sid, q, max_new_tokens=mnt, history=history,
                                                   request_id=rid, max_question_tokens=lim.max_question_tokens,
                                                   **(when or {})))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.1)  # a client that left is noticed within 0.1 s
            if done:
                return task.result()
            if await request.is_disconnected():
                raise asyncio.CancelledError
    except asyncio.CancelledError:
        logger.info("client left: cancelling question %s on %s", rid, sid)
        await run_in_threadpool(f.cancel, sid, rid)
        raise


async def _pieces(f, sid: str, q: str, mnt: int | None, history: bool,
                  when: dict | None = None) -> AsyncIterator[Any]:
    """Pieces (str), then the answer (dict), of a streamed question (``when``: since/until); cancelled when the
    consumer stops."""
    from vstream.serve.rayutil import unwrap

    rid = uuid.uuid4().hex
    lim = current_limits()
    _, h = await run_in_threadpool(f.actor_of, sid)
    gen = h.ask_stream.options(num_returns="streaming").remote(sid, q, mnt, history, rid, lim.max_question_tokens,
                                                               *(when or {}).values())
    finished = False
    try:
        async for ref in gen:
            try:
                yield await ref
            except Exception as e:  # the worker's error, unwrapped
                raise unwrap(e) from None
        finished = True
    finally:
        if not finished:
            try:
                h.cancel.remote(rid)
            except Exception:  # noqa: BLE001 - the worker is gone: nothing decodes
                pass


@app.post("/v1/streams/{stream_id}/ask")
async def ask(stream_id: str, request: Request):
    _authorize(request)
    lim = current_limits()
    req = validate(AskBody, await read_body(request))
    q = check_question(req.question, lim)
    mnt = cap_tokens(req.max_new_tokens, lim)
    when = time_range(request.query_params, req.since, req.until)  # a clock range (vstream.clock), checked here
    f = _fleet()
    if not (req.stream or _flag(request.query_params.get("stream"))):
        ans = await _answer(request, f, stream_id, q, mnt, req.history, when)
        return ans.to_dict()
    await run_in_threadpool(f.actor_of, stream_id)  # 404 now, before the stream starts

    async def events() -> AsyncIterator[str]:
        try:
            async for item in _pieces(f, stream_id, q, mnt, req.history, when):
                yield _sse({"text": item}, "piece") if isinstance(item, str) else _sse(item, "answer")
        except Exception as e:  # headers are sent: report in-band
            yield _sse(_in_band_error(e), "error")

    return _sse_response(events())


# ---- events: followers have their own budget (vstream.serve.followers) -------------------------------
async def _event_log_path() -> Path:
    if _STATE.get("event_log") is None:
        p = await asyncio.wait_for(_fleet().controller.event_log_path.remote(), timeout=10.0)
        if p is None:
            raise APIError(503, "this server keeps no event log", "unavailable", "server_error")
        _STATE["event_log"] = Path(p)
    return _STATE["event_log"]


@app.get("/v1/events")
async def events(request: Request):
    key = _authorize(request)
    start = _query_int(request, "since", 0, 0, 2**62)
    last = request.headers.get("last-event-id")
    if last is not None and last.strip().isdigit():
        start = int(last.strip()) + 1
    keep = _flag(request.query_params.get("follow", "true"))
    path = await _event_log_path()
    if keep:
        _STATE["followers"].claim(key)

    async def gen() -> AsyncIterator[str]:
        from vstream.serve.journal import tail_events

        try:
            async for e in tail_events(path, start, follow=keep):
                yield ": keep-alive\n\n" if e is None else _sse(e, id_=e["seq"])
        finally:
            if keep:
                _STATE["followers"].release(key)

    return _sse_response(gen())


@app.get("/v1/search")
async def search(request: Request):
    _authorize(request)
    q = request.query_params.get("q", "")
    top = _query_int(request, "top", 3, 1, 100)
    evidence = _query_int(request, "evidence", 3, 1, 32)
    q = check_question(q, current_limits()) if q.strip() else ""
    if not q:
        raise APIError(400, "give the query as ?q=...", "bad_query")
    when = time_range(request.query_params)
    hits = await run_in_threadpool(_fleet().ask_all, q, top=top, evidence=evidence, **when)
    return {"query": q, "results": [h.to_dict() for h in hits]}


@app.get("/v1/models")
async def models(request: Request):
    _authorize(request)
    placement = await run_in_threadpool(_fleet().placement)
    return {"object": "list", "data": [{"id": sid, "object": "model", "created": 0, "owned_by": "vstream"}
                                       for sid in sorted(placement)]}


@app.post("/v1/chat/completions")
async def chat_completions(request: Request):
    _authorize(request)
    lim = current_limits()
    body = validate(ChatBody, await read_body(request))
    sid = body.model
    question = chat_question(body, lim)
    asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    mnt = cap_tokens(asked, lim, "max_tokens")
    f = _fleet()
    placement = await run_in_threadpool(f.placement)
    if sid not in placement:
        raise APIError(404, f"the model {sid!r} does not exist: models are stream ids (see GET /v1/models)",
                       "model_not_found")
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    if not body.stream:
        ans = await _answer(request, f, sid, question, mnt, True)
        return {"id": cid, "object": "chat.completion", "created": created, "model": sid,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": ans.text},
                             "finish_reason": _finish(ans.tokens, asked)}],
                "usage": {"prompt_tokens": 0, "completion_tokens": ans.tokens, "total_tokens": ans.tokens},
                "vstream": {"asked_at_s": ans.asked_at_s, "evidence": [e.to_dict() for e in ans.evidence],
                            "ttft_s": ans.ttft_s}}

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        return _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": sid,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})

    async def gen() -> AsyncIterator[str]:
        yield chunk({"role": "assistant"})
        try:
            async for item in _pieces(f, sid, question, mnt, True):
                if isinstance(item, str):
                    yield chunk({"content": item})
                else:
                    yield chunk({}, _finish(item["tokens"], asked),
                                vstream={"asked_at_s": item["asked_at_s"], "evidence": item["evidence"]})
        except Exception as e:
            yield _sse(_in_band_error(e))
        yield "data: [DONE]\n\n"

    return _sse_response(gen())


def _finish(tokens: int, mnt: int | None) -> str:
    return "length" if mnt is not None and tokens >= mnt else "stop"


@app.get("/metrics")
async def metrics(request: Request):
    _authorize(request)
    from vstream.serve.metrics import CONTENT_TYPE, render

    return PlainTextResponse(render(await run_in_threadpool(_fleet().stats)), media_type=CONTENT_TYPE)


register_realtime(app)  # WS /v1/realtime (vstream.serve.realtime)


# ---- Ray Serve ----------------------------------------------------------------------------------
def deploy(controller_name: str, *, namespace: str = "vstream", token: str | None = None,
           allow_dir: str | None = None, host: str = "127.0.0.1", port: int = 8000, name: str = "vstream",
           limits: ServeLimits | dict | None = None):
    """Start Serve's HTTP proxy on ``host:port`` and run this app there, talking to the named controller.

    Event followers get their own budget (``limits.max_followers``) on top of ``limits.short_requests``,
    so that health checks, 401s and questions are answered however many followers are open."""
    from ray import serve

    from vstream.serve.client import RayFleet

    lim = limits if isinstance(limits, ServeLimits) else ServeLimits.from_dict(limits)
    lim.validate()

    @serve.deployment(ray_actor_options={"num_cpus": 0},
                      max_ongoing_requests=lim.short_requests + lim.max_followers)
    @serve.ingress(app)
    class VstreamAPI:
        def __init__(self, controller_name: str, namespace: str, token: str | None, allow_dir: str | None,
                     limits: dict) -> None:
            configure(RayFleet.attach(controller_name, namespace), token=token, allow_dir=allow_dir, limits=limits)

    serve.start(http_options={"host": host, "port": int(port)})
    serve.run(VstreamAPI.bind(controller_name, namespace, token, allow_dir, lim.to_dict()), name=name,
              route_prefix="/", blocking=False)
    return f"http://{host}:{port}"
