"""Fleet: several streams on one tiny model — asking, stats, and streams that fail or stall.

The equivalence of batched perception with single-stream ingestion is in test_fleet_batching.py; here
the fleet's own behaviour is checked: a failing source and a stalled one never hold back the others,
events say what happened, and answers come from the right stream's memory.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import tiny_adapter
from vstream.api import Agent
from vstream.config import from_name
from vstream.fleet.core import Fleet
from vstream.sources import Frame, PushSource, SyntheticSource
from vstream.types import Answer


def _agent(name: str = "tiny-smolvlm", **changes) -> Agent:
    return Agent(tiny_adapter(name), from_name("tiny").replace(**changes))


class FailingSource:
    """Frames at 10 fps until ``fail_at_s``, then an error (a camera that drops off the network)."""

    name = "failing"
    fps = 10.0
    duration = None

    def __init__(self, fail_at_s: float) -> None:
        self.fail_at_s = fail_at_s

    def __iter__(self):
        rng = np.random.default_rng(7)
        for k in range(1000):
            t = k / 10
            if t >= self.fail_at_s:
                raise RuntimeError("camera lost: connection reset by peer")
            yield Frame(t, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))

    def close(self) -> None:
        pass


def _types(fleet, stream):
    return [e["type"] for e in fleet.events(follow=False) if e["stream"] == stream]


def test_fleet_streams_ask_stats_remove():
    with Fleet(_agent()) as fleet:
        for i in range(3):
            fleet.add(f"cam-{i}", SyntheticSource(seed=i, duration_s=4 + i, fps=4, size=(32, 32)))
        with pytest.raises(ValueError, match="already exists"):
            fleet.add("cam-0", "synthetic")
        for i in range(3):
            assert fleet.stream(f"cam-{i}").wait_chunks(4 + i, timeout=60)
        ans = fleet.ask("cam-2", "What is on screen?", timeout=60)
        assert isinstance(ans, Answer) and ans.asked_at_s == 6.0
        pieces = list(fleet.ask("cam-1", "And now?", stream=True, max_new_tokens=3))
        assert len(pieces) <= 3
        st = fleet.stats()
        assert [st["streams"][f"cam-{i}"]["chunks"] for i in range(3)] == [4, 5, 6]
        assert st["total"]["chunks"] == 15 and st["total"]["batches"] < 15  # some chunks shared a pass
        deadline = time.monotonic() + 30
        while st["total"]["streams_down"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
            st = fleet.stats()
        assert _types(fleet, "cam-0") == ["up", "down"]
        fleet.remove("cam-0")
        assert fleet.streams == ["cam-1", "cam-2"]
        with pytest.raises(ValueError, match="no stream"):
            fleet.ask("cam-0", "hello?")
        assert _types(fleet, "cam-0")[-1] == "removed"


def test_failing_and_stalled_streams_do_not_block_the_others():
    push = PushSource(name="stalls")
    rng = np.random.default_rng(3)
    with Fleet(_agent(), gap_s=1.0) as fleet:
        for i in range(2):  # two healthy cameras: endless, paced to the wall clock, one chunk a second
            fleet.add(f"ok-{i}", SyntheticSource(seed=10 + i, duration_s=float("inf"), fps=4, size=(32, 32)),
                      realtime=True)
        fleet.add("fails", FailingSource(fail_at_s=2.5))
        fleet.add("stalls", push)
        for k in range(10):  # 2.5 s of frames, then nothing
            push.push(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), t=k / 4)
        assert fleet.stream("stalls").wait_chunks(2, timeout=30)
        stall_start = time.monotonic()
        before = {i: fleet.stream(f"ok-{i}").engine.memory.chunks_ingested for i in range(2)}
        while time.monotonic() - stall_start < 10.0:  # no frames from "stalls" for 10 s
            time.sleep(0.1)
        after = {i: fleet.stream(f"ok-{i}").engine.memory.chunks_ingested for i in range(2)}
        for i in range(2):  # ~10 chunks each at their rate; allow a loaded machine half of it
            assert after[i] - before[i] >= 5, (before, after)
        st = fleet.stats()["streams"]
        assert st["fails"]["state"] == "down" and "camera lost" in st["fails"]["error"]
        assert st["fails"]["chunks"] == 2  # the chunks before the failure were ingested
        assert st["stalls"]["state"] == "stalled" and st["ok-0"]["state"] == "up"
        assert "gap" in _types(fleet, "stalls") and _types(fleet, "fails") == ["up", "down"]
        down = [e for e in fleet.events(follow=False) if e["type"] == "down"][0]
        assert "camera lost" in down["error"] and down["stream_time_s"] == 2.0
        for k in range(10, 20):  # the camera comes back
            push.push(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), t=10 + k / 4)
        assert fleet.stream("stalls").wait_chunks(3, timeout=30)
        assert _types(fleet, "stalls")[-2:] == ["gap", "up"]
        assert fleet.ask("fails", "What did you see before it failed?", timeout=60).asked_at_s == 2.0


class _Ready:
    """A stream stand-in that always has a chunk ready (for the scheduler alone)."""

    state = "up"

    def __init__(self, name: str) -> None:
        self.name = name

    def take(self):
        return self.name


def test_round_robin_serves_every_ready_stream_equally():
    import threading
    import types

    streams = {n: _Ready(n) for n in "abcde"}
    sched = types.SimpleNamespace(_lock=threading.RLock(), _streams=streams, _rr=0, max_batch=2)
    served = [c for _ in range(10) for _, c in Fleet._pick(sched)]
    assert len(served) == 20 and {n: served.count(n) for n in "abcde"} == dict.fromkeys("abcde", 4)
    assert served[:6] == ["a", "b", "c", "d", "e", "a"]  # each step starts after the last stream served


def test_realtime_stream_drops_oldest_chunks_when_perception_is_behind():
    with Fleet(_agent()) as fleet:
        s = fleet.add("cam", SyntheticSource(seed=1, duration_s=float("inf"), fps=4, size=(32, 32)), realtime=True,
                      config={"sampler.max_backlog_chunks": 1})
        assert s.wait_chunks(1, timeout=30)
        with s.engine.write_lock:  # perception cannot write this stream for 4 s of a 1-chunk-a-second source
            time.sleep(4.0)
        assert s.wait_chunks(s.engine.memory.chunks_ingested + 1, timeout=30)
        st = fleet.stats()["streams"]["cam"]
        assert st["chunks_dropped"] >= 1 and st["frames_dropped"] >= 2 * st["chunks_dropped"]
        assert fleet.stats()["total"]["chunks_dropped"] == st["chunks_dropped"]


def test_add_rejects_bad_input_and_leaves_nothing_running():
    with Fleet(_agent()) as fleet:
        with pytest.raises(ValueError, match="stream_id"):
            fleet.add("", "synthetic")
        with pytest.raises(ValueError, match="threshold"):
            fleet.add("cam", SyntheticSource(seed=0, duration_s=2, fps=4, size=(32, 32)),
                      notify=[{"text": "a door opens", "threshold": 2.0}])
        with pytest.raises(ValueError, match="nonsense"):
            fleet.add("cam", "synthetic:nonsense=1")
        assert fleet.streams == []
        fleet.add("cam", SyntheticSource(seed=0, duration_s=2, fps=4, size=(32, 32)))  # the id is free again
        assert fleet.stream("cam").wait_chunks(2, timeout=30)
