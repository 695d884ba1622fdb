"""Clock time for cameras (issue 24): wall-clock time on chunks and entries, clock markers, time-range questions.

A push source is fed frames stamped at chosen wall times in Europe/Berlin: six seconds across the spring
DST change (01:59:57 CET -> 03:00:02 CEST), then a two-hour gap; a second session resumes the memory
directory an hour later. The stored entries must show those clock times (and the gaps) while stream time
runs on. Time-range questions are checked against the entries each range must hold, with a counter on the
model: an empty range never calls it. Tiny random models: behaviour is tested, never the text.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from conftest import tiny_adapter
from vstream.api import Agent
from vstream.clock import NOTHING_RECORDED, clock_text, parse_range, parse_when
from vstream.config import from_name
from vstream.sources import Chunker, PushSource
from vstream.sources.frames import Frame

BERLIN = "Europe/Berlin"
#: 2026-03-29 00:59:57 UTC = 01:59:57 CET; at 01:00:00 UTC Berlin moves to CEST (02:00 -> 03:00)
T0 = dt.datetime(2026, 3, 29, 0, 59, 57, tzinfo=dt.timezone.utc).timestamp()
GAP = 2 * 3600.0  # the camera was off for two hours after its sixth second
RESUME = 3 * 3600.0  # the second session starts three hours after T0


def wall_of_t(t: float) -> float:
    """Session 1: stream second t was recorded at this wall time (two-hour gap after t = 6)."""
    return T0 + t + (GAP if t >= 6 else 0.0)


def berlin(wall: float) -> str:
    """Reference clock text: zoneinfo directly, not vstream.clock."""
    return dt.datetime.fromtimestamp(wall, tz=ZoneInfo(BERLIN)).strftime("%H:%M:%S")


def agent(**changes) -> Agent:
    a = tiny_adapter("tiny-smolvlm")
    fields = {"memory.window_chunks": 2, "memory.retrieve_k": 4, "generation.max_new_tokens": 2}
    fields.update(changes)
    return Agent(a, from_name("tiny").replace(model=a.name, device="cpu", dtype="float32", **fields))


def push_frames(push: PushSource, times: list[float], walls: list[float], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for t, w in zip(times, walls):
        push.push(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), t=t, wall=w)


class ModelCounter:
    """Counts forward passes of the adapter's model (single and batched)."""

    def __init__(self, adapter, monkeypatch) -> None:
        self.calls = 0
        for name in ("forward", "forward_batch"):
            orig = getattr(adapter, name)

            def wrapped(*a, _orig=orig, **kw):
                self.calls += 1
                return _orig(*a, **kw)

            monkeypatch.setattr(adapter, name, wrapped)


class PlacedSpy:
    """Records the segments of every range-limited context (``MemoryManager.assemble_only``)."""

    def __init__(self, memory, monkeypatch) -> None:
        self.placed: list[list] = []
        orig = memory.assemble_only

        def spy(snap, retrieved, keep):
            self.placed.append([s for s in retrieved] + [s for s in snap.live if keep(s)])
            return orig(snap, retrieved, keep)

        monkeypatch.setattr(memory, "assemble_only", spy)


# ---- pure parts: chunks, markers, parsing --------------------------------------------------------------


def test_chunker_clock_markers_across_dst_and_a_gap():
    frames = [Frame(t, np.zeros((8, 8, 3), np.uint8), wall_of_t(t)) for t in np.arange(0, 8, 0.5)]
    chunks = list(Chunker(1.0, tz=BERLIN, clock=True)(frames))
    assert [c.wall_s for c in chunks] == [wall_of_t(c.start_s) for c in chunks]
    assert [c.marker for c in chunks] == [f"Time={berlin(wall_of_t(c.start_s))}-{berlin(wall_of_t(c.start_s) + 1)}"
                                          for c in chunks]
    assert chunks[2].marker == "Time=01:59:59-03:00:00"  # the DST change inside one chunk
    assert chunks[6].marker == "Time=05:00:03-05:00:04"  # after the two-hour gap (CEST)
    # stream markers for the same chunks, and none without wall time
    assert [c.marker for c in Chunker(1.0, tz=BERLIN, clock=False)(frames)][:1] == ["Time=0.0-1.0s"]
    plain = list(Chunker(1.0, clock=True)(Frame(f.t, f.rgb) for f in frames))
    assert plain[0].wall_s is None and plain[0].marker == "Time=0.0-1.0s"


def test_chunk_wall_time_is_at_the_chunk_start():
    # frames a quarter second into each chunk: the chunk's wall time is moved back to its start
    frames = [Frame(0.25 + k * 0.5, np.zeros((8, 8, 3), np.uint8), T0 + 0.25 + k * 0.5 + 0.01) for k in range(4)]
    chunks = list(Chunker(1.0, origin=0.0, tz=BERLIN, clock=True)(frames))
    assert [(c.start_s, c.wall_s, c.wall_end_s) for c in chunks] == [(0.0, T0 + 0.01, T0 + 1.01),
                                                                     (1.0, T0 + 1.01, T0 + 2.01)]


def test_text_entries_take_the_clock_of_their_own_time():
    from conftest import make_chunks
    from vstream.engine.core import Engine

    a = tiny_adapter("tiny-smolvlm")
    eng = Engine(a, from_name("tiny").replace(model=a.name, device="cpu", dtype="float32",
                                             **{"memory.long_term": False}))
    eng.start()
    for c in make_chunks(2):
        c.wall_s, c.tz, c.clock = T0 + 100 + c.start_s, BERLIN, True
        eng.ingest(c)
    seg = eng.add_text("a van stops", at_s=1.5, end_s=1.75, source="speech")
    assert (seg.wall_s, seg.wall_end_s, seg.tz) == (T0 + 101.5, T0 + 101.75, BERLIN)
    assert eng.memory.live[0].text == f"Time={berlin(T0 + 100)}-{berlin(T0 + 101)}"


def test_parse_when_forms_and_bad_inputs():
    now = lambda: T0 + 3600  # noqa: E731 - 03:59:57 CEST
    assert parse_when("10m", tz=BERLIN, now=now) == pytest.approx(T0 + 3000, abs=1)
    assert parse_when("2h", tz=BERLIN, now=now) == pytest.approx(T0 - 3600, abs=1)
    assert parse_when("2026-03-29T03:00:00", tz=BERLIN) == T0 + 3  # naive ISO: the stream's zone (CEST)
    assert parse_when("2026-03-29T01:00:00Z", tz=BERLIN) == T0 + 3
    assert parse_when(dt.datetime(2026, 3, 29, 1, 59, 57), tz=BERLIN) == T0  # CET
    assert parse_when("yesterday 08:00", tz=BERLIN, now=now) == dt.datetime(
        2026, 3, 28, 8, 0, tzinfo=ZoneInfo(BERLIN)).timestamp()
    assert parse_when("1774745998.5", tz=BERLIN) == 1774745998.5  # a number in a string: epoch seconds
    assert parse_range(None, None) is None
    assert parse_range("2026-03-29T03:00:00", None, tz=BERLIN) == (T0 + 3, math.inf)
    for since, until, words in (("2026-03-29T04:00", "2026-03-29T03:00", "not before until"),
                                ("2026-03-29T04:00", "2026-03-29T04:00", "not before until"),
                                ("sometime soonish", None, "cannot read 'sometime soonish'"),
                                ({"x": 1}, None, "is not a time")):
        with pytest.raises(ValueError) as e:
            parse_range(since, until, tz=BERLIN)
        assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        parse_range("10m", None, tz="Mars/Olympus")


def test_question_range_from_the_question_text():
    from vstream.clock import question_range

    now = lambda: dt.datetime(2026, 3, 29, 15, 0, tzinfo=ZoneInfo(BERLIN)).timestamp()  # noqa: E731
    at = lambda h, m: dt.datetime(2026, 3, 29, h, m, tzinfo=ZoneInfo(BERLIN)).timestamp()  # noqa: E731
    assert question_range("what happened at the dock around 14:05?", tz=BERLIN, now=now) == (at(14, 0), at(14, 10))
    assert question_range("who came in during the last ten minutes?", tz=BERLIN, now=now) == (at(14, 50), at(15, 0))
    assert question_range("what happened 2 hours ago?", tz=BERLIN, now=now) == (at(13, 0), at(15, 0))
    assert question_range("what is on screen?", tz=BERLIN, now=now) is None
    assert question_range("anything yesterday?", tz=BERLIN, now=now) is None  # a day word alone: no span


# ---- a push source with chosen wall times, stored, resumed, asked about ------------------------------------


@pytest.fixture(scope="module")
def clocked(tmp_path_factory):
    """Session 1 (closed: everything stored) and session 2 (open: resumed an hour later, 4 chunks)."""
    mem = tmp_path_factory.mktemp("clock") / "cam.vmem"
    ag = agent()
    push = PushSource(tz=BERLIN, name="dock-cam")
    times = [t / 2 for t in range(20)]  # 10 s at 2 fps
    push_frames(push, times, [wall_of_t(t) for t in times])
    push.end()
    s1 = ag.watch(push, background=False, memory_dir=mem)
    s1.run_to_end()
    s1.close()
    push2 = PushSource(tz=BERLIN, name="dock-cam")
    times2 = [t / 2 for t in range(8)]  # 4 s
    push_frames(push2, times2, [T0 + RESUME + t for t in times2], seed=1)
    push2.end()
    s2 = ag.watch(push2, background=False, memory_dir=mem)
    s2.run_to_end()
    yield mem, s2
    s2.close()


def stored(mem):
    from memory.store import LongTermStore

    with LongTermStore.open(mem, read_only=True) as st:
        return st.meta.format_version, sorted(st.infos(), key=lambda i: i.start_s)


def test_stored_clock_times_dst_gap_and_resume(clocked):
    mem, s2 = clocked
    version, infos = stored(mem)
    assert version == 4  # entries with wall time: the clock format
    first = [i for i in infos if i.start_s < 10]
    assert [(i.start_s, i.wall_s, i.wall_end_s, i.tz) for i in first] == [
        (float(k), wall_of_t(k), wall_of_t(k) + 1, BERLIN) for k in range(10)]
    assert [i.text for i in first[:4]] == ["Time=01:59:57-01:59:58", "Time=01:59:58-01:59:59",
                                           "Time=01:59:59-03:00:00", "Time=03:00:00-03:00:01"]
    assert first[6].text == "Time=05:00:03-05:00:04"  # the two hours the camera was off show
    # the resumed session: stream time runs on from the stored end, wall time keeps the outage
    second = [i for i in infos if i.start_s >= 10]
    assert [(i.start_s, i.wall_s) for i in second] == [(10.0, T0 + RESUME), (11.0, T0 + RESUME + 1)]
    live = [s for s in s2.engine.memory.live if s.kind == "vision"]
    assert [(s.start_s, s.wall_s, s.text) for s in live] == [
        (12.0, T0 + RESUME + 2, f"Time={berlin(T0 + RESUME + 2)}-{berlin(T0 + RESUME + 3)}"),
        (13.0, T0 + RESUME + 3, f"Time={berlin(T0 + RESUME + 3)}-{berlin(T0 + RESUME + 4)}")]
    assert second[0].wall_s - first[-1].wall_end_s > 3600 - 11  # the gap between the sessions


def test_empty_range_answers_without_calling_the_model(clocked, monkeypatch):
    _, s2 = clocked
    counter = ModelCounter(s2.adapter, monkeypatch)
    in_gap = (T0 + 7, T0 + GAP)  # the camera was off
    ans = s2.ask("what happened?", since=in_gap[0], until=in_gap[1], history=False)
    assert ans.text == NOTHING_RECORDED and ans.evidence == [] and counter.calls == 0
    ans = s2.ask("what happened?", since="2026-03-29T03:00:10", until="2026-03-29T04:00:00", history=False)
    assert ans.text == NOTHING_RECORDED and counter.calls == 0  # ISO strings in the stream's zone (CEST)
    ans = s2.ask("what happened?", since=T0 + 1, until=T0 + 2, history=False)
    assert ans.text != NOTHING_RECORDED and counter.calls > 0
    calls = counter.calls
    # parse_time: the question's own time of day sets the range (the latest 03:30 before now: nothing recorded)
    ans = s2.ask("what happened around 03:30?", parse_time=True, history=False, until=None)
    assert ans.text == NOTHING_RECORDED and counter.calls == calls
    # with history (the default), the empty answer is not kept in the conversation: no forward pass writes it
    s2.ask("what happened?", since=in_gap[0], until=in_gap[1])
    s2.engine.apply_inbox()
    assert counter.calls == calls


def _check_range(s2, monkeypatch, since, until, want_lt, want_live):
    spy = PlacedSpy(s2.engine.memory, monkeypatch)
    ans = s2.ask("what is there?", since=since, until=until, history=False)
    assert len(spy.placed) == 1
    placed = spy.placed[0]
    assert sorted(s.start_s for s in placed if s.kind == "vision") == sorted(want_lt + want_live)
    lt = sorted(e.start_s for e in ans.evidence if e.tier == "long_term" and e.source == "vision")
    win = sorted(e.start_s for e in ans.evidence if e.tier == "window")
    assert lt == sorted(want_lt) and win == sorted(want_live)
    for e in ans.evidence:  # both times on the evidence, all in range
        assert e.wall_s is not None and e.tz == BERLIN and e.wall_s < until and e.wall_end_s > since
    return ans


def test_range_exact_boundaries_long_term_only(clocked, monkeypatch):
    _, s2 = clocked
    # [T0+1, T0+3): entries 1 and 2; entry 0 ends at T0+1 and entry 3 starts at T0+3: both out (half-open)
    _check_range(s2, monkeypatch, T0 + 1, T0 + 3, [1.0, 2.0], [])
    _check_range(s2, monkeypatch, T0 + 1.5, T0 + 2.5, [1.0, 2.0], [])  # overlap counts
    _check_range(s2, monkeypatch, wall_of_t(6), wall_of_t(7), [6.0], [])  # after the gap


def test_range_window_only_and_both(clocked, monkeypatch):
    _, s2 = clocked
    _check_range(s2, monkeypatch, T0 + RESUME + 2, T0 + RESUME + 4, [], [12.0, 13.0])  # only the live window
    _check_range(s2, monkeypatch, T0 + RESUME + 1, T0 + RESUME + 3, [11.0], [12.0])  # a stored entry and the window
    _check_range(s2, monkeypatch, wall_of_t(9), T0 + RESUME + 1, [9.0, 10.0], [])  # across the sessions' gap


def test_search_export_timeline_carry_both_times(clocked):
    from vstream.session import export, search, timeline

    mem, _ = clocked
    hits = search(mem, "Time", top=20, since=T0, until=T0 + 3)
    # the three chunks show the same (random) picture text: one moment spanning them, with both times
    assert [(h.start_s, h.end_s, h.wall_s, h.wall_end_s, h.tz) for h in hits] == [(0.0, 3.0, T0, T0 + 3, BERLIN)]
    hits = search(mem, "Time", top=20, since=T0 + 5, until=wall_of_t(7))  # not merged across the 2-hour gap
    assert sorted((h.start_s, h.wall_s) for h in hits) == [(5.0, T0 + 5), (6.0, wall_of_t(6))]
    assert search(mem, "Time", since=T0 + 7, until=T0 + GAP) == []
    assert json.loads(export(mem, "json", since=T0, until=T0 + 3)) == {"segments": []}  # no speech stored
    minutes = timeline(mem)
    assert [m.label for m in minutes] == ["01:59", "03:00", "05:00", "05:59"]
    assert [len(m.items) for m in minutes] == [3, 3, 4, 2]
    assert minutes[0].items[0].wall_s == T0 and minutes[0].thumbnail is not None
    assert [m.label for m in timeline(mem, T0 + GAP, None)] == ["05:00", "05:59"]
    assert timeline(mem, T0 + 7, T0 + GAP) == []


# ---- bad inputs on the CLI: one line, exit 2, before a model loads -----------------------------------------


@pytest.mark.parametrize("argv,words", [
    (["ask", "{mem}", "q", "--since", "2026-03-29T05:00", "--until", "2026-03-29T04:00"], "not before until"),
    (["ask", "{mem}", "q", "--since", "the day after never"], "cannot read 'the day after never'"),
    (["ask", "{mem}", "q", "--since", "10m", "--tz", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
    (["search", "{mem}", "q", "--until", "whenever-ish"], "cannot read 'whenever-ish'"),
    (["export", "{mem}", "--srt", "--since", "2026-03-29T05:00", "--until", "2026-03-29T04:00"], "not before until"),
    (["timeline", "{mem}", "--tz", "Nowhere/Town"], "unknown time zone 'Nowhere/Town'"),
    (["watch", "synthetic:duration=2", "--start-at", "last blue moon", "--model", "tiny-smolvlm"],
     "--start-at: cannot read 'last blue moon'"),
])
def test_bad_time_inputs_are_one_line_exit_2(clocked, capsys, monkeypatch, argv, words):
    import vstream.models.registry as registry
    from vstream.cli.main import main

    mem, _ = clocked
    monkeypatch.setattr(registry, "load_model", lambda *a, **k: pytest.fail("model loaded before the time check"))
    code = main([a.replace("{mem}", str(mem)) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err


def test_cli_ask_range_prints_clock_times(clocked, capsys, monkeypatch):
    from vstream.cli.main import main

    mem, _ = clocked
    spy_placed: list = []
    from memory.manager import MemoryManager

    orig = MemoryManager.assemble_only

    def spy(self, snap, retrieved, keep):
        spy_placed.append([s.start_s for s in retrieved] + [s.start_s for s in snap.live if keep(s)])
        return orig(self, snap, retrieved, keep)

    monkeypatch.setattr(MemoryManager, "assemble_only", spy)
    code = main(["ask", str(mem), "what is on the dock?", "--model", "tiny-smolvlm", "--since",
                 "2026-03-29T01:59:58", "--until", "2026-03-29T03:00:00", "--max-new-tokens", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert sorted(spy_placed[0]) == [1.0, 2.0]  # 01:59:58-01:59:59 and 01:59:59-03:00:00 (CET -> CEST)
    ev = out.split("evidence:")[1]
    assert "01:59:58-01:59:59 vision" in ev and "01:59:59-03:00:00 vision" in ev and "s vision" not in ev
    code = main(["ask", str(mem), "anything?", "--model", "tiny-smolvlm", "--since", "2026-03-29T03:00:30",
                 "--until", "2026-03-29T03:30:00", "--json"])
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert code == 0 and line["text"] == NOTHING_RECORDED and line["evidence"] == []


def test_cli_timeline_is_read_only(clocked, capsys, tmp_path):
    import hashlib

    from vstream.cli.main import main

    mem, _ = clocked
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in mem.rglob("*") if p.is_file()}
    assert main(["timeline", str(mem), "--since", "2026-03-29T01:59:00", "--until", "2026-03-29T03:01:00"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[:2] == ["01:59", "  01:59:57  vision"]
    assert "03:00:02  vision" in text and "05:00" not in text
    assert main(["timeline", str(mem), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["minutes"][0]["clock"] == "2026-03-29T01:59:00.000+01:00" and doc["minutes"][1]["tz"] == BERLIN
    assert main(["timeline", str(mem), "--html", "--out", str(tmp_path / "t.html")]) == 0
    page = (tmp_path / "t.html").read_text()
    assert page.count("<tr>") == 4 and "data:image/jpeg;base64," in page
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in mem.rglob("*") if p.is_file()}


# ---- format upgrade ------------------------------------------------------------------------------------------


def test_format_4_only_with_wall_time_and_older_stores_read(tmp_path, monkeypatch):
    import memory.types as mtypes
    from _memory_helpers import make_segment, meta as make_meta
    from memory.store import LongTermStore
    from memory.store_io import read_infos

    meta = make_meta()
    plain, clocked = tmp_path / "plain", tmp_path / "clocked"
    with LongTermStore(meta, plain) as st:  # no wall time: written as format 1, read as before
        st.add(make_segment(0, meta))
    assert json.loads((plain / "config.json").read_text())["format_version"] == 1
    line = json.loads((plain / "journal.jsonl").read_text().splitlines()[0])
    assert "wall_s" not in line and "tz" not in line  # an older reader's journal, byte for byte
    assert [(i.wall_s, i.tz) for i in read_infos(plain)] == [(None, "")]
    with LongTermStore(meta, clocked) as st:
        st.add(make_segment(0, meta))
        assert st.meta.format_version == 1
        seg = make_segment(1, meta)
        seg.wall_s, seg.wall_end_s, seg.tz = T0, T0 + 1, BERLIN
        st.add(seg)
        assert st.meta.format_version == 4
        assert st.get(1).wall_s == T0 and st.get(1).tz == BERLIN
    with LongTermStore.open(clocked, read_only=True) as st:
        assert [(i.wall_s, i.wall_end_s, i.tz) for i in st.infos()] == [(None, None, ""), (T0, T0 + 1, BERLIN)]
    # an older reader (format 3) refuses the clocked store in one line, and still reads the plain one
    monkeypatch.setattr(mtypes, "FORMAT_VERSION", 3)
    with pytest.raises(ValueError) as e:
        LongTermStore.open(clocked, read_only=True)
    assert "format version 4, newer than this vstream supports (3)" in str(e.value) and "\n" not in str(e.value)
    with LongTermStore.open(plain, read_only=True) as st:
        assert len(st) == 1


# ---- the fleet and the HTTP API ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet():
    from vstream.fleet.core import Fleet

    ag = agent()
    f = Fleet(ag)
    push = PushSource(tz=BERLIN, name="gate")
    times = [t / 2 for t in range(12)]
    push_frames(push, times, [wall_of_t(t) for t in times], seed=2)
    push.end()
    f.add("gate", push)
    f.stream("gate").wait_chunks(6, timeout=120)
    yield f
    f.close()


def test_fleet_ask_and_ask_all_in_range(fleet, monkeypatch):
    counter = ModelCounter(fleet.agent.adapter, monkeypatch)
    ans = fleet.ask("gate", "who came in?", since=T0 + 7, until=T0 + 60, history=False)
    assert ans.text == NOTHING_RECORDED and counter.calls == 0
    assert fleet.ask_all("who came in?", since=T0 + 7, until=T0 + 60) == [] and counter.calls == 0
    ans = fleet.ask("gate", "who came in?", since=T0 + 1, until=T0 + 3, history=False)
    assert ans.evidence and all(T0 + 1 <= e.wall_s < T0 + 3 for e in ans.evidence)
    hits = fleet.ask_all("who came in?", since=T0 + 4, until=T0 + 6, evidence=5)
    assert hits and all(T0 + 4 <= e.wall_s < T0 + 6 for e in hits[0].evidence)
    with pytest.raises(ValueError, match="not before until"):
        fleet.ask_all("q", since=T0 + 6, until=T0 + 4)


class _Served:
    """What the HTTP layer calls on a RayFleet (request ids, the question-token cap), over a local Fleet."""

    def __init__(self, fleet):
        self.fleet = fleet

    def ask(self, sid, question, *, request_id=None, max_question_tokens=None, **kw):
        return self.fleet.ask(sid, question, **kw)

    def ask_all(self, question, **kw):
        return self.fleet.ask_all(question, **kw)

    def cancel(self, sid, request_id):
        return False


def test_http_ask_and_search_pass_the_range(fleet):
    from starlette.testclient import TestClient

    import vstream.serve.http as http

    saved = dict(http._STATE)
    http._STATE.update(fleet=_Served(fleet), token=None)
    try:
        c = TestClient(http.app)
        empty = c.post(f"/v1/streams/gate/ask?since={T0 + 7}&until={T0 + 60}", json={"question": "q",
                                                                                    "history": False})
        assert empty.status_code == 200 and empty.json()["text"] == NOTHING_RECORDED
        iso = lambda w: dt.datetime.fromtimestamp(w, tz=ZoneInfo(BERLIN)).isoformat()  # noqa: E731
        r = c.post("/v1/streams/gate/ask?since=" + iso(T0 + 1).replace("+", "%2B"),
                   json={"question": "q", "until": iso(T0 + 3), "history": False, "max_new_tokens": 2})
        assert r.status_code == 200
        ev = r.json()["evidence"]
        assert ev and all(T0 + 1 <= e["wall_s"] < T0 + 3 and e["tz"] == BERLIN for e in ev)
        bad = c.post("/v1/streams/gate/ask", json={"question": "q", "since": "soonish maybe"})
        assert bad.status_code == 400 and "cannot read 'soonish maybe'" in bad.json()["error"]["message"]
        s = c.get("/v1/search", params={"q": "gate", "since": iso(T0 + 4), "until": iso(T0 + 6)})
        assert s.status_code == 200
        assert all(T0 + 4 <= e["wall_s"] < T0 + 6 for h in s.json()["results"] for e in h["evidence"])
        assert c.get("/v1/search", params={"q": "gate", "since": iso(T0 + 7), "until": iso(T0 + 60)}).json()[
            "results"] == []
    finally:
        http._STATE.clear()
        http._STATE.update(saved)


def test_clock_text_is_the_zone_reference():
    for w in (T0, T0 + 3, T0 + GAP, 1782907503.0):
        assert clock_text(w, BERLIN) == berlin(w)


def test_fleet_live_stream_readded_on_its_memory_continues_after_it(tmp_path):
    from memory.store import LongTermStore
    from vstream.fleet.core import Fleet

    mem = tmp_path / "gate.vmem"
    with Fleet(agent()) as f:
        for run, (t_off, seed) in enumerate(((0.0, 3), (3600.0, 4))):
            push = PushSource(tz=BERLIN, name="gate-cam")
            times = [t / 2 for t in range(6)]  # 3 s
            push_frames(push, times, [T0 + t_off + t for t in times], seed=seed)
            push.end()
            s = f.add("gate", push, memory_dir=mem)
            assert s.wait_chunks(3, timeout=120)
            f.remove("gate")
    with LongTermStore.open(mem, read_only=True) as st:
        got = sorted((i.start_s, i.wall_s) for i in st.infos())
    # the second run's chunks are stored after the first's (not dropped as repeats), an hour later on the clock
    assert got == [(0.0, T0), (1.0, T0 + 1), (2.0, T0 + 2), (3.0, T0 + 3600), (4.0, T0 + 3601), (5.0, T0 + 3602)]
