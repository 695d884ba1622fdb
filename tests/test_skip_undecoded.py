"""Pictures the sampler drops are not decoded when nothing refers to them (vstream.sources.skipping).

The oracles are independent of the code under test: libavcodec's own ``skip_frame=NONREF`` decides which
pictures are non-reference, a plain PyAV decode of every picture gives the reference pixels, and the
NAL headers in the parser tests are written by hand from the H.264 spec (7.3.1: forbidden bit,
2-bit nal_ref_idc, 5-bit nal_unit_type).
"""
from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vstream.sources import FileSource, Sampler, SyntheticSource, write_video
from vstream.sources.pyav import _video_origin
from vstream.sources.skipping import (h264_is_nonref, h264_length_size, hevc_is_nonref,
                                      hevc_single_layer_length_size)

FPS, SECONDS = 30.0, 6


def _avcc(*nals: bytes, size: int = 4) -> bytes:
    return b"".join(len(n).to_bytes(size, "big") + n for n in nals)


def _annexb(*nals: bytes) -> bytes:
    return b"".join(b"\x00\x00\x00\x01" + n for n in nals)


SEI, AUD = b"\x06\x05\x10" + b"\x11" * 16, b"\x09\xf0"
B_NONREF = b"\x01\x9e\x12\x34"  # nal_ref_idc 0, type 1: a slice no picture refers to
B_REF = b"\x21\x9e\x12\x34"  # nal_ref_idc 1, type 1
P_REF = b"\x41\x9a\x00\x00\x01\x02"  # nal_ref_idc 2, type 1 (with an emulation-like 00 00 01 inside)
IDR = b"\x65\x88\x84\x00"  # nal_ref_idc 3, type 5


@pytest.mark.parametrize("pack", [_avcc, lambda *n: _avcc(*n, size=2), _annexb])
def test_h264_reference_status_from_nal_headers(pack):
    size = 0 if pack is _annexb else (2 if pack is not _avcc else 4)
    assert h264_is_nonref(pack(SEI, B_NONREF), size)
    assert h264_is_nonref(pack(AUD, B_NONREF, B_NONREF), size)  # two slices, both non-reference
    assert not h264_is_nonref(pack(SEI, B_REF), size)
    assert not h264_is_nonref(pack(B_NONREF, B_REF), size)  # one referenced slice is enough
    assert not h264_is_nonref(pack(IDR), size)
    assert not h264_is_nonref(pack(SEI), size)  # no slice: not decided, decoded
    assert not h264_is_nonref(pack(b"\x02\x80"), size)  # a data partition: not decided
    assert not h264_is_nonref(b"", size)


def test_h264_length_size_from_extradata():
    assert h264_length_size(bytes([1, 0x64, 0, 0x1F, 0xFF, 0xE1, 0])) == 4
    assert h264_length_size(bytes([1, 0x64, 0, 0x1F, 0xFD, 0xE1, 0])) == 2
    assert h264_length_size(None) == 0 and h264_length_size(b"") == 0
    assert h264_length_size(b"\x00\x00\x00\x01\x67\x64\x00") == 0  # Annex B parameter sets


def _hevc(kind: int, tid_plus1: int = 1) -> bytes:  # H.265 7.3.1.2: forbidden bit, type, layer id, temporal id
    return bytes([(kind << 1) & 0x7E, tid_plus1 & 0x07]) + b"\xaf\x01"


def test_hevc_reference_status_from_nal_headers():
    vps, sei = _hevc(32), _hevc(39)
    for nonref in (0, 2, 4, 6, 8):  # TRAIL_N, TSA_N, STSA_N, RADL_N, RASL_N
        assert hevc_is_nonref(_avcc(sei, _hevc(nonref)), 4)
    for ref in (1, 3, 9, 16, 19, 21):  # TRAIL_R, TSA_R, RASL_R, BLA, IDR, CRA
        assert not hevc_is_nonref(_avcc(_hevc(ref)), 4)
    assert not hevc_is_nonref(_avcc(_hevc(0), _hevc(1)), 4)  # one referenced slice is enough
    assert not hevc_is_nonref(_avcc(vps, sei), 4)  # no slice
    assert hevc_is_nonref(_avcc(_hevc(0), size=2), 2)


def test_hevc_needs_one_temporal_sublayer():
    def hvcc(layers: int, size: int = 4) -> bytes:
        ex = bytearray(23)
        ex[0] = 1
        ex[21] = (layers << 3) | (size - 1)
        return bytes(ex)

    assert hevc_single_layer_length_size(hvcc(1)) == 4 and hevc_single_layer_length_size(hvcc(1, 2)) == 2
    assert hevc_single_layer_length_size(hvcc(2)) is None  # a higher sub-layer may refer to a *_N picture
    assert hevc_single_layer_length_size(hvcc(0)) is None  # unknown
    assert hevc_single_layer_length_size(None) is None  # Annex B: not decided from here
    assert hevc_single_layer_length_size(b"\x00\x00\x00\x01\x40\x01" + bytes(20)) is None


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """A 6 s 30 fps 64x48 H.264 clip (libx264 defaults: B-frames, some non-reference) as MP4 and MPEG-TS."""
    d = tmp_path_factory.mktemp("skip")
    src = SyntheticSource(seed=5, duration_s=SECONDS, fps=FPS, size=(64, 48))
    mp4 = write_video(d / "clip.mp4", [f.rgb for f in src], fps=FPS)
    out = {"mp4": mp4}
    if shutil.which("ffmpeg"):
        ts = d / "clip.ts"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(mp4), "-c", "copy", "-f", "mpegts", str(ts)],
                       check=True)
        out["ts"] = ts
        hevc = d / "clip_hevc.mp4"  # libx265 defaults: B-frames, one temporal sub-layer
        done = subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(mp4), "-c:v", "libx265", "-x265-params",
                               "log-level=error", "-pix_fmt", "yuv420p", str(hevc)], capture_output=True)
        if done.returncode == 0:
            out["hevc"] = hevc
    return out


def _nonref_times(path: Path) -> set[float]:
    """Times of the pictures libavcodec itself drops with skip_frame=NONREF (its own reference decision)."""
    import av

    def times(skip: bool) -> set[float]:
        with av.open(str(path)) as c:
            vs = c.streams.video[0]
            origin = _video_origin(c)
            if skip:
                vs.codec_context.skip_frame = "NONREF"
            return {round(f.time - origin, 4) for f in c.decode(vs)}

    return times(False) - times(True)


def _every_frame(path: Path) -> dict[float, np.ndarray]:
    """Every picture of ``path`` decoded by PyAV directly, by its time (the reference pixels)."""
    import av

    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        origin = _video_origin(c)
        return {round(f.time - origin, 4): f.to_ndarray(format="rgb24") for f in c.decode(vs)}


@pytest.mark.parametrize("kind", ["mp4", "ts", "hevc"])
def test_planned_file_leaves_out_exactly_the_nonref_pictures_it_drops(clips, kind):
    if kind not in clips:
        pytest.skip("ffmpeg (with libx265 for HEVC) is not installed: it makes the MPEG-TS and HEVC clips")
    path = clips[kind]
    src = FileSource(path, backend="pyav")
    src.plan_sampling(1.0)
    sampler = Sampler(1.0)
    kept = [(f.t, f.rgb) for f in sampler(src)]
    plan = src.skip_plan
    assert plan is not None and plan.fetched == 0
    nonref = _nonref_times(path)
    assert len(nonref) >= 0.3 * FPS * SECONDS  # the clip has what this is about
    # every non-reference picture except those kept is left out; everything else is decoded
    kept_t = {round(t, 4) for t, _ in kept}
    assert kept_t & nonref  # some kept pictures are non-reference ones: they were decoded
    assert plan.skipped == len(nonref - kept_t)
    assert src.frames_decoded == FPS * SECONDS - plan.skipped
    # the sampler saw every frame, at the same times, and kept the same pixels as a full decode
    assert sampler.frames_in == FPS * SECONDS and sampler.frames_kept == len(kept) == SECONDS
    full = _every_frame(path)
    assert len(full) == FPS * SECONDS
    for t, rgb in kept:
        assert np.array_equal(full[round(t, 4)], rgb)
    assert src.frames_converted == len(kept)


def test_plan_respects_start_and_end(clips):
    src = FileSource(clips["mp4"], backend="pyav", start_s=1.3, end_s=4.6)
    src.plan_sampling(2.0)
    frames = list(src)
    times = [f.t for f in frames]
    assert times == sorted(times) and times[0] >= 1.3 - 1e-6 and times[-1] < 4.6
    unplanned = FileSource(clips["mp4"], backend="pyav", start_s=1.3, end_s=4.6)
    assert times == [f.t for f in unplanned]  # every frame is still yielded, in presentation order
    assert src.skip_plan.skipped > 0 and src.frames_decoded < len(frames)
    full = _every_frame(clips["mp4"])
    for f in Sampler(2.0)(frames):
        assert np.array_equal(full[round(f.t, 4)], f.rgb)
    assert src.skip_plan.fetched == 0


def test_a_left_out_picture_read_after_all_is_decoded_alone(clips, caplog):
    src = FileSource(clips["mp4"], backend="pyav")
    src.plan_sampling(1.0)
    full = _every_frame(clips["mp4"])
    with caplog.at_level(logging.WARNING, logger="vstream.sources.skipping"):
        frames = list(Sampler(5.0)(src))  # the plan was made for 1 fps: the sampler disagrees
        pixels = [f.rgb for f in frames]
    assert src.skip_plan.fetched > 0 and "decoding such frames one by one" in caplog.text
    assert caplog.text.count("one by one") == 1  # warned once
    for f, rgb in zip(frames, pixels):
        assert np.array_equal(full[round(f.t, 4)], rgb)


def test_skip_undecoded_off_and_no_plan_decode_everything(clips):
    off = FileSource(clips["mp4"], backend="pyav", skip_undecoded=False)
    off.plan_sampling(1.0)
    unplanned = FileSource(clips["mp4"], backend="pyav")
    for src in (off, unplanned):
        list(Sampler(1.0)(src))
        assert src.skip_plan is None and src.frames_decoded == FPS * SECONDS


def test_plan_reads_a_bounded_way_ahead_and_holds_little(clips, monkeypatch):
    import vstream.sources.skipping as skipping

    src = FileSource(clips["mp4"], backend="pyav")
    src.plan_sampling(1.0)
    it = iter(Sampler(1.0)(src))
    first = next(it)
    assert first.t == 0.0 and src.skip_plan.read_upto_s <= 1.5  # the first frame did not wait for the file
    list(it)
    plan = src.skip_plan
    assert 0 < plan.read_ahead_s <= 1.0 + 0.2  # one sampling period, plus the reorder depth
    full_skipped = plan.skipped
    monkeypatch.setattr(skipping, "HORIZON_S", 1.5)  # forget kept times after 1.5 s: same decisions
    src = FileSource(clips["mp4"], backend="pyav")
    src.plan_sampling(1.0)
    kept = [f.t for f in Sampler(1.0)(src)]
    assert len(kept) == SECONDS and src.skip_plan.skipped == full_skipped and src.skip_plan.fetched == 0
    assert src.skip_plan.kept_held <= 2


class _Packet:
    def __init__(self, pts, dts):
        self.pts, self.dts, self.size = pts, dts, 100


class _Container:
    """A stand-in demuxer: 30 fps pictures in mini-GOPs of four, decode order P B B B (pts reordered)."""

    def __init__(self, n: int):
        order = []
        for g in range(0, n, 4):
            order += [p for p in (g + 3, g, g + 1, g + 2) if p < n]
        self.packets = [_Packet(pts, dts) for dts, pts in enumerate(order)]
        from fractions import Fraction

        vs = type("VS", (), {})()
        vs.time_base = Fraction(1, 30)
        vs.codec_context = type("CC", (), {"name": "h264", "extradata": None})()
        self.streams = type("S", (), {"video": [vs]})()

    def demux(self, vs):
        return iter(self.packets)

    def close(self):
        pass


@pytest.mark.parametrize("fps", [1.0, 7.0, 10.0])
def test_plan_decisions_equal_the_sampler_in_decode_order(fps):
    from vstream.sources.skipping import SkipPlan

    n = 120
    times = [i / 30 for i in range(n)]
    want = {times[i] for i in Sampler(fps).plan(times)}
    c = _Container(n)
    plan = SkipPlan(c, fps)
    got = {p.pts / 30 for p in c.packets if plan.keeps(float(p.pts * c.streams.video[0].time_base))}
    assert got == {float(t) for t in want} and len(got) > 1  # asked in decode order: P before its B-frames
