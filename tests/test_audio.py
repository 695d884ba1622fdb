"""Audio tracks: codecs, the stream clock, windows, no audio, damaged audio, the push interface.

References are independent of vstream.sources.audio: the espeak-ng samples written into the clip, resampled
to 16 kHz with scipy's polyphase filter; frame times from FileSource; the sample index of the speech.
Measured here (2-core CPU): lag 0 samples for PCM/AAC/MP3 and -60 samples (-3.75 ms) for Opus in
WebM; SNR against the reference 41 dB (PCM), 15 dB (AAC 48k), 23 dB (MP3 64k), 20 dB (Opus 48k).
"""
from __future__ import annotations

import logging
import socket
import subprocess
import threading

import numpy as np
import pytest

from _lecture_helpers import lecture_module, need_tools, reference_16k
from vstream.sources.audio import audio_blocks, read_audio
from vstream.sources.audio_push import AudioPush
from vstream.sources import FileSource, write_video

RATE = 22050
ONSET_S = 1.0  # the speech starts here
TOTAL_S = 5.5


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 5.5 s slide video (2 fps) with one sentence from 1.0 s: the WAV, the video, the reference."""
    need_tools()
    ml = lecture_module()
    from render_slides import render_slide

    d = tmp_path_factory.mktemp("audio")
    x = ml.speak("Grape growers plant their vineyards on the slopes of old craters.")
    audio = np.zeros(int(TOTAL_S * RATE), np.int16)
    audio[int(ONSET_S * RATE): int(ONSET_S * RATE) + len(x)] = x
    img = render_slide("Volcanic Soil\nAsh makes farmland rich", 320, 180)
    video = write_video(d / "v.mp4", [img] * int(TOTAL_S * 2), 2.0)
    wav = ml.write_wav(d / "a.wav", audio)
    return {"dir": d, "wav": wav, "video": video, "ref": reference_16k(audio, RATE), "ml": ml}


def _lag_and_snr(y: np.ndarray, ref: np.ndarray) -> tuple[int, float]:
    from scipy.signal import correlate

    n = min(len(y), len(ref))
    c = correlate(y[:n], ref[:n], mode="full", method="fft")
    lag = int(np.argmax(c)) - (n - 1)  # y[i + lag] ~ ref[i]
    a, b = (y[lag:n], ref[:n - lag]) if lag >= 0 else (y[:n + lag], ref[-lag:n])
    m = min(len(a), len(b))
    return lag, float(10 * np.log10(np.sum(b[:m] ** 2) / (np.sum((a[:m] - b[:m]) ** 2) + 1e-12)))


@pytest.mark.parametrize("codec,min_snr", [("pcm", 35.0), ("aac", 10.0), ("mp3", 15.0), ("opus", 14.0)])
def test_codecs_decode_to_the_same_16k_samples_on_the_video_clock(clip, codec, min_snr):
    ml = clip["ml"]
    out = ml.mux(clip["video"], clip["wav"], clip["dir"] / f"c_{codec}{ml.MUX[codec][0]}", codec)
    track = audio_blocks(out)
    assert track is not None and track.codec == {"pcm": "pcm_s16le", "aac": "aac", "mp3": "mp3", "opus": "opus"}[codec]
    blocks = list(track)
    assert all(b.samples.dtype == np.float32 and b.samples.ndim == 1 for b in blocks)
    for a, b in zip(blocks, blocks[1:]):  # contiguous, in order
        assert abs(b.t_start_s - a.t_end_s) < 1e-6
    t0, y = read_audio(out)
    assert abs(t0) < 1e-6
    assert abs(len(y) / 16000 - TOTAL_S) < 0.03
    lag, snr = _lag_and_snr(y, clip["ref"])
    assert abs(lag) <= 80, f"{codec}: decoded audio is {lag / 16:.2f} ms off the reference"  # 5 ms
    assert snr >= min_snr, f"{codec}: SNR {snr:.1f} dB against the reference"
    onset = t0 + np.flatnonzero(np.abs(y) > 0.05)[0] / 16000
    assert abs(onset - ONSET_S) < 0.01
    # the video of the same file starts at 0 on the same clock (WebM: PyAV's raw PTS put it at 7 ms)
    frames = list(FileSource(out, backend="pyav" if codec == "opus" else "auto"))
    assert len(frames) == int(TOTAL_S * 2) and abs(frames[0].t) < 0.01


def test_clock_follows_pts_offsets_and_mpegts_start(clip):
    """Audio muxed 0.5 s late plays 0.5 s late; in MPEG-TS (start 1.4 s) the first video frame is still 0."""
    ml = clip["ml"]
    late = clip["dir"] / "late.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(clip["video"]), "-itsoffset", "0.5",
                    "-i", str(clip["wav"]), "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", str(late)],
                   check=True)
    t0, y = read_audio(late)
    onset = t0 + np.flatnonzero(np.abs(y) > 0.05)[0] / 16000
    assert abs(onset - (ONSET_S + 0.5)) < 0.03
    aac = ml.mux(clip["video"], clip["wav"], clip["dir"] / "for_ts.mp4", "aac")
    ts = clip["dir"] / "c.ts"
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(aac), "-c", "copy", str(ts)], check=True)
    track = audio_blocks(ts)
    import av

    with av.open(str(ts)) as c:  # the first video frame's container time is the origin
        first_frame_t = next(iter(c.decode(video=0))).time
    assert first_frame_t > 1.0 and track.origin_s == pytest.approx(first_frame_t, abs=1e-3)
    t0, y = read_audio(ts)
    onset = t0 + np.flatnonzero(np.abs(y) > 0.05)[0] / 16000
    assert abs(onset - ONSET_S) < 0.03


def test_start_end_window_matches_the_whole_track(clip):
    out = clip["ml"].mux(clip["video"], clip["wav"], clip["dir"] / "win.mkv", "pcm")
    t_all, whole = read_audio(out)
    t0, part = read_audio(out, 1.5, 3.0)
    assert t0 == pytest.approx(1.5, abs=1e-6) and len(part) == 24000
    lag, snr = _lag_and_snr(part, whole[24000:48000])  # resampling restarts after the seek: within a sample
    assert abs(lag) <= 1 and snr > 20.0, (lag, snr)
    blocks = list(audio_blocks(out, 1.5, 3.0, block_s=0.25))
    assert [round(b.t_start_s, 6) for b in blocks] == [1.5, 1.75, 2.0, 2.25, 2.5, 2.75]


def test_no_audio_track_is_none_with_one_info_line(clip, caplog):
    caplog.set_level(logging.INFO, logger="vstream.sources.audio")
    assert audio_blocks(clip["video"]) is None
    lines = [r for r in caplog.records if r.name == "vstream.sources.audio"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and "no audio track" in lines[0].getMessage()
    assert audio_blocks("synthetic:seed=1") is None


def test_an_open_file_source_reads_its_own_audio(clip):
    out = clip["ml"].mux(clip["video"], clip["wav"], clip["dir"] / "src.mp4", "aac")
    track = audio_blocks(FileSource(out), 1.0, 2.0)
    assert track is not None and sum(len(b.samples) for b in track) == 16000


def _damage_audio(src, dst, from_s: float) -> int:
    """Copy ``src`` and overwrite the bytes of every audio packet after ``from_s`` with noise; returns the count."""
    import av

    with av.open(str(src)) as c:
        a = c.streams.audio[0]
        spans = [(p.pos, p.size) for p in c.demux(a) if p.size and p.pts is not None and p.pos is not None
                 and float(p.pts * a.time_base) >= from_s]
    data = bytearray(open(src, "rb").read())
    rng = np.random.default_rng(0)
    for pos, size in spans:
        data[pos:pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    open(dst, "wb").write(bytes(data))
    return len(spans)


def test_damaged_audio_stops_only_the_audio(clip, caplog):
    ml = clip["ml"]
    good = ml.mux(clip["video"], clip["wav"], clip["dir"] / "good.mp4", "aac")
    bad = clip["dir"] / "bad.mp4"
    assert _damage_audio(good, bad, 2.0) > 20
    caplog.set_level(logging.INFO, logger="vstream.sources.audio")
    track = audio_blocks(bad)
    assert track is not None
    t0, y = read_audio(bad)  # what is readable
    warnings = [r for r in caplog.records if r.name == "vstream.sources.audio" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    _, y_good = read_audio(good)
    n = int(1.9 * 16000)
    assert len(y) >= n
    np.testing.assert_allclose(y[:n], y_good[:n], atol=1e-4)  # the sound before the damage is intact
    for backend in ("decord", "pyav"):  # and the video is all there
        assert [f.t for f in FileSource(bad, backend=backend)] == [f.t for f in FileSource(good, backend=backend)]


def test_garbage_audio_stream_gives_one_warning_and_no_sound(tmp_path, caplog):
    """An audio stream whose every packet is noise (muxed as AAC) yields nothing and does not raise."""
    import fractions

    import av

    path = tmp_path / "garbage.mkv"
    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=5)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("aac", rate=16000)
        a.layout = "mono"
        a.time_base = fractions.Fraction(1, 16000)
        for k in range(10):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * k, np.uint8), format="rgb24")
            f.pts = k
            for p in vs.encode(f):
                c.mux(p)
        for k in range(40):
            p = av.Packet(rng.integers(0, 256, 200, dtype=np.uint8).tobytes())
            p.stream, p.pts, p.dts, p.duration, p.time_base = a, k * 1024, k * 1024, 1024, a.time_base
            c.mux(p)
        for p in vs.encode():
            c.mux(p)
    caplog.set_level(logging.INFO, logger="vstream.sources.audio")
    track = audio_blocks(path)
    got = [] if track is None else list(track)
    warnings = [r for r in caplog.records if r.name == "vstream.sources.audio" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and sum(len(b.samples) for b in got) < 16000 // 4
    assert len(list(FileSource(path, backend="pyav"))) == 10


def test_live_tcp_stream_audio_is_on_the_first_frames_clock(clip):
    """A live MPEG-TS over tcp:// (ffmpeg as the server): speech onset relative to the first video frame."""
    aac = clip["ml"].mux(clip["video"], clip["wav"], clip["dir"] / "live.mp4", "aac")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    server = subprocess.Popen(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(aac), "-c", "copy", "-f", "mpegts",
                               f"{url}?listen=1&listen_timeout=20000"])
    try:
        track = None
        for _ in range(50):  # wait for the server to listen
            track = audio_blocks(url, open_timeout_s=5.0)  # None (and a warning) while nobody listens
            if track is not None:
                break
            threading.Event().wait(0.1)
        assert track is not None and track.live
        blocks = list(track)
        assert track.origin_s > 1.0  # MPEG-TS container time; stream time counts from the first frame
        y = np.concatenate([b.samples for b in blocks])
        onset = blocks[0].t_start_s + np.flatnonzero(np.abs(y) > 0.05)[0] / 16000
        assert abs(onset - ONSET_S) < 0.05
    finally:
        server.kill()
        server.wait(10)


def test_audio_push_resamples_stamps_and_drops(clip):
    rng = np.random.default_rng(0)
    wav16 = clip["ref"]
    # push the clip's sound as 44.1 kHz stereo int16 in uneven pieces
    from scipy.signal import resample_poly

    x44 = (resample_poly(wav16.astype(np.float64), 441, 160) * 32767).clip(-32768, 32767).astype(np.int16)
    stereo = np.stack([x44, x44], axis=1)  # [N, 2]
    push = AudioPush(max_seconds=60.0)
    k = 0
    while k < len(stereo):
        n = int(rng.integers(300, 5000))
        assert push.push(stereo[k:k + n], 44100, t=None if k else 10.0)
        k += n
    push.end()
    blocks = list(push)
    assert blocks[0].t_start_s == pytest.approx(10.0)
    for a, b in zip(blocks, blocks[1:]):
        assert abs(b.t_start_s - a.t_end_s) < 2e-3
    y = np.concatenate([b.samples for b in blocks])
    lag, snr = _lag_and_snr(y, wav16)
    assert abs(lag) <= 2 and snr > 25.0, (lag, snr)
    # bounded: a full queue drops the new audio and counts its seconds
    small = AudioPush(max_seconds=1.0)
    results = [small.push(np.zeros(1600, np.float32), 16000, t=0.1 * i) for i in range(15)]
    assert results == [True] * 10 + [False] * 5 and small.dropped_s == pytest.approx(0.5)
    assert small.get(timeout=0.01).t_start_s == 0.0
    with pytest.raises(ValueError):
        small.push(np.zeros((2, 2, 2)), 16000)


def test_one_demux_loop_decodes_all_frames_past_damaged_audio(clip, caplog):
    """The engine's way for live streams: one container, video frames decoded, audio packets to AudioDecoder."""
    import av

    from vstream.sources.audio import AudioDecoder

    good = clip["ml"].mux(clip["video"], clip["wav"], clip["dir"] / "good1.mp4", "aac")
    bad = clip["dir"] / "bad1.mp4"
    _damage_audio(good, bad, 1.0)
    caplog.set_level(logging.INFO, logger="vstream.sources.audio")
    frames, blocks = [], []
    with av.open(str(bad)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        dec = AudioDecoder(a, origin_s=0.0, name=str(bad))
        for packet in c.demux(v, a):
            if packet.stream is v:
                frames += [f.time for f in packet.decode()]
            else:
                blocks += dec.decode(packet)
        blocks += dec.flush()
    assert len(frames) == int(TOTAL_S * 2)
    assert dec.bad_packets > 0 and sum(b.duration_s for b in blocks) >= 0.9
    warnings = [r for r in caplog.records if r.name == "vstream.sources.audio" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1
