"""Clock time on a real live stream (issue 24, "done when"): ffmpeg serves an MPEG-TS stream on 127.0.0.1, a
session watches it into a memory directory, the server is stopped for a while, and a second session resumes
the directory on the same URL. Stream time runs on across the outage; wall-clock time keeps it. Then
`vstream ask DIR "..." --since T1 --until T2` answers from the entries of that clock range only, and its
evidence prints clock times. Every server is started and stopped here; every wait has a deadline.
"""
from __future__ import annotations

import datetime as dt
import re
import time
from zoneinfo import ZoneInfo

import pytest

from conftest import tiny_adapter
from test_live_servers import FFMPEG, free_port, make_clip, open_when_up, serve_ts, stop
from vstream.api import Agent
from vstream.config import from_name

BERLIN = "Europe/Berlin"
OUTAGE_S = 3.0


def _watch(agent: Agent, clip, port: int, mem, chunks: int) -> None:
    url = f"http://127.0.0.1:{port}/live.ts"
    server = serve_ts(clip, port)
    try:
        src = open_when_up(url, time.monotonic() + 30, backoff_s=0.2, max_retries=3, open_timeout_s=3.0,
                           read_timeout_s=3.0, tz=BERLIN)
        session = agent.watch(src, background=True, memory_dir=mem)
        try:
            assert session.wait_chunks(chunks, timeout=60), "the live stream gave too few chunks"
        finally:
            session.close()
    finally:
        stop(server)


@pytest.mark.skipif(FFMPEG is None, reason="needs Debian's ffmpeg")
def test_live_stream_stopped_and_resumed_answers_by_clock_range(tmp_path, capsys, monkeypatch):
    from memory.manager import MemoryManager
    from memory.store import LongTermStore
    from vstream.cli.main import main

    clip = make_clip(tmp_path / "clip.mp4", 4)
    a = tiny_adapter("tiny-smolvlm")
    agent = Agent(a, from_name("tiny").replace(model=a.name, device="cpu", dtype="float32",
                                               **{"memory.window_chunks": 2, "generation.max_new_tokens": 2}))
    mem = tmp_path / "cam.vmem"
    port = free_port()
    _watch(agent, clip, port, mem, chunks=4)
    stopped_at = time.time()
    time.sleep(OUTAGE_S)  # the camera is off
    _watch(agent, clip, port, mem, chunks=3)

    with LongTermStore.open(mem, read_only=True) as st:
        infos = sorted(st.infos(), key=lambda i: i.start_s)
    assert len(infos) >= 7 and all(i.wall_s is not None and i.tz == BERLIN for i in infos)
    second = [i for i in infos if i.wall_s > stopped_at]
    first = [i for i in infos if i.wall_s <= stopped_at]
    assert len(first) >= 4 and len(second) >= 3
    # stream time has no hole (the second session continues from the stored end) while wall time keeps the outage
    assert second[0].start_s == pytest.approx(first[-1].end_s)
    assert second[0].wall_s - first[-1].wall_end_s >= OUTAGE_S
    assert all(re.fullmatch(r"Time=\d\d:\d\d:\d\d-\d\d:\d\d:\d\d", i.text.split(" ")[0]) for i in infos)

    # a question about the second session's clock range only
    iso = lambda w: dt.datetime.fromtimestamp(w, tz=ZoneInfo(BERLIN)).isoformat()  # noqa: E731
    t1, t2 = second[0].wall_s, second[-1].wall_end_s
    placed: list[list] = []
    orig = MemoryManager.assemble_only

    def spy(self, snap, retrieved, keep):
        placed.append(list(retrieved) + [s for s in snap.live if keep(s)])
        return orig(self, snap, retrieved, keep)

    monkeypatch.setattr(MemoryManager, "assemble_only", spy)
    assert main(["ask", str(mem), "what is on screen?", "--model", "tiny-smolvlm", "--since", iso(t1),
                 "--until", iso(t2)]) == 0
    out = capsys.readouterr().out
    assert len(placed) == 1 and placed[0]
    assert all(t1 <= s.wall_s < t2 for s in placed[0])  # only entries of that clock range reach the model
    ev = out.split("evidence:")[1].strip()
    spans = re.findall(r"(\d\d:\d\d:\d\d)-(\d\d:\d\d:\d\d) vision", ev)
    assert spans and "s vision" not in ev  # clock times, not stream seconds
    clocks = {dt.datetime.fromtimestamp(i.wall_s, tz=ZoneInfo(BERLIN)).strftime("%H:%M:%S") for i in second}
    assert {s for s, _ in spans} <= clocks
