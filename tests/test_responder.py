"""The asynchronous responder: answers on snapshots while perception keeps ingesting.

Concurrency (ingestion advances during a long answer), causality (an answer uses nothing after the
time it was asked), determinism (the responder's answer equals a synchronous one on the same
snapshot), a bounded query queue, standing alerts (threshold + cool-down), realtime drops, and
multi-turn memory. Tiny random models: behaviour is tested, never the text.
"""
from __future__ import annotations

import concurrent.futures as cf
import gc
import math
import threading
import time

import numpy as np
import psutil
import pytest

import vstream.engine.core as engine_mod
from conftest import tiny_adapter
from memory.segment import TEXT, VISION
from vstream.api import Agent
from vstream.config import from_name
from vstream.engine.core import Engine
from vstream.session.alerts import Notifier
from vstream.session.responder import Query, QueueFull, Responder, stream_answer
from vstream.sources import PushSource, SyntheticSource
from vstream.types import Answer

CLOSE_S = 1.5  # responder.close_timeout_s in these tests



def make_agent(preset: str = "tiny-smolvlm", **changes) -> Agent:
    a = tiny_adapter(preset)
    fields = {"memory.long_term": False, "responder.close_timeout_s": CLOSE_S}
    fields.update(changes)
    return Agent(a, from_name("tiny").replace(model=a.name, device="cpu", dtype="float32", **fields))


def endless(seed: int = 1) -> SyntheticSource:
    """A long synthetic stream (background ingestion runs as fast as it can, it must not run out)."""
    return SyntheticSource(seed=seed, duration_s=3600.0, fps=4.0, size=(64, 48))


def no_stop_tokens(monkeypatch, adapter) -> None:
    """Answers of this adapter instance cannot stop early: they always decode max_new_tokens."""
    cls = type(adapter)
    sub = type(f"{cls.__name__}NoStop", (cls,), {"eos_token_ids": property(lambda self: [])})
    monkeypatch.setattr(adapter, "__class__", sub)


class AnswerSpy:
    """Wraps session.engine.answer: records the snapshot used and the chunks ingested before/after."""

    def __init__(self, session, before=None) -> None:
        self.calls: list[dict] = []
        orig = session.engine.answer
        mem = session.engine.memory

        def answer(question, snap, **kw):
            if before is not None:
                before(snap)
            n0 = mem.chunks_ingested
            ans = orig(question, snap, **kw)
            self.calls.append({"snap": snap, "before": n0, "after": mem.chunks_ingested, "answer": ans})
            return ans

        session.engine.answer = answer


class TokenSpy:
    """Wraps vstream.engine.core.decode_n_tokens: token ids decoded, per calling thread."""

    def __init__(self, monkeypatch) -> None:
        self.by_thread: dict[str, list[list[int]]] = {}
        orig = engine_mod.decode_n_tokens

        def decode(*a, **kw):
            res = orig(*a, **kw)
            self.by_thread.setdefault(threading.current_thread().name, []).append(list(res.token_ids))
            return res

        monkeypatch.setattr(engine_mod, "decode_n_tokens", decode)


# ---- concurrency ---------------------------------------------------------------------------------


def test_ingestion_advances_during_long_answer(monkeypatch):
    agent = make_agent(**{"generation.max_new_tokens": 64})
    no_stop_tokens(monkeypatch, agent.adapter)
    with agent.watch(endless(), background=True) as s:
        spy = AnswerSpy(s)
        assert s.wait_chunks(2, timeout=60)
        ans = s.ask("Describe everything you have seen so far.", timeout=120)
        assert ans.tokens == 64 and not ans.cancelled
        call = spy.calls[0]
        assert call["after"] - call["before"] > 0, "perception stalled while the answer was decoded"
        assert s.stats()["chunks"] > call["snap"].chunks_ingested
        assert s.error is None


def test_commentary_continues_during_long_answer(monkeypatch):
    agent = make_agent(**{"generation.max_new_tokens": 64, "responder.commentary_tokens": 2})
    no_stop_tokens(monkeypatch, agent.adapter)
    with agent.watch(endless(), background=True, commentary=True) as s:
        assert s.wait_chunks(2, timeout=60)
        seen: dict[str, int] = {}

        def on_piece(_piece: str) -> None:  # runs inside the answer's decode loop
            if "n0" in seen:
                return
            seen["n0"] = n0 = len(s.commentary_items)
            deadline = time.monotonic() + 3.0
            while len(s.commentary_items) < n0 + 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            seen["n1"] = len(s.commentary_items)

        ans = s.ask_async("Describe everything you have seen so far.", on_piece=on_piece).result(120)
        assert ans.tokens == 64 and "n0" in seen
        assert seen["n1"] >= seen["n0"] + 2, "no commentary was produced while the answer was decoded"


# ---- causality and determinism -------------------------------------------------------------------


# (causality against the caller's clock: tests/test_causality.py)


@pytest.mark.parametrize("preset", ["tiny-qwen2.5-vl", "tiny-llava-onevision", "tiny-smolvlm"])
def test_responder_answer_equals_synchronous_answer(monkeypatch, preset):
    """The responder's answer (perception running) is the model's own greedy answer on the snapshot.

    Reference: the HF model's full forward over the snapshot's chunks and the question, one token at a
    time (teacher forcing); the synchronous answer on the same snapshot gives the same tokens too.
    """
    from _kv_reference import ids_as_text

    agent = make_agent(preset, **{"generation.temperature": 0.0, "memory.window_chunks": 100})
    a = agent.adapter
    no_stop_tokens(monkeypatch, a)
    toks = TokenSpy(monkeypatch)
    seen_chunks: dict[int, object] = {}
    orig_ingest = Engine.ingest

    def ingest(self, chunk):
        seen_chunks[chunk.index] = chunk
        return orig_ingest(self, chunk)

    monkeypatch.setattr(Engine, "ingest", ingest)
    q = "What moved across the screen?"
    src = SyntheticSource(seed=2, duration_s=12.0, fps=4.0, size=(64, 48))  # at most 12 chunks: no eviction
    with agent.watch(src, background=True) as s:
        spy = AnswerSpy(s)
        assert s.wait_chunks(3, timeout=60)
        ans = s.ask(q, max_new_tokens=16, timeout=120)  # on the responder thread, perception running
        snap = spy.calls[0]["snap"]
        assert s.wait_chunks(snap.chunks_ingested + 2, timeout=60)  # memory has moved on since
        sync = s.engine.answer(q, snap, max_new_tokens=16)  # in this thread, on the same snapshot
    responder_ids = [ids for name, calls in toks.by_thread.items() if name.startswith("vstream-responder")
                     for ids in calls]
    sync_ids = toks.by_thread[threading.current_thread().name]
    assert len(responder_ids) == 1 and len(sync_ids) == 1
    assert responder_ids[0] == sync_ids[0] and len(sync_ids[0]) == 16
    assert (ans.text, ans.tokens, ans.asked_at_s) == (sync.text, sync.tokens, sync.asked_at_s)
    live = [seg for seg in snap.segments if seg.kind != "sink"]
    assert live and all(seg.kind == VISION for seg in live)  # the snapshot is exactly sinks + chunks
    pieces = [a.system_text(agent.config.system_prompt)]
    pieces += [(seen_chunks[seg.chunk_index].marker, seen_chunks[seg.chunk_index].frames) for seg in live]
    pieces.append(a.question_text(q))
    ids = responder_ids[0]
    with ids_as_text(a, {f"\x00prefix{j}": ids[:j] for j in range(1, len(ids))}):
        for j, tok in enumerate(ids):
            ref = a.reference_logits(pieces + ([f"\x00prefix{j}"] if j else []))
            assert int(ref.argmax()) == tok, f"{preset}: answer token {j} is not the model's greedy choice"


# ---- the query queue -----------------------------------------------------------------------------


def test_thousand_questions_bounded_queue_and_prompt_close(monkeypatch):
    qsize = 8
    agent = make_agent(**{"generation.max_new_tokens": 64, "responder.queue_size": qsize})
    no_stop_tokens(monkeypatch, agent.adapter)
    proc = psutil.Process()
    s = agent.watch(endless(), background=True)
    try:
        assert s.wait_chunks(2, timeout=60)
        gc.collect()
        rss0 = proc.memory_info().rss
        accepted: list[cf.Future] = []
        rejected: list[ValueError] = []
        max_pending = 0
        for i in range(1000):
            try:
                accepted.append(s.ask_async(f"Question {i}: what is on screen?"))
            except ValueError as e:
                rejected.append(e)
            max_pending = max(max_pending, s.responder.pending)
        rss_growth = proc.memory_info().rss - rss0
        assert len(accepted) + len(rejected) == 1000
        assert len(accepted) >= qsize and len(rejected) >= 1000 - 4 * qsize
        assert max_pending <= qsize
        assert all(isinstance(e, QueueFull) and "query queue full" in str(e) for e in rejected)
        assert s.stats()["queries_rejected"] == len(rejected)
        assert rss_growth < 64 * 2 ** 20, f"RSS grew by {rss_growth / 2 ** 20:.1f} MiB for 1000 questions"
        first = accepted[0].result(timeout=120)
        assert first.tokens == 64 and not first.cancelled
        assert sum(not f.done() for f in accepted) > 0  # close() below has work in flight
    finally:
        t0 = time.monotonic()
        s.close()
        took = time.monotonic() - t0
    assert took <= CLOSE_S + 2.0, f"close() took {took:.1f}s with close_timeout_s={CLOSE_S}"
    deadline = time.monotonic() + 10  # (cf.wait ignores futures cancelled outside an executor: poll done())
    while not all(f.done() for f in accepted) and time.monotonic() < deadline:
        time.sleep(0.01)
    not_done = [f for f in accepted if not f.done()]
    assert not not_done, f"{len(not_done)} questions neither answered nor cancelled after close()"
    for f in accepted:  # every accepted question was answered (maybe cut short by close) or cancelled
        assert f.cancelled() or isinstance(f.result(), Answer)
    with pytest.raises(RuntimeError, match="closed"):
        s.ask_async("one more?")


def test_close_is_prompt_when_the_reader_is_ahead():
    agent = make_agent(**{"responder.close_timeout_s": 2.0})
    s = agent.watch(endless(), background=True)
    assert s.wait_chunks(2, timeout=60)
    deadline = time.monotonic() + 30
    while s.pipeline.queue.qsize() < agent.config.sampler.max_backlog_chunks and time.monotonic() < deadline:
        time.sleep(0.01)  # the reader decodes ahead until the bounded chunk queue is full
    t0 = time.monotonic()
    s.close()
    took = time.monotonic() - t0
    assert took < 1.0 and not s.pipeline.reader.is_alive(), f"close() took {took:.1f}s; reader alive: {s.pipeline.reader.is_alive()}"


def _fake_answer(question: str, snap, *, max_new_tokens=None, on_piece=None, cancel=None) -> Answer:
    """Stands in for Engine.answer: 'decodes' until cancelled or 200 steps of 10 ms."""
    for i in range(200):
        if cancel is not None and cancel.is_set():
            return Answer(question=question, text="", asked_at_s=0.0, tokens=i, cancelled=True)
        time.sleep(0.01)
    return Answer(question=question, text="done", asked_at_s=0.0, tokens=200)


def _query(question: str) -> Query:
    return Query(question=question, snapshot=None, future=cf.Future())


def test_responder_close_resolves_every_future_and_rejects_later_submits():
    r = Responder(_fake_answer, maxsize=4)
    futs = [r.submit(_query(f"q{i}")) for i in range(4)]
    deadline = time.monotonic() + 5
    while r.pending > 3 and time.monotonic() < deadline:  # the worker took the first one
        time.sleep(0.005)
    with pytest.raises(QueueFull, match="query queue full"):
        for i in range(3):
            r.submit(_query(f"extra{i}"))
    t0 = time.monotonic()
    assert r.close(timeout=5.0)
    assert time.monotonic() - t0 < 1.0
    assert futs[0].result(timeout=1).cancelled  # the running one was cut short
    assert all(f.cancelled() for f in futs[1:])  # queued ones never started
    with pytest.raises(RuntimeError, match="closed"):
        r.submit(_query("late"))


def test_responder_survives_history_failure_and_cancelled_queries():
    def quick(question, snap, **kw):
        return Answer(question=question, text="ok", asked_at_s=0.0, tokens=1)

    def bad_history(ans):
        raise RuntimeError("text window broken")

    r = Responder(quick, maxsize=8, on_history=bad_history)
    cancelled = _query("never mind")
    cancelled.cancel.set()
    f0 = r.submit(_query("first"))
    f1 = r.submit(cancelled)
    f2 = r.submit(_query("second"))
    assert f0.result(timeout=5).text == "ok" and f2.result(timeout=5).text == "ok"  # worker still alive
    assert f1.cancelled()  # resolved, not left pending forever
    assert r.close(timeout=5.0)


# ---- standing alerts -------------------------------------------------------------------------------


def test_notifier_fires_once_per_event_and_respects_cooldown():
    script = {t: 0.1 for t in range(1, 30)}
    for t in (3, 4, 5, 6, 8, 9, 11, 12, 16, 17, 18, 19, 20, 21, 22, 23, 24):  # events: 3-6, 8-9, 11-12, 16-24
        script[t] = 0.9
    now = {"t": 0}
    n = Notifier(lambda text: script[now["t"]])
    h = n.add("a red square appears", lambda alert: None, threshold=0.5, cooldown_s=4.0)
    fired_at = []
    for t in range(1, 30):
        now["t"] = t
        for cond, p in n.check(float(t)):
            assert cond.handle == h and p == 0.9
            fired_at.append(t)
    # 3: first event; 8: new event 5 s later; 11: new event within the 4 s cool-down -> silent for its
    # whole length; 16: new event, and it lasts 9 s > cool-down but fires only once
    assert fired_at == [3, 8, 16]
    assert n.conditions[h].fired == 3


def test_notifier_cooldown_zero_fires_every_rising_edge_and_survives_probe_errors():
    seq = iter([0.9, 0.2, 0.9, 0.9, RuntimeError("probe broke"), 0.95, float("nan"), 0.6])

    def probe(text):
        v = next(seq)
        if isinstance(v, Exception):
            raise v
        return v

    n = Notifier(probe)
    h = n.add("door opens", lambda a: None, threshold=0.5, cooldown_s=0.0)
    fired = [t for t in range(8) if n.check(float(t))]
    assert fired == [0, 2, 5, 7]
    assert n.conditions[h].errors == 1


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.2, 1.5, float("nan"), "high", None])
def test_notifier_rejects_bad_threshold(threshold):
    n = Notifier(lambda text: 0.5)
    with pytest.raises(ValueError, match="threshold"):
        n.add("x happens", lambda a: None, threshold=threshold, cooldown_s=1.0)


@pytest.mark.parametrize("kw,match", [({"cooldown_s": -1.0}, "cooldown_s"),
                                      ({"cooldown_s": float("nan")}, "cooldown_s"),
                                      ({"text": "  "}, "empty"), ({"callback": "not callable"}, "callback")])
def test_notifier_rejects_bad_arguments(kw, match):
    args = {"text": "x happens", "callback": lambda a: None, "threshold": 0.5, "cooldown_s": 1.0}
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        Notifier(lambda text: 0.5).add(**args)


def test_session_alerts_fire_once_per_event_with_answers():
    agent = make_agent()
    events = {3, 4, 5, 6, 8, 9, 11, 12, 16, 17}
    alerts = []
    with agent.watch(SyntheticSource(seed=3, duration_s=30.0, fps=4.0, size=(64, 48)), background=False) as s:
        p = s.probe("a shape is visible")  # the real one-step probe
        assert 0.0 <= p <= 1.0 and math.isfinite(p)
        s.notifier.probe = lambda text: 0.9 if round(s.stream_time_s) in events else 0.1  # the test double
        with pytest.raises(ValueError, match="threshold"):
            s.notify_when("bad", alerts.append, threshold=1.5)
        h = s.notify_when("a red square appears", alerts.append, threshold=0.5, cooldown_s=4.0)
        s.advance_to(18.0)
        deadline = time.monotonic() + 60
        while s.responder.answered + s.responder.failed < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.05)  # callbacks run right after the answers
        assert [a.at_s for a in alerts] == [3.0, 8.0, 16.0]
        assert s.notifier.conditions[h].fired == 3
        for a in alerts:
            assert a.condition == "a red square appears" and a.probability == pytest.approx(0.9)
            assert a.answer is not None and a.answer.asked_at_s == a.at_s  # answered on the memory as of the alert


# ---- realtime drops --------------------------------------------------------------------------------


def test_realtime_push_source_faster_than_perception_drops_and_stays_bounded(monkeypatch):
    orig = Engine.ingest

    def slow_ingest(self, chunk):
        time.sleep(0.6)  # perception < 1.7 chunks/s against 4 chunks/s arriving
        return orig(self, chunk)

    monkeypatch.setattr(Engine, "ingest", slow_ingest)
    backlog = 2
    agent = make_agent(**{"sampler.max_backlog_chunks": backlog})
    src = PushSource(maxsize=64)
    s = agent.watch(src, background=True, realtime=True, fps=8.0, chunk_seconds=0.25)
    max_q, stop = [0], threading.Event()

    def watch_queue():
        while not stop.is_set():
            max_q[0] = max(max_q[0], s.pipeline.queue.qsize())
            time.sleep(0.005)

    mon = threading.Thread(target=watch_queue, daemon=True)
    mon.start()
    try:
        rng = np.random.default_rng(0)
        frame = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end:  # 40 fps pushed, stamped with the wall clock
            src.push(frame)
            time.sleep(0.025)
        src.end()
        deadline = time.monotonic() + 30
        while not s.ended and time.monotonic() < deadline:
            time.sleep(0.02)
        assert s.ended
        st = s.stats()
    finally:
        stop.set()
        mon.join()
        s.close()
    assert st["chunks_dropped"] > 0 and st["frames_dropped"] > 0
    assert max_q[0] <= backlog
    assert st["frames_kept"] + st["frames_dropped"] <= st["frames_in"]
    assert st["chunks"] > 0
    assert st["error"] is None


# ---- multi-turn ------------------------------------------------------------------------------------


def _text_segments_with(snap, needle: str):
    return [seg for seg in snap.live if seg.kind == TEXT and needle in seg.text]


def test_later_question_sees_earlier_question_and_answer():
    agent = make_agent(**{"memory.text_window_tokens": 512})
    q1, q2 = "What colour is the first shape?", "And the second one?"
    with agent.watch(endless(seed=4), background=False) as s:
        spy = AnswerSpy(s)
        s.advance_to(3.0)
        a1 = s.ask(q1, timeout=60)
        live = _text_segments_with(s.engine.snapshot(), q1)
        assert len(live) == 1 and live[0].text.endswith(agent.adapter.answer_close_text())
        assert a1.text in live[0].text and live[0].start_s == a1.asked_at_s
        s.advance_to(4.0)
        s.ask(q2, timeout=60)
        s.ask("Not remembered?", history=False, timeout=60)
        snap2 = spy.calls[1]["snap"]
        seg = _text_segments_with(snap2, q1)
        assert len(seg) == 1  # q2's context holds q1 and its answer, after the chunks q1 saw
        order = [x.seg_id for x in snap2.live]
        first_vision_after = [x for x in snap2.live if x.kind == VISION and x.start_s >= a1.asked_at_s]
        assert first_vision_after and order.index(seg[0].seg_id) < order.index(first_vision_after[0].seg_id)
        assert _text_segments_with(s.engine.snapshot(), q2)
        assert not _text_segments_with(s.engine.snapshot(), "Not remembered?")


def test_follow_up_sees_earlier_turn_while_stream_is_paused():
    agent = make_agent(**{"memory.text_window_tokens": 512})
    src = PushSource(maxsize=64)
    rng = np.random.default_rng(1)
    with agent.watch(src, background=True) as s:
        for k in range(9):  # 4.5 s of frames at 2 fps: chunks 0-3 complete, then the camera pauses
            src.push(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8), t=k * 0.5)
        assert s.wait_chunks(4, timeout=60)
        spy = AnswerSpy(s)
        q1 = "What colour is the first shape?"
        s.ask(q1, timeout=60)
        s.ask("And the second one?", timeout=60)
        assert _text_segments_with(spy.calls[1]["snap"], q1)


# ---- the question check and streamed pieces --------------------------------------------------------


@pytest.mark.parametrize("question", ["", "   \n", None, 42])
def test_empty_question_is_refused_before_anything_is_queued(question):
    agent = make_agent()
    with agent.watch(SyntheticSource(seed=5, duration_s=4.0, fps=4.0, size=(64, 48)), background=False) as s:
        s.advance_to(1.0)
        for call in (lambda: s.ask(question), lambda: s.ask(question, stream=True), lambda: s.ask_async(question)):
            with pytest.raises(ValueError, match="question is empty"):
                call()
        st = s.stats()
        assert (st["queries_pending"], st["queries_answered"], st["queries_rejected"]) == (0, 0, 0)


class FakeDecoder:
    """Stands in for Session.ask_async: a thread emits 'p0', 'p1', ... every 5 ms until cancelled or done."""

    def __init__(self, n: int, fail: Exception | None = None, delay_s: float = 0.005) -> None:
        self.n, self.fail, self.delay_s = n, fail, delay_s
        self.emitted: list[str] = []
        self.cancel: threading.Event | None = None
        self.thread: threading.Thread | None = None

    def ask(self, question, *, on_piece, cancel, **kw) -> cf.Future:
        fut: cf.Future = cf.Future()
        fut.set_running_or_notify_cancel()
        self.cancel = cancel

        def run():
            for i in range(self.n):
                if cancel.is_set():
                    break
                time.sleep(self.delay_s)
                self.emitted.append(f"p{i}")
                on_piece(f"p{i}")
            if self.fail is not None:
                fut.set_exception(self.fail)
            else:
                fut.set_result(Answer(question=question, text="".join(self.emitted), asked_at_s=0.0,
                                      tokens=len(self.emitted), cancelled=cancel.is_set()))

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return fut


def test_stream_answer_yields_every_piece_then_the_answer():
    dec = FakeDecoder(20)
    fut, pieces = stream_answer(dec.ask, "q?")
    got = list(pieces)
    assert got == [f"p{i}" for i in range(20)] == dec.emitted
    assert fut.result(timeout=1).text == "".join(got) and not dec.cancel.is_set()


def test_stream_answer_reraises_the_failure_at_the_end():
    dec = FakeDecoder(3, fail=RuntimeError("decoder broke"))
    _fut, pieces = stream_answer(dec.ask, "q?")
    got = []
    with pytest.raises(RuntimeError, match="decoder broke"):
        for p in pieces:
            got.append(p)
    assert got == ["p0", "p1", "p2"]


def test_stream_answer_cancels_decoding_when_the_reader_stops():
    dec = FakeDecoder(10_000)
    fut, pieces = stream_answer(dec.ask, "q?")
    assert [next(pieces), next(pieces)] == ["p0", "p1"]
    pieces.close()  # the caller stops reading
    assert dec.cancel.is_set()
    dec.thread.join(timeout=5)
    assert not dec.thread.is_alive() and len(dec.emitted) < 10_000
    assert fut.result(timeout=1).cancelled


def test_stream_answer_times_out_and_cancels_when_no_piece_comes():
    dec = FakeDecoder(3, delay_s=2.0)
    _fut, pieces = stream_answer(dec.ask, "q?", piece_timeout_s=0.2)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="no answer within"):
        next(pieces)
    assert time.monotonic() - t0 < 1.5 and dec.cancel.is_set()
    dec.thread.join(timeout=5)
    assert len(dec.emitted) <= 1
