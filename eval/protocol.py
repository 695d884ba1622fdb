"""One streaming pass per video: ingest once, ask every query exactly at its time stamp.

A benchmark turns its items into ``Query`` objects; ``stream_queries`` orders them by time, advances
the session (``background=False`` + ``advance_to``) and asks each one when the stream reaches it.
Proactive queries are polled every ``poll_interval_s`` seconds of stream time in the same pass.
"""
from __future__ import annotations

import heapq
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from eval.official import sb_proactive_fires
from eval.scoring import parse_yes_no

logger = logging.getLogger(__name__)


@dataclass
class Query:
    """A question asked at stream time ``time_s`` (or polled from it, for proactive ones)."""

    qid: str
    time_s: float
    prompt: str
    kind: str = "ask"  # "ask" | "proactive"
    max_new_tokens: int | None = None
    add_text_after: str | None = None  # text put into the session after the question (gold history)
    poll_end_s: float | None = None  # proactive: last poll time
    probe_text: str | None = None  # proactive: what session.probe is asked about (probe mode)
    poll_prompt: str | None = None  # proactive: yes/no question asked every poll (ask mode)
    done: bool = False  # answered by an earlier run: only ``add_text_after`` is replayed
    max_poll_tokens: int = 4  # proactive "ask"/"official" polls: tokens of each yes/no reply


@dataclass
class QueryResult:
    """What the session did for one query."""

    qid: str
    reply: str
    asked_at_s: float  # stream time reached when the question was asked
    ttft_s: float = 0.0
    latency_s: float = 0.0
    tokens: int = 0
    ingest_wall_s: float = 0.0  # wall time of the ingestion just before this question
    fired_at_s: float | None = None  # proactive: poll time at which it fired (None: never)
    probes: list[tuple[float, float]] = field(default_factory=list)  # proactive: (poll time, P(yes) or 0/1)
    dialog: list[dict[str, Any]] = field(default_factory=list)  # proactive ask/official: every poll's reply

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["probes"] = [[round(t, 3), round(p, 4)] for t, p in self.probes]
        return d


def ingest_target(t_s: float, chunk_seconds: float) -> float:
    """The last chunk boundary at or before ``t_s``: a query never sees frames after its time stamp."""
    return math.floor(t_s / chunk_seconds + 1e-6) * chunk_seconds


def stream_queries(session: Any, queries: list[Query], on_result: Callable[[QueryResult], None], *,
                   chunk_seconds: float, threshold: float = 0.5, poll_interval_s: float = 1.0,
                   proactive_mode: str = "probe", on_event: Callable[[], None] | None = None) -> None:
    """Run ``queries`` over one session in a single pass of the stream (times ascending).

    proactive_mode: "probe" (``session.probe(probe_text) >= threshold`` fires), "ask" (the yes/no
    ``poll_prompt`` is asked every poll; a reply starting with "yes" fires) or "official" (asked the same
    way; fires when "yes" occurs anywhere in the lower-cased reply, StreamingBench's rule). Once fired,
    the query's prompt is asked and its reply recorded with the poll time.
    """
    if proactive_mode not in ("probe", "ask", "official"):
        raise ValueError(f"proactive_mode must be 'probe', 'ask' or 'official', got {proactive_mode!r}")
    heap: list[tuple[float, int, int, Query]] = []
    for seq, q in enumerate(queries):
        if q.done and not q.add_text_after:
            continue
        heapq.heappush(heap, (q.time_s, 0 if q.done else 1, seq, q))
    state: dict[str, QueryResult] = {}
    ingest = [0.0]

    def advance(t: float) -> float:
        t0 = time.perf_counter()
        reached = session.advance_to(ingest_target(t, chunk_seconds))
        ingest[0] += time.perf_counter() - t0
        return reached

    def ask(prompt: str, max_new_tokens: int | None) -> Any:
        return session.ask(prompt, max_new_tokens=max_new_tokens, history=False)

    while heap:
        t, _, seq, q = heapq.heappop(heap)
        advance(t)
        if q.done:  # replay gold history only
            session.add_text(q.add_text_after)
            continue
        if q.kind == "ask":
            ans = ask(q.prompt, q.max_new_tokens)
            res = QueryResult(q.qid, ans.text, session.stream_time_s, ans.ttft_s, ans.latency_s, ans.tokens,
                              ingest[0])
            ingest[0] = 0.0
            if q.add_text_after:
                session.add_text(q.add_text_after)
            on_result(res)
        elif q.kind == "proactive":
            res = state.setdefault(q.qid, QueryResult(q.qid, "", session.stream_time_s))
            if proactive_mode == "probe":
                p = float(session.probe(q.probe_text or q.prompt))
                fire = p >= threshold
            else:
                reply = ask(q.poll_prompt or q.prompt, q.max_poll_tokens).text
                fire = sb_proactive_fires(reply) if proactive_mode == "official" else parse_yes_no(reply) is True
                p = 1.0 if fire else 0.0
                res.dialog.append({"role": "user", "content": q.poll_prompt or q.prompt, "time": t})
                res.dialog.append({"role": "assistant", "content": reply, "time": t})
            res.probes.append((t, p))
            end = q.poll_end_s if q.poll_end_s is not None else q.time_s
            nxt = t + poll_interval_s
            stalled = session.ended and ingest_target(nxt, chunk_seconds) > session.stream_time_s
            if fire:
                ans = ask(q.prompt, q.max_new_tokens)
                res.reply, res.fired_at_s, res.asked_at_s = ans.text, t, session.stream_time_s
                res.ttft_s, res.latency_s, res.tokens = ans.ttft_s, ans.latency_s, ans.tokens
                if proactive_mode != "probe":
                    res.dialog.append({"role": "user", "content": q.prompt, "time": t})
                    res.dialog.append({"role": "assistant", "content": ans.text, "time": t})
            elif nxt <= end + 1e-9 and not stalled:
                heapq.heappush(heap, (nxt, 1, seq, q))
                continue
            res.ingest_wall_s = ingest[0]
            ingest[0] = 0.0
            del state[q.qid]
            on_result(res)
        else:
            raise ValueError(f"unknown query kind {q.kind!r}")
        if on_event is not None:
            on_event()


def open_session(agent: Any, source: str, *, start_s: float = 0.0, end_s: float | None = None,
                 **watch_kwargs: Any) -> Any:
    """``agent.watch`` on a benchmark source: files and URLs as they are, "synthetic:..." specs (with the
    harness's ``events=FILE``) built here; always ``background=False`` (eval drives ``advance_to``)."""
    kw = {"background": False, "progress": False, **watch_kwargs}
    if source.startswith("synthetic"):
        from vstream.sources import open_synthetic

        return agent.watch(open_synthetic(source, start_s, end_s), **kw)
    if start_s or end_s is not None:
        kw.update(start_s=start_s, end_s=end_s)
    return agent.watch(source, **kw)


def chunk_seconds_of(agent: Any, watch_kwargs: dict[str, Any] | None) -> float:
    """The chunk length a session will use: the watch override or the agent's config."""
    cs = (watch_kwargs or {}).get("chunk_seconds")
    return float(cs if cs else agent.config.sampler.chunk_seconds)


def configured(agent: Any, changes: dict[str, Any]) -> Any:
    """``agent`` with config fields changed (a new Agent sharing the loaded model); ``agent`` when none."""
    if not changes:
        return agent
    if hasattr(agent, "with_config"):
        return agent.with_config(changes)
    return type(agent)(agent.adapter, agent.config.replace(**changes).validate())


def run_videos(agent: Any, groups: dict[Any, list[Query]], on_result: Callable[[str, QueryResult], None], *,
               watch_kwargs: dict[str, Any] | None = None, desc: str = "eval", show_progress: bool = True,
               threshold: float | None = None, proactive_mode: str = "probe") -> None:
    """One session per video (``background=False``), every pending query asked in one pass.

    groups: source (or (source, start_s): a session that starts at start_s) -> queries (done ones only
    replay their gold history). Videos with no pending query are not opened at all.
    """
    from eval.runner import progress

    kw = dict(watch_kwargs or {})
    cs = chunk_seconds_of(agent, kw)
    thr = agent.config.responder.notify_threshold if threshold is None else threshold
    pending = {src: qs for src, qs in groups.items() if any(not q.done for q in qs)}
    total = sum(sum(not q.done for q in qs) for qs in pending.values())
    with progress(total, desc, show_progress, unit="q") as bar:
        for vi, (key, qs) in enumerate(pending.items()):
            src, start = key if isinstance(key, tuple) else (key, 0.0)
            bar.set_postfix_str(f"video {vi + 1}/{len(pending)}")
            logger.info("%s: %s from %gs (%d queries)", desc, src, start, sum(not q.done for q in qs))
            with open_session(agent, src, start_s=start, **kw) as session:
                def done(res: QueryResult, _src: str = src) -> None:
                    on_result(_src, res)
                    bar.update(1)
                stream_queries(session, qs, done, chunk_seconds=cs, threshold=thr, proactive_mode=proactive_mode)
