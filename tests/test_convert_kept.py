"""Only kept frames become RGB arrays: lazy frames, the sampler's plan, and the sources' own counters."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vstream.config import SamplerConfig
from vstream.session.memory_dir import ShiftedSource
from vstream.session.pipeline import Pipeline
from vstream.sources import Chunker, FileSource, Frame, LiveSource, Sampler, SyntheticSource, write_video

FPS, SECONDS = 30.0, 6


@pytest.fixture(scope="module")
def clip30(tmp_path_factory) -> Path:
    """A 6 s, 30 fps, 64x48 H.264 clip (libx264 defaults: B-frames)."""
    src = SyntheticSource(seed=3, duration_s=SECONDS, fps=FPS, size=(64, 48))
    return write_video(tmp_path_factory.mktemp("clips") / "clip30.mp4", [f.rgb for f in src], fps=FPS)


def test_lazy_frame_converts_once_and_only_when_read():
    calls = []

    def convert():
        calls.append(1)
        return np.zeros((2, 2, 3), np.uint8)

    f = Frame.lazy(1.5, convert)
    assert not f.converted and calls == []
    g = f.shifted(2.0)  # a shifted lazy frame stays lazy
    assert g.t == 3.5 and not g.converted and calls == []
    assert g.rgb.shape == (2, 2, 3) and f.rgb is g.rgb and len(calls) == 1
    assert f.converted and f.rgb is f.rgb and len(calls) == 1
    with pytest.raises(AttributeError):
        f.t = 0.0
    with pytest.raises(ValueError, match="Frame.lazy"):
        Frame(0.0)


def test_sampler_plan_is_the_iteration_rule():
    times = np.concatenate([np.arange(0, 3, 1 / 30), np.arange(3.5, 5, 1 / 7)])  # a stall, then another rate
    s = Sampler(2.0)
    planned = s.plan(times).tolist()
    kept = [f.t for f in Sampler(2.0)(Frame(float(t), np.zeros((1, 1, 3), np.uint8)) for t in times)]
    assert [float(times[i]) for i in planned] == kept
    assert s.frames_in == 0  # plan leaves the counters reset


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_file_source_converts_only_kept_frames(clip30, backend):
    src = FileSource(clip30, backend=backend)
    src.plan_sampling(1.0)
    sampler = Sampler(1.0)
    chunks = list(Chunker(1.0)(sampler(src)))
    assert sampler.frames_in == FPS * SECONDS and sampler.frames_kept == SECONDS == len(chunks)
    if backend == "decord":
        assert src.frames_decoded == FPS * SECONDS
    else:  # PyAV leaves dropped non-reference pictures out of the decoder (tests/test_skip_undecoded.py)
        assert src.frames_decoded == FPS * SECONDS - src.skip_plan.skipped < FPS * SECONDS
    assert 0 < src.frames_converted <= 1.2 * sampler.frames_kept
    # the same frames as converting everything
    full = {round(f.t, 4): f.rgb for f in FileSource(clip30, backend=backend)}
    for ch in chunks:
        for t, rgb in zip(ch.timestamps, ch.frames):
            assert np.array_equal(full[round(t, 4)], rgb)


def test_file_source_without_plan_still_counts(clip30):
    src = FileSource(clip30, backend="pyav")
    sampler = Sampler(1.0)
    list(sampler(src))  # nothing reads the pixels
    assert src.frames_decoded == FPS * SECONDS and src.frames_converted == 0
    src = FileSource(clip30, backend="decord")  # no plan: decord reads every frame in batches
    frames = list(src)
    assert src.frames_converted == len(frames) == FPS * SECONDS


def test_live_source_converts_only_kept_frames(clip30):
    src = LiveSource(clip30)
    sampler = Sampler(1.0)
    list(Chunker(1.0)(sampler(src)))
    assert src.frames_decoded == FPS * SECONDS
    assert 0 < src.frames_converted <= 1.2 * sampler.frames_kept


def _pipeline(source, fps=1.0):
    adapter = SimpleNamespace(configure_sampling=lambda fps: None, frames_per_chunk=lambda fps, c: None)
    config = SimpleNamespace(memory=SimpleNamespace(time_marker="stream"))
    engine = SimpleNamespace(adapter=adapter, config=config, stream_time_s=0.0, set_perceiving=lambda on: None)
    steps = []

    def step(chunk):
        steps.append(chunk)
        engine.stream_time_s = chunk.end_s

    return Pipeline(engine, source, SamplerConfig(fps=fps), step, background=False), steps


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_pipeline_reports_decoded_and_converted(clip30, backend):
    pipe, steps = _pipeline(ShiftedSource(FileSource(clip30, backend=backend), 10.0))  # shifted: stays lazy
    pipe.advance_to(1e9)
    counts = pipe.frame_counts()
    assert len(steps) == SECONDS and steps[0].start_s == pytest.approx(10.0)
    assert counts["frames_in"] == FPS * SECONDS
    left_out = 0 if backend == "decord" else pipe.source.skip_plan.skipped  # through ShiftedSource
    assert counts["frames_decoded"] == FPS * SECONDS - left_out and (backend == "decord" or left_out > 0)
    assert 0 < counts["frames_converted"] <= 1.2 * counts["frames_kept"]
