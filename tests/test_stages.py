"""Pipeline stages: decoding ahead in its own thread, preprocessing ahead of perception, busy time per stage."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import tiny_adapter
from vstream.session.stages import DecodeAhead, StageClock
from vstream.sources import Frame


def _frames(n):
    for i in range(n):
        yield Frame(float(i), np.full((2, 2, 3), i, np.uint8))


def test_decode_ahead_keeps_order_and_runs_in_its_own_thread():
    seen_threads = set()

    def source():
        for f in _frames(200):
            seen_threads.add(threading.current_thread().name)
            yield f

    clock = StageClock()
    got = [f.t for f in DecodeAhead(source(), depth=4, clock=clock)]
    assert got == [float(i) for i in range(200)]
    assert seen_threads == {"vstream-decode"}
    assert clock.seconds["decode"] > 0 and sum(clock.shares().values()) == pytest.approx(1.0)


def test_decode_ahead_reraises_after_the_frames_before_the_error():
    def source():
        yield from _frames(3)
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for f in DecodeAhead(source(), depth=2):
            got.append(f.t)
    assert got == [0.0, 1.0, 2.0]


def test_decode_ahead_stops_a_blocked_thread():
    da = DecodeAhead(_frames(10 ** 6), depth=2)
    it = iter(da)
    assert next(it).t == 0.0
    it.close()  # the consumer leaves: the thread, blocked on a full queue, ends
    da.thread.join(2.0)
    assert not da.thread.is_alive()
    with pytest.raises(ValueError, match="depth"):
        DecodeAhead([], depth=0)


def test_prepare_ahead_is_used_once_by_embed_chunk(monkeypatch):
    a = tiny_adapter("tiny-smolvlm")
    frames = np.random.default_rng(0).integers(0, 256, (1, 72, 128, 3), dtype=np.uint8)
    want = a.embed_chunk("Time=0.0-1.0s", frames).inputs_embeds
    calls = []
    real = type(a).preprocess

    def counting(self, fr):
        calls.append(1)
        return real(self, fr)

    monkeypatch.setattr(type(a), "preprocess", counting)
    a.prepare_ahead(frames)
    assert len(calls) == 1
    got = a.embed_chunk("Time=0.0-1.0s", frames).inputs_embeds
    assert len(calls) == 1 and np.array_equal(got.numpy(), want.numpy())  # the ahead result, same tokens
    a.embed_chunk("Time=0.0-1.0s", frames)  # used once: the next embed preprocesses again
    assert len(calls) == 2
    a.prepare_ahead(frames.copy())  # another array with the same pixels is not this one
    a.embed_chunk("Time=0.0-1.0s", frames)
    assert len(calls) == 4
    for _ in range(a.AHEAD_MAX + 5):  # never-embedded chunks (dropped backlog) do not pile up
        a.prepare_ahead(frames.copy())
    assert len(a._ahead) <= a.AHEAD_MAX
    a._ahead.clear()  # the adapter may be shared with other tests


def test_background_session_reports_stage_times(tmp_path):
    from vstream.api import Agent
    from vstream.sources import SyntheticSource, write_video

    src = SyntheticSource(seed=1, duration_s=4, fps=15.0, size=(64, 48))
    clip = write_video(tmp_path / "c.mp4", [f.rgb for f in src], fps=15.0)
    agent = Agent.from_pretrained("tiny-smolvlm", device="cpu")
    s = agent.watch(str(clip), fps=1.0)
    try:
        assert s.wait_chunks(10 ** 9, timeout=120)
        st = s.stats()
    finally:
        s.close()
    assert st["chunks"] == 4 and st["frames_in"] == 60 and st["frames_converted"] <= 1.2 * st["frames_kept"]
    assert st["frames_decoded"] == 60 - s.pipeline.source.skip_plan.skipped < 60  # dropped non-reference: not decoded
    assert set(st["stage_s"]) == {"decode", "convert", "preprocess", "model"}
    assert all(v > 0 for v in st["stage_s"].values())
    assert s.pipeline.decoder is not None and not s.pipeline.decoder.thread.is_alive()  # nothing left running
