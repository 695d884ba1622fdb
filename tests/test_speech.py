"""Speech into memory end to end (issue 17): a lecture clip made here, watched with `--asr` through the CLI,
then searched, asked and exported; every check compares with what was spoken (espeak-ng at known times).

One module-scoped memory directory serves all the CLI checks (the watch is the slow part).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from _lecture_helpers import edit_distance, lecture_module, need_tools, words
from conftest import REPO

# Sentences that only the sound says (the slides show a title and one line about something else), each with a
# paraphrased question sharing almost none of its words.
SAID = [("Heat Engines\nWork from temperature differences", [
            ("Steam trains carried most passengers across the country a century ago.",
             "How did people usually travel long distances a hundred years ago?"),
            ("A car engine turns only a third of its fuel into motion.",
             "How much of the petrol in an automobile actually moves it?")]),
        ("Lightning\nStatic charge in storm clouds", [
            ("Count the seconds between the flash and the thunder to find the distance.",
             "How can you tell how far away a storm is?"),
            ("Tall buildings carry copper rods that guide the current into the ground.",
             "How are skyscrapers protected from electric strikes?")]),
        ("Ocean Tides\nThe moon pulls the sea", [
            ("In some coastal towns the water rises higher than a house.",
             "How high can the sea climb at certain seaside places?")])]
MODEL = "tiny-qwen2.5-vl"


def _cli(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "vstream", *args], capture_output=True, text=True, timeout=timeout,
                       cwd=REPO, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    return p


def _json_lines(p: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def _tree_hash(d) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        h.update(str(p.relative_to(d)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """(clip meta, memory dir, speech lines printed by `watch --asr --json`)."""
    need_tools()
    tmp = tmp_path_factory.mktemp("speech")
    clip = tmp / "lecture.mp4"
    meta = lecture_module().build_lecture(clip, SAID, width=320, height=180, fps=2.0)
    mem = tmp / "mem"
    p = _cli("watch", str(clip), "--model", MODEL, "--asr", "--memory-dir", str(mem), "--json")
    lines = _json_lines(p)
    speech = [ln for ln in lines if ln["type"] == "speech"]
    stats = [ln for ln in lines if ln["type"] == "stats"][0]
    return meta, mem, speech, stats


def test_transcript_through_the_pipeline_matches_the_spoken_text(watched, capsys):
    meta, _mem, speech, stats = watched
    ref = words(" ".join(s["text"] for s in meta["sentences"]))
    hyp = words(" ".join(s["text"] for s in speech))
    wer = edit_distance(ref, hyp) / len(ref)
    with capsys.disabled():
        print(f"\n[speech] WER through `vstream watch --asr`: {wer:.3f} ({len(ref)} words), asr stats: "
              f"rtf={stats['asr']['rtf']:.3f} dropped_s={stats['asr']['dropped_s']}")
    assert wer < 0.35, (wer, hyp)
    assert stats["asr"]["dropped_s"] == 0  # a file is watched at its own pace: the recogniser is waited for
    assert stats["chunks"] >= int(meta["duration_s"])


def test_spoken_words_are_placed_within_a_second_in_transcript_and_memory(watched):
    meta, mem, speech, _ = watched
    from vstream.api import transcript

    stored = [ln for ln in transcript(mem) if ln.source == "speech"]
    assert [(ln.start_s, ln.end_s, ln.text) for ln in stored] == [(s["start_s"], s["end_s"], s["text"]) for s in speech]
    heard = [(words(w)[:1], a, seg) for seg in speech for w, a, _b in seg["words"]]
    placed = 0
    for sent in meta["sentences"]:
        w0, w1 = words(sent["text"])[:2]
        # the sentence's first word, recognised as itself and followed by its second word
        near = [(a, seg) for i, (w, a, seg) in enumerate(heard[:-1])
                if w == [w0] and heard[i + 1][0] == [w1] and abs(a - sent["start_s"]) < 3.0]
        if not near:
            continue
        placed += 1
        a, seg = near[0]
        assert abs(a - sent["start_s"]) <= 1.0, (a, sent)  # in the transcript
        entry = [ln for ln in stored if ln.start_s == seg["start_s"]][0]  # its memory entry spans that second
        assert entry.start_s - 1.0 <= sent["start_s"] <= entry.end_s
        if seg["words"][0][1] == a:  # the sentence opens the entry: the entry starts within a second of it
            assert abs(entry.start_s - sent["start_s"]) <= 1.0
    assert placed >= len(meta["sentences"]) - 1
    # the vision entry of those seconds carries the transcript in its text (read straight from the journal)
    rows = [json.loads(x) for x in (mem / "journal.jsonl").read_text().splitlines()]
    vision = {r["start_s"]: r["text"] for r in rows if r["op"] == "add" and r["kind"] == "vision"}
    s0 = meta["sentences"][0]
    sec = float(int(s0["start_s"]) + 1)  # a chunk well inside the first sentence
    assert "speech:" in vision[sec] and words(speech[0]["text"])[0] in words(vision[sec])


def test_search_finds_the_spoken_moment_and_never_writes(watched, tmp_path, capsys):
    meta, mem, _, _ = watched
    before = _tree_hash(mem)
    qs = [s["question"] for s in meta["sentences"]]
    p = _cli("search", str(mem), *qs, "--json", "--top", "5", "--thumbs-dir", str(tmp_path / "thumbs"))
    moments = [m for m in _json_lines(p) if m["type"] == "moment"]
    hits = 0
    for sent in meta["sentences"]:
        top = [m for m in moments if m["query"] == sent["question"]]
        assert 1 <= len(top) <= 5
        hits += any(m["start_s"] < sent["end_s"] and sent["start_s"] < m["end_s"] for m in top)
        assert all(m["thumbnail"] and os.path.getsize(m["thumbnail"]) > 0 for m in top)
    recall = hits / len(meta["sentences"])
    first = [m for m in moments if m["rank"] == 1]
    with capsys.disabled():
        print(f"\n[speech] search recall@5 on {len(qs)} paraphrased questions: {recall:.2f}; "
              f"top-1 from speech: {sum(m['source'] == 'speech' for m in first)}/{len(first)}")
    assert recall >= 0.9
    assert _tree_hash(mem) == before  # search is read-only


def test_answers_cite_speech_spans(watched):
    meta, mem, _, _ = watched
    sent = meta["sentences"][2]
    p = _cli("ask", str(mem), sent["question"], "--model", MODEL, "--json", "--retriever", "text",
             "--max-new-tokens", "2")
    ans = [ln for ln in _json_lines(p) if ln["type"] == "answer"][0]
    speech = [e for e in ans["evidence"] if e["source"] == "speech"]
    assert speech and speech[0]["tier"] == "long_term"
    assert any(e["start_s"] < sent["end_s"] and sent["start_s"] < e["end_s"] for e in speech)


def _parse_cues(text: str, sep: str) -> list[tuple[float, float, str]]:
    """(start, end, text) of SRT/VTT cues, parsed here independently of the exporter."""
    def sec(stamp: str) -> float:
        h, m, rest = stamp.split(":")
        s, ms = rest.split(sep)
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000
    pat = rf"(\d\d:\d\d:\d\d{re.escape(sep)}\d\d\d) --> (\d\d:\d\d:\d\d{re.escape(sep)}\d\d\d)\n(.+)"
    return [(sec(a), sec(b), t.strip()) for a, b, t in re.findall(pat, text)]


def test_export_srt_vtt_json_match_the_segments(watched, tmp_path):
    _meta, mem, speech, _ = watched
    before = _tree_hash(mem)
    out = tmp_path / "t.srt"
    _cli("export", str(mem), "--srt", "--out", str(out))
    srt = out.read_text()
    from vstream.api import export

    vtt = export(mem, "vtt")
    js = json.loads(export(mem, "json"))["segments"]
    want = [(round(s["start_s"], 3), round(s["end_s"], 3), s["text"]) for s in speech]
    assert [(round(a, 3), round(b, 3), t) for a, b, t in _parse_cues(srt, ",")] == want
    assert re.match(r"^\d+\n", srt)
    assert vtt.startswith("WEBVTT\n") and [(round(a, 3), round(b, 3), t) for a, b, t in _parse_cues(vtt, ".")] == want
    assert [(round(s["start_s"], 3), round(s["end_s"], 3), s["text"]) for s in js if s["source"] == "speech"] == want
    assert _tree_hash(mem) == before


def test_pushed_audio_is_recognised_on_the_frames_clock():
    """The app's path: frames into a PushSource, sound into the session's AudioPush, with explicit times."""
    need_tools()
    import numpy as np

    from conftest import tiny_adapter
    from vstream.api import Agent
    from vstream.sources.audio_push import AudioPush
    from vstream.config import from_name
    from vstream.sources import PushSource

    mod = lecture_module()
    said = "Count the seconds between the flash and the thunder to find the distance."
    x = mod.speak(said)  # [N] int16 at 22050 Hz
    lead = 2.0
    agent = Agent(tiny_adapter(MODEL), from_name("tiny"))
    src = PushSource()
    with agent.watch(src, asr=True) as session:
        push = session.audio_push
        assert isinstance(push, AudioPush)
        dur = lead + len(x) / mod.SPEECH_RATE + 1.0
        audio = np.zeros(int(dur * mod.SPEECH_RATE), np.int16)
        k = int(lead * mod.SPEECH_RATE)
        audio[k:k + len(x)] = x
        step = mod.SPEECH_RATE // 2
        for i in range(0, len(audio), step):  # half-second pieces, as a microphone callback would give
            push.push(audio[i:i + step], mod.SPEECH_RATE, t=i / mod.SPEECH_RATE)
        for j in range(int(dur * 2)):
            src.push(np.full((48, 64, 3), 10 * j % 255, np.uint8), t=j / 2)
        src.end()
        session.run_to_end()
        segs = session.transcript
        st = session.stats()["asr"]
    heard = words(" ".join(s.text for s in segs))
    assert edit_distance(words(said), heard) / len(words(said)) < 0.35, heard
    assert abs(segs[0].start_s - lead) <= 1.0  # on the frames' clock
    assert st["dropped_s"] == 0 and st["segments"] == len(segs)
