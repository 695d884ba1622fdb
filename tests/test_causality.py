"""Causality against the caller's clock: an answer uses the memory as of the moment ``ask`` was called.

The reference is the stream time the test itself reads just before and just after it calls ``ask``
(never the answer's own ``asked_at_s``). Perception keeps running and the queue is kept busy: every
answer is held until ingestion is a few chunks past the memory it was given, so a question answered
on the memory of the moment the worker picks it up (instead of when it was asked) is visibly later.
"""
from __future__ import annotations

from memory.segment import VISION
from test_responder import AnswerSpy, endless, make_agent, no_stop_tokens

HOLD = 3  # chunks perception must move past an answer's snapshot before that answer is computed


def _ask_timed(s, question: str):
    """(stream time read before ask, the future, stream time read after ask returned)."""
    t_before = s.stream_time_s
    fut = s.ask_async(question, history=False)
    return t_before, fut, s.stream_time_s


def test_answer_uses_nothing_after_the_question_time():
    agent = make_agent()
    with agent.watch(endless(), background=True) as s:
        spy = AnswerSpy(s, before=lambda snap: s.wait_chunks(snap.chunks_ingested + HOLD, timeout=60))
        assert s.wait_chunks(3, timeout=60)
        t_before, fut, t_after = _ask_timed(s, "What colour was the shape?")
        ans = fut.result(120)
        snap = spy.calls[0]["snap"]
        assert t_before >= 3.0 and t_before <= snap.stream_time_s <= t_after
        assert t_before <= ans.asked_at_s <= t_after and ans.memory_s == snap.stream_time_s
        assert s.stream_time_s >= t_after + HOLD  # ingestion moved past the question before it was answered
        assert any(seg.kind == VISION and seg.start_s >= t_after for seg in s.engine.snapshot().live)
        vision = [seg for seg in snap.live if seg.kind == VISION]
        assert vision and all(seg.end_s <= t_after for seg in vision)
        # the tensors answered on hold exactly the snapshot's segments: nothing ingested later leaked in
        assert snap.context_tokens == sum(seg.n_tokens for seg in snap.segments)
        assert ans.evidence and all(e.start_s < t_after and e.end_s <= t_after for e in ans.evidence)


def test_busy_queue_answers_each_question_on_the_memory_as_of_its_ask(monkeypatch):
    agent = make_agent(**{"generation.max_new_tokens": 6, "responder.queue_size": 8})
    no_stop_tokens(monkeypatch, agent.adapter)
    with agent.watch(endless(seed=3), background=True) as s:
        spy = AnswerSpy(s, before=lambda snap: s.wait_chunks(snap.chunks_ingested + HOLD, timeout=60))
        assert s.wait_chunks(2, timeout=60)
        asked = [_ask_timed(s, f"Question {i}: what is on the screen?") for i in range(4)]
        assert s.responder.pending >= 2  # several questions really wait behind the first
        for i, (t_before, fut, t_after) in enumerate(asked):
            ans = fut.result(180)
            assert t_before <= ans.asked_at_s <= t_after, (i, t_before, ans.asked_at_s, t_after)
            assert t_before <= ans.memory_s <= t_after, f"question {i} asked at {t_after} answered on memory " \
                                                        f"as of {ans.memory_s}"
            assert ans.evidence and all(e.end_s <= t_after for e in ans.evidence), (i, ans.evidence, t_after)
        snaps = [c["snap"] for c in spy.calls]
        assert len(snaps) == 4
        for (t_before, _, t_after), snap in zip(asked, snaps):
            vision = [seg for seg in snap.live if seg.kind == VISION]
            assert vision and max(seg.end_s for seg in vision) <= t_after
        # and the queue was busy: the last question was answered long after it was asked
        assert spy.calls[-1]["before"] >= snaps[-1].chunks_ingested + HOLD
