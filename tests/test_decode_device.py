"""Decoding on a GPU (NVDEC through PyAV's hardware acceleration) when asked, the CPU when it cannot.

No test needs a GPU: on a machine without one the request falls back with one info line and the pixels
are a CPU decode's; the plumbing (which device reaches PyAV, and when) is checked through a recording
opener that decodes on the CPU.
"""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

import vstream.sources.file as file_module
import vstream.sources.live as live_module
from vstream.config import AgentConfig, SamplerConfig
from vstream.session.pipeline import Pipeline, decode_device
from vstream.sources import FileSource, LiveSource, SyntheticSource, write_video
from vstream.sources.pyav import _open_container


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    src = SyntheticSource(seed=2, duration_s=2, fps=15.0, size=(64, 48))
    return write_video(tmp_path_factory.mktemp("dev") / "c.mp4", [f.rgb for f in src], fps=15.0)


def _nvdec_works(path) -> bool:
    try:
        from av.codec.hwaccel import HWAccel

        with _open_container(str(path), hwaccel=HWAccel("cuda", allow_software_fallback=False)) as c:
            next(c.decode(c.streams.video[0]))
        return True
    except Exception:  # noqa: BLE001 - no GPU, no driver, no CUDA in this PyAV build
        return False


def test_decode_device_follows_the_model():
    assert decode_device("auto", "cpu") == "cpu"
    assert decode_device("auto", "cuda:1") == "cuda:1"
    assert decode_device("cuda", "cpu") == "cuda"
    assert decode_device("cuda", "cuda:0") == "cuda:0"
    assert decode_device("cpu", "cuda:0") == "cpu"


def test_bad_decode_settings_are_refused(clip):
    with pytest.raises(ValueError, match="sampler.decode"):
        AgentConfig().replace(**{"sampler.decode": "gpu"}).validate()
    src = FileSource(clip)
    for bad in ("tpu", "cuda:x", "cuda:", 3):
        with pytest.raises(ValueError, match="'cpu', 'cuda' or 'cuda:N'"):
            src.set_decode_device(bad)
    assert src.decode_device == "cpu"


def test_cuda_request_decodes_the_same_frames_or_falls_back_once(clip, caplog):
    cpu = [(f.t, f.rgb) for f in FileSource(clip)]
    src = FileSource(clip)
    src.set_decode_device("cuda")
    works = _nvdec_works(clip)
    with caplog.at_level(logging.INFO, logger="vstream.sources.pyav"):
        for _ in range(2):  # iterating twice says it at most once
            got = [(f.t, f.rgb) for f in src]
            assert [t for t, _ in got] == [t for t, _ in cpu]
            for (_, a), (_, b) in zip(got, cpu):
                # NVDEC decodes H.264 bit-exactly; its NV12 pictures are converted to RGB by another path
                assert np.abs(a.astype(int) - b.astype(int)).max() <= (2 if works else 0)
    said = [r for r in caplog.records if "NVDEC" in r.getMessage()]
    if works:
        assert not said and src.decode_device == "cuda"
    else:
        assert len(said) == 1 and "decoding" in said[0].getMessage() and src.decode_device == "cpu"


def _recording_opener(calls):
    def opener(target, hwaccel=None, **kw):
        calls.append(hwaccel)
        return _open_container(target, **kw)  # decodes on the CPU: the device only has to reach PyAV
    return opener


def test_the_requested_gpu_reaches_pyav(clip, monkeypatch):
    made = []

    class FakeHW:
        def __init__(self, kind, device=None, allow_software_fallback=True):
            made.append((kind, device, allow_software_fallback))

    import av.codec.hwaccel as hw_module

    monkeypatch.setattr(hw_module, "HWAccel", FakeHW)
    monkeypatch.setattr(hw_module, "hwdevices_available", lambda: ["cuda"])
    calls: list = []
    monkeypatch.setattr(file_module, "_open_container", _recording_opener(calls))
    src = FileSource(clip)
    src.set_decode_device("cuda:1")
    assert len(list(src)) == 30
    assert made == [("cuda", "1", True)] and isinstance(calls[-1], FakeHW)
    src.set_decode_device("cpu")
    list(src)
    assert calls[-1] is None and len(made) == 1


def test_a_build_without_cuda_decodes_on_the_cpu(clip, monkeypatch, caplog):
    import av.codec.hwaccel as hw_module

    monkeypatch.setattr(hw_module, "hwdevices_available", lambda: ["vaapi"])
    calls: list = []
    monkeypatch.setattr(file_module, "_open_container", _recording_opener(calls))
    src = FileSource(clip)
    src.set_decode_device("cuda")
    with caplog.at_level(logging.INFO, logger="vstream.sources.pyav"):
        assert len(list(src)) == 30
    assert calls == [None, None] and "no cuda device type" in caplog.text  # probed at open, then iterated and src.decode_device == "cpu"


def test_live_source_reconnects_on_the_device(clip, monkeypatch):
    made = []

    class FakeHW:
        def __init__(self, kind, device=None, allow_software_fallback=True):
            made.append(kind)

    import av.codec.hwaccel as hw_module

    monkeypatch.setattr(hw_module, "HWAccel", FakeHW)
    monkeypatch.setattr(hw_module, "hwdevices_available", lambda: ["cuda"])
    calls: list = []
    monkeypatch.setattr(live_module, "_open_container", _recording_opener(calls))
    src = LiveSource(str(clip))
    assert calls == [None]  # probed on the CPU
    src.set_decode_device("cuda")
    frames = list(src)
    src.close()
    assert len(frames) == 30 and len(calls) == 2 and isinstance(calls[1], FakeHW) and made == ["cuda"]


def test_pipeline_puts_decoding_beside_a_cuda_model(clip, monkeypatch):
    seen = []
    monkeypatch.setattr(FileSource, "set_decode_device", lambda self, d: seen.append(d))
    for model_device, setting, want in (("cuda:0", "auto", "cuda:0"), ("cpu", "auto", "cpu"),
                                        ("cuda:0", "cpu", "cpu")):
        adapter = SimpleNamespace(configure_sampling=lambda fps: None, frames_per_chunk=lambda fps, c: None,
                                  device=model_device)
        config = SimpleNamespace(memory=SimpleNamespace(time_marker="stream"))
        engine = SimpleNamespace(adapter=adapter, config=config, stream_time_s=0.0, set_perceiving=lambda on: None)
        Pipeline(engine, FileSource(clip), SamplerConfig(fps=1.0, decode=setting), lambda c: None, background=False)
        assert seen[-1] == want
