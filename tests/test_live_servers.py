"""Live sources against real local servers on 127.0.0.1 (issue 10, items 1, 2 and 9).

- an MPEG-TS stream served over http by ffmpeg (``-listen 1``) that drops and comes back: the source
  reconnects and records the gap;
- a plain (non-faststart) MP4 over Python's http.server (no Range requests): bounded, then played
  from a local copy, or one clear line when downloading is off;
- HTTP 404 and an HTML page are not retried.

Every server is started and stopped by its test; every loop is bounded by a deadline.
"""
from __future__ import annotations

import functools
import http.server
import logging
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from vstream.sources import LiveSource, SourceError, open_source

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="needs Debian's ffmpeg")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_clip(path: Path, seconds: float, size: str = "160x120", rate: int = 10, bitrate: str | None = None) -> Path:
    """An H.264 MP4 written by ffmpeg with its default layout (index at the end: not faststart)."""
    cmd = [FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}", "-t", str(seconds),
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(rate)]
    if bitrate:
        cmd += ["-b:v", bitrate, "-minrate", bitrate, "-maxrate", bitrate, "-bufsize", bitrate]
    subprocess.run(cmd + [str(path)], check=True, timeout=60)
    return path


def serve_ts(clip: Path, port: int) -> subprocess.Popen:
    """ffmpeg serving ``clip`` in a loop as a live MPEG-TS over http on 127.0.0.1:port (one client)."""
    return subprocess.Popen([FFMPEG, "-v", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy",
                             "-f", "mpegts", "-listen", "1", f"http://127.0.0.1:{port}/live.ts"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def open_when_up(url: str, deadline: float, **kw) -> LiveSource:
    """Open ``url`` once the server listens (ffmpeg takes a moment to bind)."""
    while True:
        try:
            return LiveSource(url, **kw)
        except SourceError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def ts_clip(tmp_path) -> Path:
    if FFMPEG is None:
        pytest.skip("needs Debian's ffmpeg")
    return make_clip(tmp_path / "clip.mp4", 4)


@needs_ffmpeg
def test_http_live_stream_that_drops_reconnects_and_records_the_gap(ts_clip):
    port = free_port()
    url = f"http://127.0.0.1:{port}/live.ts"
    server = serve_ts(ts_clip, port)
    restarted: list[subprocess.Popen] = []
    deadline = time.monotonic() + 60
    src = None
    try:
        src = open_when_up(url, deadline, backoff_s=0.2, max_retries=8, open_timeout_s=3.0, read_timeout_s=3.0)
        assert src.duration is None  # an http MPEG-TS stream is live
        times = []
        dropped_at = None
        for frame in src:
            times.append(frame.t)
            if dropped_at is None and frame.t >= 1.5:  # drop the server, bring it back shortly after
                dropped_at = frame.t
                stop(server)
                restarted.append(_restart_later(ts_clip, port, delay_s=1.0))
            if src.gap_records and frame.t >= src.gap_records[0]["at_s"] + src.gap_records[0]["duration_s"] + 1.0:
                break  # a second of stream after the gap
            assert time.monotonic() < deadline, "the stream did not come back"
        assert src.reconnects >= 1
        assert len(src.gap_records) >= 1
        gap = src.gap_records[0]
        assert set(gap) == {"at_s", "duration_s", "reason"}
        assert dropped_at - 0.01 <= gap["at_s"] <= dropped_at + 1.0  # frames already in flight may still arrive
        assert gap["duration_s"] > 0.5  # the server was down for ~1 s: that stream time is lost
        assert all(b > a for a, b in zip(times, times[1:]))  # stream time goes on across the gap
        assert times[-1] >= gap["at_s"] + gap["duration_s"] + 0.9
    finally:
        if src is not None:
            src.close()
        stop(server)
        for p in restarted:
            _stop_thread_proc(p)


def _restart_later(clip: Path, port: int, delay_s: float):
    """Start the server again after ``delay_s`` (in a thread, so that the reader keeps reading)."""
    box: dict = {}

    def run():
        time.sleep(delay_s)
        box["proc"] = serve_ts(clip, port)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    box["thread"] = th
    return box


def _stop_thread_proc(box: dict) -> None:
    box["thread"].join(timeout=10)
    if "proc" in box:
        stop(box["proc"])


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    """Python's http.server (no Range requests) over a folder, on 127.0.0.1; yields (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def big_mp4(tmp_path):
    """A plain MP4 (index at the end) big enough that ffmpeg must seek over http to read it (~3 MB)."""
    if FFMPEG is None:
        pytest.skip("needs Debian's ffmpeg")
    return make_clip(tmp_path / "big.mp4", 6, size="320x240", rate=25, bitrate="4M")


def _drain(src, limit_s: float) -> tuple[list[float], BaseException | None]:
    """Iterate ``src`` in a thread for at most ``limit_s``; (frame times, the error it ended with)."""
    times: list[float] = []
    box: dict = {}

    def run():
        try:
            for f in src:
                times.append(f.t)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(limit_s)
    if th.is_alive():
        src.close()
        th.join(10)
        pytest.fail(f"the source was still running after {limit_s}s (reconnecting without end?)")
    return times, box.get("error")


@needs_ffmpeg
def test_plain_mp4_over_http_without_range_is_bounded_then_played(http_dir, big_mp4, caplog):
    folder, base = http_dir
    shutil.copy(big_mp4, folder / "big.mp4")
    url = f"{base}/big.mp4"
    from vstream.sources import FileSource

    # default: it gives no frame as a stream; it is downloaded once and played whole, with its own timestamps
    want = [f.t for f in FileSource(big_mp4)]
    src = LiveSource(url, backoff_s=0.01, max_retries=3)
    got, error = _drain(src, 20)
    local = src._download
    src.close()
    assert error is None and got == pytest.approx(want)
    assert local is not None and not Path(local).exists()  # the local copy is removed at close
    # downloading off: a bounded number of back-offs, then one clear line
    sleeps: list[float] = []
    src = LiveSource(url, backoff_s=0.01, max_retries=3, max_download_bytes=0, sleep=sleeps.append)
    with caplog.at_level(logging.WARNING, logger="vstream.sources.live"):
        got, error = _drain(src, 20)
    assert got == [] and isinstance(error, SourceError)
    msg = str(error)
    assert "\n" not in msg and "gave no frame in 4 connections" in msg and "faststart" in msg
    assert len([r for r in caplog.records if "reconnecting" in r.getMessage()]) == 3
    assert sleeps == pytest.approx([0.01, 0.02, 0.04])  # back-off doubles
    src.close()


def test_http_404_and_html_are_not_retried(http_dir, caplog):
    folder, base = http_dir
    (folder / "page.html").write_text("<html><body>not a video</body></html>")
    sleeps: list[float] = []
    with caplog.at_level(logging.WARNING, logger="vstream.sources.live"):
        with pytest.raises(SourceError, match="404"):
            open_source(f"{base}/missing.mp4", backoff_s=5.0, sleep=sleeps.append)
        with pytest.raises(SourceError, match="Invalid data"):
            open_source(f"{base}/page.html", backoff_s=5.0, sleep=sleeps.append)
    assert sleeps == []
    assert not [r for r in caplog.records if "retry" in r.getMessage()]


@needs_ffmpeg
def test_watch_reports_the_gap_of_a_dropped_http_stream(ts_clip):
    """`vstream watch URL --realtime --json`: the drop is reconnected, the later question is answered at its
    time (not at the drop), and the gap shows in a {"type": "gap"} line and in the stats line."""
    import json
    import os
    import sys

    from conftest import REPO

    port = free_port()
    url = f"http://127.0.0.1:{port}/live.ts"
    # -v info: ffmpeg says "Output #0" once a client has connected (it serves one client, then exits)
    server = subprocess.Popen([FFMPEG, "-v", "info", "-nostats", "-re", "-stream_loop", "-1", "-i", str(ts_clip),
                               "-c", "copy", "-f", "mpegts", "-listen", "1", url],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # let ffmpeg bind (a probe connection would be its one client)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "vstream", "watch", url, "--realtime", "--json", "--model",
                             "tiny-smolvlm", "--max-new-tokens", "2", "--ask", "1:a", "--ask", "6:b"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    restarted = None
    try:
        for line in server.stderr:  # the source connects while vstream starts (before the model loads)
            if line.startswith("Output #0"):
                break
        time.sleep(1.5)  # ~1.5 s of stream sent, then the server drops ...
        stop(server)
        restarted = _restart_later(ts_clip, port, delay_s=1.0)  # ... and comes back a second later
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        stop(server)
        if restarted is not None:
            _stop_thread_proc(restarted)
    assert proc.returncode == 0, err
    lines = [json.loads(l) for l in out.splitlines() if l.strip()]
    answers = [l for l in lines if l["type"] == "answer"]
    assert [a["question"] for a in answers] == ["a", "b"] and answers[1]["t"] >= 6.0  # at its time, not the drop
    gaps = [l for l in lines if l["type"] == "gap"]
    stats = [l for l in lines if l["type"] == "stats"][0]
    assert gaps and stats["reconnects"] >= 1 and stats["gaps"] == [{k: g[k] for k in ("at_s", "duration_s", "reason")}
                                                                   for g in gaps]
    g = stats["gaps"][0]
    assert 0.5 <= g["at_s"] < 6.0 and g["duration_s"] > 0 and g["reason"]
