"""Sources, sampler and chunker: decoding agreement, timestamp sampling, chunking, errors."""
from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vstream import sources
from vstream.sources import live as live_module
from vstream.sources import (Chunk, Chunker, FileSource, Frame, LiveSource, PushSource, Sampler, SourceError,
                             SyntheticSource, VideoSource, open_source, open_synthetic, probe, time_marker,
                             write_video)

REPO = Path(__file__).resolve().parents[1]
REAL_CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_clips"


def _synthetic_frames(n: int, size=(64, 48), seed=0):
    src = SyntheticSource(seed=seed, duration_s=n / 10.0, fps=10.0, size=size)
    return [f.rgb for f in src]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 3 s, 10 fps, 64x48 H.264 clip (index first)."""
    path = tmp_path_factory.mktemp("clips") / "clip.mp4"
    return write_video(path, _synthetic_frames(30), fps=10.0)


class FakeClock:
    """A wall clock that only moves when told to (sleep or work)."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s >= 0
        self.sleeps.append(s)
        self.now += s


def _frames(times, shape=(4, 4, 3)):
    return [Frame(float(t), np.full(shape, i % 256, np.uint8)) for i, t in enumerate(times)]


# ----------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------


def _assert_same_frames(a: list[Frame], b: list[Frame], max_mad: float = 1.0):
    assert len(a) == len(b) > 0
    ta, tb = np.array([f.t for f in a]), np.array([f.t for f in b])
    assert np.all(np.diff(ta) > 0) and np.all(np.diff(tb) > 0), "timestamps must increase"
    assert np.abs(ta - tb).max() < 1e-3
    for fa, fb in zip(a, b):
        assert fa.rgb.shape == fb.rgb.shape and fa.rgb.dtype == np.uint8
        assert np.abs(fa.rgb.astype(np.int16) - fb.rgb.astype(np.int16)).mean() < max_mad


def test_decord_and_pyav_read_the_same_frames(clip, caplog):
    assert FileSource(clip).backend == "pyav"  # the default (it measured cheaper than decord)
    dec = FileSource(clip, backend="decord")
    assert dec.backend == "decord" and dec.fps == pytest.approx(10.0) and dec.duration == pytest.approx(3.0)
    with caplog.at_level(logging.WARNING, logger="vstream.sources"):
        frames_decord = list(dec)
        frames_pyav = list(FileSource(clip, backend="pyav"))
        frames_live = list(LiveSource(clip))
    assert not caplog.records, "a clean file must not warn"
    assert len(frames_decord) == 30
    _assert_same_frames(frames_decord, frames_pyav)
    _assert_same_frames(frames_decord, frames_live)
    assert [f.t for f in frames_decord] == pytest.approx([k / 10 for k in range(30)], abs=1e-3)
    # the encoded pixels are close to the rendered ones (lossy, but not far)
    original = _synthetic_frames(30)
    mad = np.mean([np.abs(f.rgb.astype(int) - o.astype(int)).mean() for f, o in zip(frames_decord, original)])
    assert mad < 6.0


def test_variable_frame_rate_timestamps_are_kept(tmp_path):
    times = [0.0, 0.1, 0.15, 0.4, 0.45, 1.0, 1.05, 1.1, 2.0, 2.3]
    rgbs = _synthetic_frames(len(times))
    path = write_video(tmp_path / "vfr.mp4", [Frame(t, r) for t, r in zip(times, rgbs)], fps=10.0)
    for src in (FileSource(path), FileSource(path, backend="pyav"), LiveSource(path)):
        got = [f.t for f in src]
        assert got == pytest.approx(times, abs=1e-3), type(src).__name__


def test_file_window_and_max_side(clip):
    src = FileSource(clip, start_s=1.0, end_s=2.0, max_side=32, batch=4)
    frames = list(src)
    assert [f.t for f in frames] == pytest.approx([1.0 + k / 10 for k in range(10)], abs=1e-3)
    assert frames[0].rgb.shape == (24, 32, 3)  # 64x48 -> longest side 32, aspect kept
    assert len(list(src)) == 10  # re-iterable
    pyav = list(FileSource(clip, start_s=1.0, end_s=2.0, max_side=32, backend="pyav"))
    _assert_same_frames(frames, pyav)
    src.close()
    with pytest.raises(RuntimeError):
        list(src)
    with pytest.raises(SourceError, match="past its end"):
        FileSource(clip, start_s=5.0)


def test_close_while_iterating(clip):
    for src in (FileSource(clip, batch=4), LiveSource(clip)):
        got = []
        for f in src:
            got.append(f)
            if len(got) == 5:
                src.close()
        assert 5 <= len(got) <= 8, type(src).__name__  # stops at the next frame or batch


def test_probe(clip):
    info = probe(clip)
    assert info["codec"] in ("h264", "mpeg4")
    assert (info["width"], info["height"]) == (64, 48)
    assert info["fps"] == pytest.approx(10.0) and info["duration"] == pytest.approx(3.0, abs=0.05)


def test_sample_clip_matches_its_description():
    import json

    meta = json.loads((REPO / "data" / "sample.json").read_text())
    video = REPO / "data" / meta["video"]
    assert video.stat().st_size < 2_000_000
    src = FileSource(video)
    assert src.duration == pytest.approx(meta["duration_s"], abs=0.1) and src.fps == pytest.approx(meta["fps"])
    frames = {round(f.t, 1): f.rgb for f in src}
    square = next(e for e in meta["events"] if e["kind"] == "shape" and e["color"] == "red")
    x, y = int(square["pos"][0] * meta["width"]), int(square["pos"][1] * meta["height"])

    def is_red(px):
        return px[0] > 180 and px[1] < 80 and px[2] < 80

    assert not is_red(frames[square["start_s"] - 0.5][y, x])
    assert is_red(frames[square["start_s"] + 0.5][y, x])


# ----------------------------------------------------------------------------------------------
# sampler
# ----------------------------------------------------------------------------------------------


def test_sampler_picks_by_timestamp_on_variable_frame_rate():
    times = [0.0, 0.05, 0.1, 0.45, 0.5, 0.52, 1.2, 1.25, 2.6, 2.61, 3.0]
    s = Sampler(2.0)
    kept = [f.t for f in s(_frames(times))]
    assert kept == [0.0, 0.5, 1.2, 2.6, 3.0]
    assert (s.frames_in, s.frames_kept, s.frames_skipped, s.frames_dropped) == (11, 5, 6, 0)
    # slots start at the first frame's time, not at 0
    s = Sampler(1.0)
    assert [f.t for f in s(_frames([10.3, 10.9, 11.3, 11.31, 12.0, 12.3]))] == [10.3, 11.3, 12.3]
    # millisecond-rounded timestamps still hit their slots
    s = Sampler(3.0)
    assert len(list(s(_frames([0.0, 0.333, 0.666, 0.999, 1.333])))) == 5
    # a clock going backwards is skipped, not re-kept
    s = Sampler(10.0)
    assert [f.t for f in s(_frames([0.0, 0.5, 0.2, 0.6]))] == [0.0, 0.5, 0.6]
    with pytest.raises(ValueError):
        Sampler(0)


def test_sampler_realtime_paces_to_the_wall_clock():
    clock = FakeClock()
    s = Sampler(2.0, realtime=True, clock=clock, sleep=clock.sleep)
    emitted = []
    for f in s(_frames([k / 10 for k in range(30)])):  # a 10 fps source, 3 s, consumer does no work
        emitted.append((f.t, clock.now))
    assert [t for t, _ in emitted] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert all(wall >= t - 1e-9 for t, wall in emitted)  # never earlier than start_wall + (t - t0)
    assert sum(clock.sleeps) == pytest.approx(2.5)
    assert s.frames_dropped == 0 and s.frames_kept == 6


def test_sampler_realtime_drops_frames_a_slow_consumer_cannot_use():
    clock = FakeClock()
    s = Sampler(2.0, realtime=True, clock=clock, sleep=clock.sleep)
    kept = []
    for f in s(_frames([k / 10 for k in range(100)])):  # 10 s of a fast source
        kept.append(f.t)
        clock.now += 1.0  # the consumer needs 1 s per frame, i.e. half the target rate
    assert kept == [0.0, 0.5] + [k + 0.5 for k in range(1, 10)]
    assert s.frames_dropped == 9  # slots 1.0, 2.0, ... 9.0 arrived more than one slot late
    assert s.frames_in == 100 and s.frames_kept + s.frames_skipped + s.frames_dropped == 100
    assert clock.sleeps == []


# ----------------------------------------------------------------------------------------------
# chunker
# ----------------------------------------------------------------------------------------------


def test_time_marker():
    assert time_marker(12, 13) == "Time=12.0-13.0s"
    assert time_marker(0.04, 1.04) == "Time=0.0-1.0s"


def test_chunker_boundaries_markers_and_gaps():
    times = [0.0, 0.5, 0.99, 1.0, 1.5, 3.2, 3.7, 4.0]  # nothing in [2, 3): a gap
    chunks = list(Chunker(1.0)(_frames(times)))
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert [c.marker for c in chunks] == ["Time=0.0-1.0s", "Time=1.0-2.0s", "Time=3.0-4.0s", "Time=4.0-5.0s"]
    assert [c.timestamps for c in chunks] == [[0.0, 0.5, 0.99], [1.0, 1.5], [3.2, 3.7], [4.0]]
    assert chunks[0].frames.shape == (3, 4, 4, 3) and chunks[0].frames.dtype == np.uint8
    assert isinstance(chunks[0], Chunk) and len(chunks[-1]) == 1  # the last partial chunk is emitted
    # chunk grid starts at the first frame; 2 s chunks
    chunks = list(Chunker(2.0)(_frames([5.0, 6.0, 6.9, 7.0, 8.5])))
    assert [(c.start_s, c.end_s) for c in chunks] == [(5.0, 7.0), (7.0, 9.0)]
    assert list(Chunker(1.0)([])) == []


def test_chunker_frames_per_chunk_pads_and_subsamples():
    frames = _frames([0.0, 0.25, 0.5, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 2.0])
    chunks = list(Chunker(1.0, frames_per_chunk=4)(frames))
    assert [len(c) for c in chunks] == [4, 4, 4]
    assert chunks[0].timestamps == [0.0, 0.25, 0.5, 0.5]  # padded with the last frame
    assert np.array_equal(chunks[0].frames[3], chunks[0].frames[2])
    assert chunks[1].timestamps == [1.0, 1.2, 1.4, 1.6]  # 7 frames -> 4, evenly, first and last kept
    assert chunks[2].timestamps == [2.0] * 4
    chunks = list(Chunker(1.0, frames_per_chunk=2)(_frames([0.0, 0.5])))
    assert chunks[0].timestamps == [0.0, 0.5]


def test_sampler_and_chunker_on_a_file(clip):
    chunks = list(Chunker(1.0, frames_per_chunk=2)(Sampler(2.0)(FileSource(clip))))
    assert [c.marker for c in chunks] == ["Time=0.0-1.0s", "Time=1.0-2.0s", "Time=2.0-3.0s"]
    assert all(c.frames.shape == (2, 48, 64, 3) for c in chunks)


# ----------------------------------------------------------------------------------------------
# synthetic and push sources
# ----------------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_scripted():
    events = [{"start_s": 1.0, "end_s": 2.0, "kind": "shape", "shape": "square", "color": "red",
               "pos": (0.5, 0.5), "size": 0.3},
              {"start_s": 0.0, "kind": "counter", "every_s": 0.5}]
    a = list(SyntheticSource(seed=3, duration_s=2.5, fps=4, size=(64, 48), events=events))
    b = list(SyntheticSource(seed=3, duration_s=2.5, fps=4, size=(64, 48), events=events))
    c = list(SyntheticSource(seed=4, duration_s=2.5, fps=4, size=(64, 48), events=events))
    assert [f.t for f in a] == [k / 4 for k in range(10)]
    assert a[0].rgb.shape == (48, 64, 3) and a[0].rgb.dtype == np.uint8
    assert all(np.array_equal(x.rgb, y.rgb) for x, y in zip(a, b))
    assert any(not np.array_equal(x.rgb, y.rgb) for x, y in zip(a, c))
    centre = lambda f: tuple(int(v) for v in f.rgb[24, 32])  # noqa: E731
    assert centre(a[4]) == sources.COLORS["red"] and centre(a[3]) != sources.COLORS["red"]  # t=1.0 vs 0.75
    assert SyntheticSource.counter_value(events[1] | {"start_s": 0.0}, 1.6) == 3
    with pytest.raises(ValueError, match="kind"):
        SyntheticSource(events=[{"kind": "sound", "start_s": 0}])


def test_open_source_reads_a_synthetic_events_file(tmp_path):
    events = [{"start_s": 1.0, "end_s": 2.0, "kind": "shape", "shape": "square", "color": "red",
               "pos": [0.5, 0.5], "size": 0.3}]
    (tmp_path / "ev.json").write_text(json.dumps(events))  # a plain list of events
    (tmp_path / "kw.json").write_text(json.dumps({"events": events, "caption": "", "n_shapes": 0}))  # + kwargs
    spec = f"synthetic:seed=3,duration=2.5,fps=4,size=64x48,events={tmp_path / 'ev.json'}"
    got = list(open_source(spec))
    want = list(SyntheticSource(seed=3, duration_s=2.5, fps=4, size=(64, 48), events=events))
    assert [f.t for f in got] == [f.t for f in want] == [k / 4 for k in range(10)]
    assert all(np.array_equal(x.rgb, y.rgb) for x, y in zip(got, want))
    centre = lambda f: tuple(int(v) for v in f.rgb[24, 32])  # noqa: E731
    assert centre(got[4]) == sources.COLORS["red"] and centre(got[3]) != sources.COLORS["red"]  # t=1.0 vs 0.75
    # the option may come first; the file's keyword arguments apply; constructor kwargs still override
    first = open_source(f"synthetic:events={tmp_path / 'kw.json'},seed=3,duration=2.5,fps=4,size=64x48",
                        start_s=1.0, end_s=2.0)
    assert (first.caption, len(first.events)) == ("", 1)
    bare = SyntheticSource(seed=3, duration_s=2.5, fps=4, size=(64, 48), events=events, caption="", n_shapes=0,
                           start_s=1.0, end_s=2.0)
    window = list(first)
    assert [f.t for f in window] == [1.0, 1.25, 1.5, 1.75]
    assert all(np.array_equal(x.rgb, y.rgb) for x, y in zip(window, bare, strict=True))
    assert not np.array_equal(window[0].rgb, got[4].rgb)  # no caption, no moving shapes
    # open_synthetic renders the same window directly
    assert all(np.array_equal(x.rgb, y.rgb) and x.t == y.t
               for x, y in zip(open_synthetic(spec, 1.0, 2.0), got[4:8], strict=True))
    with pytest.raises(SourceError, match="events file not found") as info:
        open_source(f"synthetic:seed=3,events={tmp_path / 'missing.json'}")
    _assert_one_line(info.value, "missing.json")


def test_synthetic_endless_is_lazy():
    src = SyntheticSource(duration_s=float("inf"), fps=10, size=(32, 32))
    assert src.duration is None
    start = time.perf_counter()
    frames = list(itertools.islice(src, 100))
    assert len(frames) == 100 and frames[-1].t == pytest.approx(9.9)
    window = list(SyntheticSource(duration_s=float("inf"), fps=10, size=(32, 32), start_s=2.0, end_s=2.5))
    assert [f.t for f in window] == pytest.approx([2.0, 2.1, 2.2, 2.3, 2.4])
    assert np.array_equal(window[0].rgb, frames[20].rgb)
    assert time.perf_counter() - start < 5.0


def test_push_source_threaded():
    src = PushSource(maxsize=8)
    n = 40

    def producer():
        for i in range(n):
            while not src.push(np.full((6, 8, 3), i, np.uint8), t=i * 0.1):
                time.sleep(0.001)  # queue full: wait for the consumer (the webcam would just drop)
        src.end()

    th = threading.Thread(target=producer)
    th.start()
    got = list(src)
    th.join(timeout=10)
    assert [int(f.rgb[0, 0, 0]) for f in got] == list(range(n))
    assert [f.t for f in got] == pytest.approx([i * 0.1 for i in range(n)])
    assert src.pushed == n


def test_push_source_drops_when_full_and_uses_clock():
    clock = FakeClock()
    src = PushSource(maxsize=3, clock=clock, max_side=4)
    results = []
    for i in range(5):
        clock.now = 100.0 + i * 0.5
        results.append(src.push(np.zeros((8, 16, 4), np.uint8)))  # RGBA: alpha dropped
    assert results == [True, True, True, False, False] and src.dropped == 2
    src.end()
    assert src.push(np.zeros((8, 16, 3), np.uint8)) is False
    got = list(src)
    assert [f.t for f in got] == [0.0, 0.5, 1.0]  # wall-clock time since the first push
    assert got[0].rgb.shape == (2, 4, 3)
    with pytest.raises(ValueError):
        PushSource().push(np.zeros((8, 8), np.uint8))


def test_push_queue_bounds_by_cost_and_ends():
    """The primitive under PushSource and AudioPush: refused past its capacity (by cost), a consumer gets
    None on timeout and after end(), close() discards what waits."""
    from vstream.sources.push_queue import PushQueue

    q: PushQueue[str] = PushQueue(1.0)
    assert q.put("a", 0.5) and q.put("b", 0.5) and not q.put("c", 0.25)  # full: 1.0 of 1.0 waiting
    assert len(q) == 2 and q.queued() == pytest.approx(1.0)
    assert q.get(timeout=0) == "a" and q.queued() == pytest.approx(0.5) and q.put("c", 0.25)
    assert q.get(timeout=0) == "b" and q.get(timeout=0) == "c" and q.get(timeout=0.01) is None
    q.put("d")  # default cost 1: fits an empty queue of capacity 1
    q.end()
    assert not q.put("e", 0.0) and list(q) == ["d"] and q.get() is None  # ended: drains, then None at once
    q2: PushQueue[int] = PushQueue(3)
    for i in range(3):
        q2.put(i)
    q2.close()
    assert len(q2) == 0 and q2.queued() == 0 and list(q2) == []
    with pytest.raises(ValueError, match="capacity"):
        PushQueue(0)


# ----------------------------------------------------------------------------------------------
# open_source and errors
# ----------------------------------------------------------------------------------------------


def test_open_source_dispatch(clip):
    src = open_source("synthetic:seed=3,duration=2,fps=5,size=40x30")
    assert isinstance(src, SyntheticSource) and isinstance(src, VideoSource)
    assert (src.seed, src.duration, src.fps, src.size) == (3, 2.0, 5.0, (40, 30))
    assert open_source(src) is src
    assert isinstance(open_source("synthetic"), SyntheticSource)
    assert open_source("synthetic:duration=inf").duration is None
    assert isinstance(open_source(clip), FileSource) and isinstance(open_source(str(clip), max_side=32), FileSource)
    with pytest.raises(SourceError, match="unknown synthetic option"):
        open_source("synthetic:speed=3")
    with pytest.raises(SourceError, match="scheme"):
        open_source("ftp://example.invalid/x.mp4")


def _assert_one_line(err: SourceError, name: str):
    msg = str(err)
    assert "\n" not in msg and name in msg, msg


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "directory", "no_index"])
def test_file_errors_are_one_line(tmp_path, clip, case):
    path = tmp_path / f"{case}.mp4"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "corrupt":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "directory":
        path = tmp_path / "videos"
        path.mkdir()
        (path / "a.mp4").write_bytes(clip.read_bytes())
    elif case == "no_index":  # index written last (no faststart), then cut in half
        full = write_video(tmp_path / "full.mp4", _synthetic_frames(20), fps=10.0, faststart=False)
        data = full.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    for opener in (open_source, probe):
        with pytest.raises(SourceError) as info:
            opener(path)
        _assert_one_line(info.value, path.name)
    expected = {"missing": "no such file", "empty": "0 bytes", "directory": "directory", "no_index": "truncated",
                "corrupt": "not a readable video"}[case]
    assert expected in str(info.value)


def test_truncated_file_reads_what_it_can(tmp_path, caplog):
    clip = write_video(tmp_path / "long.mp4", _synthetic_frames(60), fps=10.0)
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="vstream.sources"):
        src = open_source(cut)
        frames = list(src)
    assert 0 < len(frames) < 60
    assert np.all(np.diff([f.t for f in frames]) > 0)
    assert any("stopped after t=" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vstream.sources"):
        live = list(LiveSource(cut))
    assert len(live) == len(frames)
    assert any("stopped" in r.getMessage() for r in caplog.records)


def test_unreachable_url_is_a_source_error():
    url = "rtsp://127.0.0.1:9/x"
    start = time.perf_counter()
    with pytest.raises(SourceError) as info:
        open_source(url, reconnect=False, open_timeout_s=2.0)
    _assert_one_line(info.value, url)
    assert time.perf_counter() - start < 10
    with pytest.raises(SourceError) as info:
        LiveSource("rtsp://user:secret@127.0.0.1:9/x", reconnect=False, open_timeout_s=2.0)
    assert "secret" not in str(info.value) and "user:***@127.0.0.1:9" in str(info.value)


def test_live_source_over_local_http(clip):
    import functools
    import http.server

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(clip.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        src = open_source(f"{base}/{clip.name}", open_timeout_s=5.0)
        assert isinstance(src, LiveSource) and src.duration == pytest.approx(3.0, abs=0.05)
        _assert_same_frames(list(src), list(FileSource(clip)))
        assert src.gaps == [] and src.reconnects == 0
        with pytest.raises(SourceError, match="404") as info:
            open_source(f"{base}/missing.mp4", reconnect=False, open_timeout_s=5.0)
        _assert_one_line(info.value, "missing.mp4")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _FakeStream:
    average_rate = Fraction(10)
    guessed_rate = base_rate = None
    duration = None
    time_base = Fraction(1, 1000)
    frames = 0
    thread_type = None
    width, height = 8, 6
    codec_context = SimpleNamespace(name="h264", width=8, height=6)


class _FakeContainer:
    duration = None

    def __init__(self, pts: list[float], error: bool):
        self.pts, self.error = pts, error
        self.streams = SimpleNamespace(video=[_FakeStream()])

    def demux(self, stream):
        for t in self.pts:
            frame = SimpleNamespace(time=t, to_ndarray=lambda format: np.zeros((6, 8, 3), np.uint8))
            yield SimpleNamespace(decode=lambda frame=frame: [frame])
        if self.error:
            raise OSError("connection reset by peer")

    def close(self):
        pass


def test_live_source_reconnects_and_records_gaps(monkeypatch):
    plan = [_FakeContainer([100.0, 100.1, 100.2, 100.3, 100.4], error=True),  # opened at construction
            OSError("connection refused"),  # first reconnect attempt fails
            _FakeContainer([7.0, 7.1, 7.2, 7.3, 7.4], error=False),  # back; then the live stream ends
            OSError("connection refused"), OSError("connection refused"), OSError("connection refused")]

    def fake_open(target, **kw):
        item = plan.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    monkeypatch.setattr(live_module, "_open_container", fake_open)  # LiveSource opens through it
    clock = FakeClock()
    src = LiveSource("rtsp://camera.invalid/stream", max_retries=2, backoff_s=0.5, clock=clock, sleep=clock.sleep)
    assert src.duration is None and src.fps == 10.0
    got = []
    with pytest.raises(SourceError) as info:
        for f in src:
            got.append(f.t)
    assert "\n" not in str(info.value) and "rtsp://camera.invalid/stream" in str(info.value)
    assert got[:5] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    # the outage (0.5 s of back-off on the wall clock) is stream time lost, recorded as a gap
    assert got[5:] == pytest.approx([0.9, 1.0, 1.1, 1.2, 1.3])
    assert src.gaps == [pytest.approx((0.4, 0.9))]
    assert src.reconnects == 1
    assert clock.sleeps == [0.5, 0.5, 1.0]  # back-off doubles, restarts after a success
    assert plan == []


# ----------------------------------------------------------------------------------------------
# real footage (shared, optional)
# ----------------------------------------------------------------------------------------------


def test_real_clips_decode_with_both_readers():
    clips = sorted(REAL_CLIPS.glob("*.mp4")) if REAL_CLIPS.is_dir() else []
    if not clips:
        reason = f"no shared real clips at {REAL_CLIPS}"
        print(reason)
        pytest.skip(reason)
    for path in clips:
        a = list(FileSource(path, max_side=96))
        b = list(FileSource(path, max_side=96, backend="pyav"))
        _assert_same_frames(a, b, max_mad=2.0)
        info = probe(path)
        assert len(a) == info["frames"] and a[0].rgb.shape == (96, 96, 3)
