"""Speech as text entries in long-term memory (format 2), the read-only reader, and one clock for every backend."""
from __future__ import annotations

import dataclasses
import json
import subprocess

import numpy as np
import pytest
import torch

from _memory_helpers import make_segment, meta
from memory.longterm import LongTerm, LongTermConfig
from memory.manager import MemoryManager
from memory.segment import TEXT, Segment
from memory.store import LongTermStore
from memory.store_io import read_infos


def _speech(start: float, end: float, text: str, m=None) -> Segment:
    seg = make_segment(0, m, tokens=4, text=text, summary=False)
    return dataclasses.replace(seg, kind=TEXT, start_s=start, end_s=end, thumbnail=None, chunk_index=None,
                               source="speech")


def test_speech_entry_round_trip_and_format_upgrade_of_an_old_store(tmp_path):
    d = tmp_path / "m"
    old = dataclasses.replace(meta(), format_version=1)
    with LongTermStore(old, d) as st:  # a store as vstream wrote it before text entries existed
        st.add(make_segment(1))
    assert json.loads((d / "config.json").read_text())["format_version"] == 1
    with LongTermStore.open(d, expected=meta()) as st:  # format 1 is read by this version
        assert st.meta.format_version == 1 and len(st) == 1
        eid = st.add(_speech(0.5, 3.25, "Time=0.5-3.2s speech: hello there"))
        got = st.get(eid)
        assert got.kind == TEXT and got.source == "speech" and (got.start_s, got.end_s) == (0.5, 3.25)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["format_version"] == 2  # marked before the first text entry: an older reader refuses it
    infos = read_infos(d)
    assert [(i.kind, i.source) for i in infos] == [("vision", ""), ("text", "speech")]
    with LongTermStore.open(d) as st:
        assert [(i.kind, i.source) for i in st.infos()] == [("vision", ""), ("text", "speech")]


def test_read_infos_writes_nothing_and_skips_a_cut_off_line(tmp_path):
    d = tmp_path / "m"
    with LongTermStore(meta(), d) as st:
        st.add(make_segment(1))
        st.add(make_segment(2))
    j = d / "journal.jsonl"
    data = j.read_bytes()
    j.write_bytes(data[:-20])  # the last line is cut short (a crash while appending)
    before = j.read_bytes()
    assert [i.entry_id for i in read_infos(d)] == [0]
    assert j.read_bytes() == before


def test_evicted_speech_goes_to_long_term_and_the_previous_text_block(tmp_path):
    lt = LongTerm.create(meta(), LongTermConfig(), tmp_path / "m")
    ident = lambda k, d: k  # noqa: E731 - positions do not matter here
    from transformers import DynamicCache

    mm = MemoryManager(rotate=ident, new_cache=DynamicCache, window_chunks=2, text_window_tokens=4,
                       prev_text_head=8, prev_text_tail=8, on_evict=lt.on_evict)
    plain = dataclasses.replace(make_segment(3, tokens=4, summary=False), kind=TEXT)  # a question and answer
    for seg in (_speech(0.0, 1.0, "a"), make_segment(1), _speech(1.0, 2.0, "b"), plain, make_segment(4)):
        mm.commit(seg)  # text window of 4 tokens: each new text pushes the previous one out
    assert mm.prev_head is not None and mm.prev_head.n_tokens == 8  # all text also joined the previous-text block
    kinds = [(i.kind, i.source, i.start_s) for i in lt.store.infos()]
    assert kinds == [("text", "speech", 0.0), ("text", "speech", 1.0)]  # untagged text is not stored
    lt.on_evict(_speech(0.0, 1.0, "a"))  # the same speech again (flush at close): stored once
    assert len(lt.store) == 2
    lt.close()


def _ffprobe_first_pts(path) -> float:
    """The first video frame's time minus the stream start, read with ffprobe (the reference)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "stream=start_time:frame=pts_time", "-read_intervals", "%+#3", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    d = json.loads(out)
    return float(d["frames"][0]["pts_time"]) - float(d["streams"][0]["start_time"])


def test_mpeg_ts_falls_back_to_pyav_and_every_backend_starts_at_zero(tmp_path):
    import shutil

    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg missing")
    from vstream.sources import FileSource, write_video

    frames = [np.full((48, 64, 3), 20 * i, np.uint8) for i in range(10)]
    mp4 = write_video(tmp_path / "v.mp4", frames, 5.0, codec="h264")
    ts = tmp_path / "v.ts"
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(mp4), "-c", "copy", "-f", "mpegts",
                    str(ts)], check=True)
    src = FileSource(ts)
    got = [f.t for f in src]
    assert src.backend == "pyav" and len(got) == 10  # decord indexes the TS but cannot decode it
    assert got[0] == pytest.approx(_ffprobe_first_pts(ts), abs=1e-3) and got[0] < 0.05  # not the raw ~1.4 s PTS
    dec = [f.t for f in FileSource(mp4)]
    pyav = [f.t for f in FileSource(mp4, backend="pyav")]
    assert dec == pytest.approx(pyav, abs=1e-3) and dec == pytest.approx(got, abs=1e-3)
    later = [f.t for f in FileSource(ts, start_s=1.0)]
    assert later[0] == pytest.approx(1.0, abs=1e-3)  # seeking counts from the same origin
