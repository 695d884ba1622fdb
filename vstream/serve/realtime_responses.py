"""The answering side of a realtime session (``vstream.serve.realtime``): responses and commentary.

Both run on the session's event loop and stream the worker's ``ask_stream`` pieces (a Ray streaming
generator) to the client: ``answer`` for ``response.create`` (``response.text.delta`` ... ``response.done``
with evidence on the client's clock), ``commentate`` while ``commentary`` is on (after each new chunk, a
one-sentence description as ``commentary.delta`` pieces, then ``commentary.done``; asked like a question
but not kept in the stream's history).
"""
from __future__ import annotations

import asyncio
import logging

from vstream.serve import realtime_protocol as rp

logger = logging.getLogger(__name__)


async def answer(s, question: str, mnt: int | None) -> None:
    """Stream the answer to ``question`` on session ``s`` (a ``RealtimeSession``) as OpenAI response events."""
    import ray

    from vstream.serve.rayutil import unwrap

    rid, iid = rp.new_id("resp"), rp.new_id("item")
    base = {"response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0}
    s.send(rp.event("response.created", response={"id": rid, "object": "realtime.response",
                                                   "status": "in_progress", "output": []}))
    text, answer, status = [], None, "completed"
    try:
        gen = s.handle.ask_stream.options(num_returns="streaming").remote(s.sid, question, mnt, True)
        async for ref in gen:
            item = await ref
            if isinstance(item, str):
                text.append(item)
                s.counts["response_deltas"] += 1
                s.send(rp.event("response.text.delta", delta=item, **base))
            else:
                answer = item
    except asyncio.CancelledError:
        status = "cancelled"
    except ray.exceptions.RayTaskError as e:
        status = "failed"
        s.send(rp.error_event("response_failed", " ".join(str(unwrap(e)).split())[:300], type_="server_error"))
    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
        status = "failed"
        s._lost(e)
    full = "".join(text) if text else (answer or {}).get("text", "")  # the deltas, as the client saw them
    s.send(rp.event("response.text.done", text=full, **base))
    vs = None
    if answer is not None:
        vs = {"asked_at_s": answer.get("asked_at_s"), "asked_at_client": s.client_time(answer.get("asked_at_s")),
              "ttft_s": answer.get("ttft_s"), "evidence": [s._evidence(e) for e in answer.get("evidence", [])]}
    out = [{"id": iid, "object": "realtime.item", "type": "message", "role": "assistant",
            "content": [{"type": "text", "text": full}]}]
    s.send(rp.event("response.done", response={"id": rid, "object": "realtime.response", "status": status,
                                               "output": out, "vstream": vs}))


async def commentate(s) -> None:
    """With ``commentary`` on: after each new chunk, a one-sentence description as ``commentary.delta``
    pieces and ``commentary.done`` (asked like a question, not kept in the stream's history)."""
    import ray

    seen = None  # chunks ingested when the last commentary was made
    while True:
        if not s.config.get("commentary") or s.handle is None:
            await asyncio.sleep(0.25)
            continue
        try:
            n = await s.handle.wait_chunks.remote(s.sid, (seen or 0) + 1, 2.0)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.RayTaskError):
            await asyncio.sleep(0.5)  # the poller and forwarder report a lost worker
            continue
        busy = s.response is not None and not s.response.done()
        if seen is not None and n <= seen:
            await asyncio.sleep(0.2)  # nothing new (or the stream is down: wait_chunks returns at once)
            continue
        seen = n
        if busy:
            continue  # an answer is being decoded: this chunk goes without commentary
        pieces = []
        try:
            gen = s.handle.ask_stream.options(num_returns="streaming").remote(
                s.sid, rp.COMMENTARY_PROMPT, 24, False)
            async for ref in gen:
                item = await ref
                if isinstance(item, str):
                    pieces.append(item)
                    s.send(rp.event("commentary.delta", delta=item, chunk=n))
                else:
                    at = item.get("asked_at_s")
                    s.send(rp.event("commentary.done", text="".join(pieces), chunk=n, stream_time_s=at,
                                    client_timestamp=s.client_time(at)))
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.RayTaskError):
            continue
