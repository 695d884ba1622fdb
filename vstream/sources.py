"""Video sources, the timestamp sampler and the chunker (DESIGN §1.1–1.3).

A source yields ``Frame(t, rgb)``: ``t`` is the presentation time in seconds of stream time and
``rgb`` an ``[H, W, 3]`` uint8 array. Files are read with decord (batch decode, timestamps from the
container); live URLs, devices and anything decord cannot open with PyAV; the Gradio webcam pushes
frames into a ``PushSource``; ``SyntheticSource`` renders deterministic test scenes.

``Sampler`` picks frames by timestamp (never by index: variable frame rate exists) and, in realtime
mode, paces to the wall clock and counts the frames it had to drop. ``Chunker`` groups the sampled
frames into chunks of ``chunk_seconds`` of stream time, each with a ``Time=a-bs`` marker.

Problems with a source raise ``SourceError`` (a ``ValueError``) with a one-line message that names
the path and the fix, at open time where possible.
"""
from __future__ import annotations

import fractions
import itertools
import logging
import math
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

logger = logging.getLogger(__name__)

#: URL schemes opened with PyAV as live streams.
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp", "tcp", "rtp")
URL_SCHEMES = LIVE_SCHEMES + ("http", "https")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".flv", ".mpg", ".mpeg", ".y4m")

_FIX_FILE = "give a valid H.264/MPEG-4 video file"


# --------------------------------------------------------------------------------------------
# Frames, errors, protocol
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame at presentation time ``t`` (seconds of stream time)."""

    t: float  # presentation time in seconds (stream time)
    rgb: np.ndarray  # [H, W, 3] uint8 RGB


class SourceError(ValueError):
    """A video source cannot be opened or read; the message is one line naming the problem and the fix."""

    def __init__(self, message: str):
        super().__init__(_one_line(message))


@runtime_checkable
class VideoSource(Protocol):
    """What the engine iterates: frames with timestamps, plus a few facts about the stream."""

    name: str
    fps: float | None  # nominal fps when known
    duration: float | None  # seconds when known (None for live)

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def _redact(target: str) -> str:
    """Hide the password of ``scheme://user:pass@host`` in messages and logs."""
    try:
        parts = urlsplit(target)
    except ValueError:
        return target
    if parts.scheme and parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
    return target


def _file_error(path: Any, problem: str, fix: str = _FIX_FILE) -> SourceError:
    return SourceError(f"cannot read video {str(path)!r}: {problem}; {fix}")


def _stream_error(url: str, problem: str,
                  fix: str = "check the URL, the network and that the server is running") -> SourceError:
    return SourceError(f"cannot open stream {_redact(url)!r}: {problem}; {fix}")


def _exc_text(exc: BaseException) -> str:
    """Short text of an exception (PyAV/decord messages may carry paths and newlines)."""
    text = _one_line(getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
    text = re.sub(r"\[[\d:]+\] \S+:\d+: ", "", text)  # decord's "[12:00:00] /src/file.cc:83: " prefix
    return text[:200]


def is_url(spec: Any) -> bool:
    """True for rtsp/rtmp/http(s)/srt/udp/tcp URLs."""
    return isinstance(spec, str) and urlsplit(spec).scheme.lower() in URL_SCHEMES


def is_device(spec: Any) -> bool:
    """True for camera device paths such as ``/dev/video0``."""
    return isinstance(spec, (str, os.PathLike)) and str(spec).startswith("/dev/video")


def resize_max_side(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    """Shrink ``rgb`` [H, W, 3] so that its longer side is at most ``max_side`` (aspect kept, INTER_AREA)."""
    if max_side is None:
        return rgb
    h, w = rgb.shape[:2]
    longest = max(h, w)
    if longest <= max_side:
        return rgb
    scale = max_side / longest
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    return cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA)


def _check_max_side(max_side: int | None) -> None:
    if max_side is not None and (not isinstance(max_side, (int, np.integer)) or max_side < 1):
        raise ValueError(f"max_side must be a positive int or None, got {max_side!r}")


# --------------------------------------------------------------------------------------------
# File checks and probing
# --------------------------------------------------------------------------------------------


def _mp4_missing_index(path: Path) -> bool:
    """True when an MP4/MOV file has media data but no 'moov' index (truncated while writing)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 8 or head[4:8] != b"ftyp":
                return False
            pos, seen = 0, set()
            while pos + 8 <= size and len(seen) < 64:
                f.seek(pos)
                hdr = f.read(16)
                n, kind = int.from_bytes(hdr[:4], "big"), hdr[4:8]
                if n == 1 and len(hdr) >= 16:
                    n = int.from_bytes(hdr[8:16], "big")
                seen.add(kind)
                if n < 8:
                    break
                pos += n
            return b"moov" not in seen and b"mdat" in seen
    except OSError:
        return False


def _check_file(path: str | os.PathLike) -> Path:
    """Raise SourceError for a missing, empty or directory path; return it as a Path."""
    p = Path(path)
    if not p.exists():
        raise _file_error(path, "no such file", "check the path (relative paths start at the working directory)")
    if p.is_dir():
        vids = sorted(c.name for c in p.iterdir() if c.suffix.lower() in VIDEO_EXTENSIONS)
        hint = f"give one of its video files, e.g. {vids[0]!r}" if vids else "give a video file, not a folder"
        raise _file_error(path, f"it is a directory ({len(vids)} video files inside)", hint)
    size = p.stat().st_size
    if size == 0:
        raise _file_error(path, "file is empty (0 bytes)")
    if not os.access(p, os.R_OK):
        raise _file_error(path, "permission denied", "make the file readable")
    return p


def _open_container(target: str, *, timeout: float | tuple[float, float] | None = None,
                    options: dict | None = None, fmt: str | None = None):
    """Open ``target`` with PyAV for reading (one place, so tests can replace it)."""
    import av

    return av.open(target, mode="r", format=fmt, options=options or {}, timeout=timeout)


def _container_error(target: str, exc: BaseException, *, is_file: bool) -> SourceError:
    text = _exc_text(exc)
    if is_file:
        p = Path(target)
        if _mp4_missing_index(p):
            return _file_error(target, "the MP4 index ('moov' atom) is missing, the file is truncated or still "
                                       "being written", "wait for the writer to finish or re-encode the file")
        return _file_error(target, f"not a readable video ({text})")
    return _stream_error(target, text)


def _stream_facts(container) -> dict:
    """{"duration", "fps", "width", "height", "codec", "frames"} of the first video stream."""
    vs = container.streams.video[0]
    rate = vs.average_rate or vs.guessed_rate or vs.base_rate
    fps = float(rate) if rate else None
    duration = None
    if vs.duration is not None and vs.time_base is not None and vs.duration > 0:
        duration = float(vs.duration * vs.time_base)
    elif container.duration is not None and container.duration > 0:
        duration = container.duration / 1_000_000
    cc = vs.codec_context
    return {"duration": duration, "fps": fps, "width": int(cc.width or vs.width or 0),
            "height": int(cc.height or vs.height or 0), "codec": cc.name, "frames": int(vs.frames or 0) or None}


def probe(path_or_url: str | os.PathLike, *, timeout_s: float = 10.0) -> dict:
    """Return ``{"duration", "fps", "width", "height", "codec", "frames"}`` of a file, URL or device.

    Values that the container does not know are None (``duration`` is None for live streams).
    Raises SourceError with a one-line message when the target cannot be opened.
    """
    target = str(path_or_url)
    is_file = not (is_url(target) or is_device(target))
    if is_file:
        _check_file(target)
    try:
        container = _open_container(target, timeout=timeout_s, fmt="v4l2" if is_device(target) else None)
    except Exception as exc:  # noqa: BLE001 - PyAV raises many error types; all mean "cannot open"
        raise _container_error(target, exc, is_file=is_file) from exc
    try:
        if not container.streams.video:
            raise (_file_error(target, "it has no video stream", "give a file with a video track") if is_file
                   else _stream_error(target, "it has no video stream", "check that the URL serves video"))
        facts = _stream_facts(container)
    finally:
        container.close()
    if is_device(target) or (is_url(target) and urlsplit(target).scheme.lower() in LIVE_SCHEMES):
        facts["duration"] = None  # live: the container's duration means nothing
    return facts


class _DecodeLog:
    """What went wrong while decoding one container (for the truncation warning)."""

    def __init__(self, container=None, *, whole: bool = True, end_s: float | None = None):
        self.bad_packets = 0
        self.last_error: BaseException | None = None
        self.frames = 0  # frames decoded
        self.last_t: float | None = None  # time of the last frame decoded
        # what the container's index promises (for files): frame count and end time
        self.expected_frames: int | None = None
        self.expected_end: float | None = None
        self.frame_s = 0.0
        if container is not None and container.streams.video:
            facts = _stream_facts(container)
            self.expected_frames = facts["frames"] if whole else None
            self.frame_s = 1.0 / facts["fps"] if facts["fps"] else 0.0
            ends = [e for e in (facts["duration"], end_s) if e is not None]
            self.expected_end = min(ends) if ends and facts["duration"] is not None else None

    def add(self, t: float) -> None:
        self.frames += 1
        self.last_t = t

    def warn_if_damaged(self, path: str, error: BaseException | None = None) -> None:
        """Log a warning when decoding hit errors or ended before the index says the video ends."""
        short = self.expected_frames is not None and self.frames < self.expected_frames
        if self.expected_end is not None:
            short = short or self.last_t is None or self.last_t + 1.5 * self.frame_s < self.expected_end - 0.05
        if error is None and not self.bad_packets and not short:
            return
        where = "before the first frame" if self.last_t is None else f"after t={self.last_t:.2f}s"
        of = f" of {self.expected_end:.2f}s" if self.expected_end is not None else ""
        bad = f"; {self.bad_packets} undecodable packet(s)" if self.bad_packets else ""
        why = error or self.last_error
        why = f" ({_exc_text(why)})" if why is not None else ""
        logger.warning("video %r is truncated or damaged: decoding stopped %s%s%s%s", path, where, of, bad, why)


#: Undecodable packets in a row after which decoding gives up.
MAX_BAD_PACKETS = 50


def _decode_video(container, vs, log: _DecodeLog) -> Iterator[Any]:
    """Demux and decode ``vs``; skip undecodable packets (counted in ``log``); demux errors propagate.

    Frames still held by the decoder are drained before a demux error is raised.
    """
    import av

    in_a_row = 0
    try:
        for packet in container.demux(vs):
            try:
                decoded = packet.decode()
            except av.FFmpegError as exc:
                log.bad_packets += 1
                log.last_error = exc
                in_a_row += 1
                if in_a_row >= MAX_BAD_PACKETS:
                    raise
                continue
            in_a_row = 0
            yield from decoded
    except (av.FFmpegError, EOFError, OSError):
        try:
            yield from vs.codec_context.decode(None)
        except Exception:  # noqa: BLE001 - draining a broken decoder
            pass
        raise


def _pyav_frames(container, *, path: str, start_s: float = 0.0, end_s: float | None = None,
                 max_side: int | None = None) -> Iterator[Frame]:
    """Decode the first video stream of an open PyAV container (a file): what is readable, then a warning."""
    import av

    vs = container.streams.video[0]
    vs.thread_type = "AUTO"
    facts_fps = float(vs.average_rate) if vs.average_rate else None
    if start_s > 0 and vs.time_base:
        try:
            container.seek(int(start_s / vs.time_base), stream=vs, backward=True, any_frame=False)
        except av.FFmpegError as exc:
            logger.debug("seek to %.2fs failed in %s (%s); decoding from the start", start_s, path, _exc_text(exc))
    log = _DecodeLog(container, whole=start_s <= 0, end_s=end_s)
    error: BaseException | None = None
    try:
        for frame in _decode_video(container, vs, log):
            t = frame.time
            if t is None:  # no pts: continue from the last time at the nominal rate
                t = 0.0 if log.last_t is None else log.last_t + 1.0 / (facts_fps or 25.0)
            t = float(t)
            if t < start_s - 1e-6:
                continue
            if end_s is not None and t >= end_s:
                return
            log.add(t)
            yield Frame(t, resize_max_side(frame.to_ndarray(format="rgb24"), max_side))
    except (av.FFmpegError, EOFError, OSError) as exc:
        error = exc
    log.warn_if_damaged(path, error)


# --------------------------------------------------------------------------------------------
# File source (decord, PyAV fallback)
# --------------------------------------------------------------------------------------------


class FileSource:
    """A video file decoded with decord in batches; timestamps from the container (VFR-safe).

    Frames with ``start_s <= t < end_s`` are yielded. ``backend="auto"`` uses decord and falls back to
    PyAV when decord cannot open the file (other codecs, truncated files); ``"pyav"`` forces PyAV.
    A truncated file yields what is readable, logs a warning with the time where decoding stopped,
    then ends. Re-iterating starts again at ``start_s``.
    """

    def __init__(self, path: str | os.PathLike, *, start_s: float = 0.0, end_s: float | None = None,
                 max_side: int | None = None, batch: int = 16, backend: str = "auto", threads: int = 0):
        _check_max_side(max_side)
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if start_s < 0 or (end_s is not None and end_s <= start_s):
            raise ValueError(f"need 0 <= start_s < end_s, got start_s={start_s}, end_s={end_s}")
        if backend not in ("auto", "decord", "pyav"):
            raise ValueError(f"backend must be auto, decord or pyav, got {backend!r}")
        self.path = _check_file(path)
        self.name = str(path)
        self.start_s, self.end_s, self.max_side, self.batch = float(start_s), end_s, max_side, batch
        self._vr = None
        self._ts: np.ndarray | None = None  # [N] frame start times (decord)
        self.backend = backend
        if backend in ("auto", "decord"):
            try:
                self._open_decord(threads)
                self.backend = "decord"
            except Exception as exc:  # noqa: BLE001 - decord raises RuntimeError/DECORDError
                if backend == "decord":
                    raise _container_error(self.name, exc, is_file=True) from exc
                logger.info("decord cannot open %r (%s); decoding with PyAV", self.name, _exc_text(exc))
                self.backend = "pyav"
        if self.backend == "pyav":
            self._open_pyav()
        if self.duration is not None and self.start_s >= self.duration:
            raise _file_error(self.name, f"start_s={self.start_s:g} is past its end ({self.duration:.2f} s)",
                              "give a start time inside the video")

    # -- opening ----------------------------------------------------------------------------

    def _open_decord(self, threads: int) -> None:
        import decord

        vr = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=threads)
        n = len(vr)
        if n == 0:
            raise RuntimeError("no frames")
        ts = np.asarray(vr.get_frame_timestamp(list(range(n))), dtype=np.float64)  # [N, 2] start, end
        self._vr, self._ts = vr, ts[:, 0]
        self.fps = float(vr.get_avg_fps()) or None
        self.duration = float(ts[-1, 1]) if ts[-1, 1] > 0 else None
        self.n_frames = n
        if np.any(np.diff(self._ts) <= 0):
            logger.warning("video %r has non-increasing timestamps; frames are sorted by time", self.name)

    def _open_pyav(self) -> None:
        try:
            container = _open_container(str(self.path))
        except Exception as exc:  # noqa: BLE001
            raise _container_error(self.name, exc, is_file=True) from exc
        try:
            if not container.streams.video:
                raise _file_error(self.name, "it has no video stream", "give a file with a video track")
            facts = _stream_facts(container)
            first = next(_pyav_frames(container, path=self.name), None)
        finally:
            container.close()
        if first is None:
            raise _file_error(self.name, "no frame could be decoded (corrupt or truncated)")
        self.fps, self.duration = facts["fps"], facts["duration"]
        self.n_frames = facts["frames"]

    # -- iteration ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Frame]:
        if self.backend == "pyav":
            yield from self._iter_pyav()
        else:
            yield from self._iter_decord()

    def _iter_pyav(self) -> Iterator[Frame]:
        container = _open_container(str(self.path))
        try:
            yield from _pyav_frames(container, path=self.name, start_s=self.start_s, end_s=self.end_s,
                                    max_side=self.max_side)
        finally:
            container.close()

    def _iter_decord(self) -> Iterator[Frame]:
        if self._vr is None:
            raise RuntimeError(f"FileSource {self.name!r} is closed; open a new one")
        vr, ts = self._vr, self._ts
        keep = ts >= self.start_s - 1e-6
        if self.end_s is not None:
            keep &= ts < self.end_s
        order = np.flatnonzero(keep)
        order = order[np.argsort(ts[order], kind="stable")]
        for lo in range(0, len(order), self.batch):
            if self._vr is None:  # closed while iterating
                return
            idx = [int(i) for i in order[lo:lo + self.batch]]
            try:
                frames = vr.get_batch(idx).asnumpy()  # [B, H, W, 3] uint8
            except Exception as exc:  # noqa: BLE001 - decode error inside the file
                yield from self._decord_one_by_one(vr, idx, exc)
                return
            for i, rgb in zip(idx, frames):
                yield Frame(float(ts[i]), resize_max_side(rgb, self.max_side))

    def _decord_one_by_one(self, vr, idx: list[int], exc: BaseException) -> Iterator[Frame]:
        """A batch failed: decode its frames singly up to the broken one, warn, and end."""
        last = None
        for i in idx:
            try:
                rgb = vr.get_batch([i]).asnumpy()[0]
            except Exception as exc2:  # noqa: BLE001
                exc = exc2
                break
            last = float(self._ts[i])
            yield Frame(last, resize_max_side(rgb, self.max_side))
        where = f"after t={last:.2f}s" if last is not None else f"at t={float(self._ts[idx[0]]):.2f}s"
        logger.warning("video %r is truncated or damaged: decoding stopped %s (%s)", self.name, where, _exc_text(exc))

    def close(self) -> None:
        """Release the decoder; iterating afterwards raises RuntimeError."""
        self._vr = None

    def __enter__(self) -> "FileSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FileSource({self.name!r}, backend={self.backend!r}, fps={self.fps}, duration={self.duration})"


# --------------------------------------------------------------------------------------------
# Live source (PyAV, reconnect with back-off)
# --------------------------------------------------------------------------------------------


class LiveSource:
    """A live stream (rtsp/rtmp/http(s)/srt, ``/dev/video*``) or any file PyAV can open.

    The first connection is made at construction (errors surface before ingestion). For network
    streams and devices, ``t`` counts seconds from the first frame; for local files it is the
    container's pts. When a live stream fails (error, stall past ``read_timeout_s``, or end of
    stream on rtsp/rtmp/srt/udp/tcp/devices) it is reopened with exponential back-off
    (``backoff_s * 2**attempt``, at most ``max_retries`` attempts in a row); the stream time lost
    is recorded in ``gaps`` as ``(last_t, resumed_t)`` and ``reconnects`` counts the successes.
    When retries run out, iteration raises SourceError. For a local file a decode error means
    truncation: a warning, then the end.
    """

    def __init__(self, url: str | os.PathLike, *, max_side: int | None = None, reconnect: bool = True,
                 max_retries: int = 5, backoff_s: float = 0.5, open_timeout_s: float = 10.0,
                 read_timeout_s: float | None = None, options: dict | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        _check_max_side(max_side)
        if max_retries < 0 or backoff_s < 0 or open_timeout_s <= 0:
            raise ValueError("need max_retries >= 0, backoff_s >= 0 and open_timeout_s > 0")
        self.url = str(url)
        self.name = _redact(self.url)
        self.max_side, self.reconnect, self.max_retries, self.backoff_s = max_side, reconnect, max_retries, backoff_s
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s if read_timeout_s is not None else max(open_timeout_s, 5.0)
        self._clock, self._sleep = clock, sleep
        self._is_device = is_device(self.url)
        self._is_url = is_url(self.url)
        self._is_file = not (self._is_device or self._is_url)
        self._live = self._is_device or (self._is_url and urlsplit(self.url).scheme.lower() in LIVE_SCHEMES)
        self._options = dict(options or {})
        if urlsplit(self.url).scheme.lower() in ("rtsp", "rtsps"):
            self._options.setdefault("rtsp_transport", "tcp")
        self.gaps: list[tuple[float, float]] = []
        self.reconnects = 0
        self.bad_packets = 0  # undecodable packets skipped (damaged data, packet loss)
        self._closed = False
        self._container = None
        if self._is_file:
            _check_file(self.url)
        self._container = self._connect_with_retries(first=True)
        facts = _stream_facts(self._container)
        self.fps = facts["fps"]
        self.duration = None if self._live else facts["duration"]
        self.width, self.height, self.codec = facts["width"], facts["height"], facts["codec"]

    def _connect(self):
        try:
            container = _open_container(self.url, timeout=(self.open_timeout_s, self.read_timeout_s),
                                        options=self._options, fmt="v4l2" if self._is_device else None)
        except Exception as exc:  # noqa: BLE001
            raise _container_error(self.url, exc, is_file=self._is_file) from exc
        if not container.streams.video:
            container.close()
            raise (_file_error(self.url, "it has no video stream", "give a file with a video track") if self._is_file
                   else _stream_error(self.url, "it has no video stream", "check that the URL serves video"))
        return container

    def _connect_with_retries(self, *, first: bool):
        attempts = self.max_retries if (self.reconnect and not self._is_file) else 0
        if first:  # a stream that never opened is usually a wrong URL: say so within ~1.5 s
            attempts = min(attempts, 2)
        for attempt in range(attempts + 1):
            if self._closed:
                return None
            try:
                return self._connect()
            except SourceError as err:
                if attempt >= attempts:
                    raise
                wait = min(self.backoff_s * (2 ** attempt), 30.0)
                logger.warning("%s %r failed (%s); retry %d/%d in %.1fs", "opening" if first else "reconnecting",
                               self.name, err, attempt + 1, attempts, wait)
                self._sleep(wait)
        raise AssertionError("unreachable")

    def _decode(self, container, log: _DecodeLog) -> Iterator[tuple[float | None, np.ndarray]]:
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"
        for frame in _decode_video(container, vs, log):
            yield frame.time, frame.to_ndarray(format="rgb24")

    def __iter__(self) -> Iterator[Frame]:
        import av

        if self._closed:
            raise RuntimeError(f"LiveSource {self.name!r} is closed; open a new one")
        last_t: float | None = None  # stream time of the last frame yielded
        last_wall = self._clock()
        fallback_dt = 1.0 / (self.fps or 25.0)
        first_pass = True
        while not self._closed:
            # the iterating thread owns the open container: close() from another thread only sets a flag
            container, self._container = self._container, None
            if container is None:  # iterating again, or reconnecting after a failure
                try:
                    container = self._connect_with_retries(first=first_pass)
                except SourceError as err:
                    if first_pass:
                        raise
                    raise SourceError(f"stream {self.name!r} lost after {self.max_retries} reconnect attempts "
                                      f"({err}); check the source and open it again") from err
                if container is None:
                    return
                if not first_pass:
                    self.reconnects += 1
            first_pass = False
            base: float | None = None  # stream time of this connection's first frame
            first_pts: float | None = None
            error: BaseException | None = None
            log = _DecodeLog(container if self._is_file else None)
            try:
                for pts, rgb in self._decode(container, log):
                    if self._is_file:
                        t = float(pts) if pts is not None else (0.0 if last_t is None else last_t + fallback_dt)
                    else:
                        if base is None:  # first frame of this connection
                            if last_t is None:
                                base = 0.0
                            else:  # resume after a reconnect: the wall-clock outage is stream time lost
                                base = last_t + max(fallback_dt, self._clock() - last_wall)
                                self.gaps.append((last_t, base))
                                logger.warning("stream %r resumed; lost %.2fs of stream time", self.name, base - last_t)
                            first_pts = pts
                        if pts is None or first_pts is None:
                            t = base if last_t is None or last_t < base else last_t + fallback_dt
                        else:
                            t = base + float(pts) - float(first_pts)
                    last_t, last_wall = t, self._clock()
                    log.add(t)
                    yield Frame(t, resize_max_side(rgb, self.max_side))
                    if self._closed:
                        return
            except (av.FFmpegError, EOFError, OSError) as exc:
                error = exc
            finally:
                self.bad_packets += log.bad_packets
                try:
                    container.close()
                except Exception:  # noqa: BLE001 - closing a broken container
                    pass
            if self._is_file:
                log.warn_if_damaged(self.name, error)
                return
            if error is None and not self._live:
                return  # http(s) file or finished stream: a clean end
            if not self.reconnect:
                if error is not None:
                    raise SourceError(f"stream {self.name!r} failed ({_exc_text(error)}); "
                                      "pass reconnect=True or check the source")
                return
            logger.warning("stream %r %s at t=%s; reconnecting", self.name,
                           f"failed ({_exc_text(error)})" if error is not None else "ended",
                           "?" if last_t is None else f"{last_t:.2f}s")

    def close(self) -> None:
        """Stop iterating (at the next frame or read timeout) and close the connection."""
        self._closed = True
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception:  # noqa: BLE001
                pass

    def __enter__(self) -> "LiveSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LiveSource({self.name!r}, fps={self.fps}, reconnects={self.reconnects})"


# --------------------------------------------------------------------------------------------
# Push source (webcam frames handed in by a caller)
# --------------------------------------------------------------------------------------------


class PushSource:
    """Frames pushed by a caller (e.g. the Gradio webcam callback); thread-safe and bounded.

    ``push`` never blocks: when ``maxsize`` frames are waiting, the new frame is dropped, counted in
    ``dropped`` and ``push`` returns False. Iteration blocks for the next frame and ends after
    ``end()`` once the queued frames are consumed.
    """

    def __init__(self, *, maxsize: int = 256, name: str = "push", max_side: int | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        _check_max_side(max_side)
        self.name, self.maxsize, self.max_side = name, maxsize, max_side
        self.fps: float | None = None
        self.duration: float | None = None
        self.pushed = 0
        self.dropped = 0
        self._clock = clock
        self._t0: float | None = None
        self._queue: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._ended = False

    def push(self, rgb: np.ndarray, t: float | None = None) -> bool:
        """Queue ``rgb`` [H, W, 3] uint8 (RGBA: alpha dropped) at time ``t`` (None: seconds since the first push).

        Returns False when the frame was not queued (queue full: counted in ``dropped``; or after end()).
        """
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.dtype != np.uint8:
            raise ValueError(f"push() wants an [H, W, 3] uint8 RGB array, got shape {rgb.shape} dtype {rgb.dtype}")
        with self._cond:
            if self._ended:
                logger.debug("PushSource %r: frame pushed after end(), ignored", self.name)
                return False
            now = self._clock()
            if self._t0 is None:
                self._t0 = now
            if len(self._queue) >= self.maxsize:
                self.dropped += 1
                return False
            t = now - self._t0 if t is None else float(t)
            self._queue.append(Frame(t, resize_max_side(np.ascontiguousarray(rgb[..., :3]).copy(), self.max_side)))
            self.pushed += 1
            self._cond.notify()
            return True

    def end(self) -> None:
        """No more frames: iteration ends after the queued frames are consumed."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def qsize(self) -> int:
        """Frames waiting to be consumed."""
        with self._cond:
            return len(self._queue)

    def __iter__(self) -> Iterator[Frame]:
        while True:
            with self._cond:
                while not self._queue and not self._ended:
                    self._cond.wait()
                if not self._queue:
                    return
                frame = self._queue.popleft()
            yield frame

    def close(self) -> None:
        """End the stream and discard frames not yet consumed."""
        with self._cond:
            self._ended = True
            self._queue.clear()
            self._cond.notify_all()

    def __repr__(self) -> str:
        return f"PushSource({self.name!r}, pushed={self.pushed}, dropped={self.dropped})"


# --------------------------------------------------------------------------------------------
# Synthetic source
# --------------------------------------------------------------------------------------------

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30), "green": (30, 190, 60), "blue": (40, 80, 230), "yellow": (240, 220, 30),
    "white": (255, 255, 255), "black": (0, 0, 0), "orange": (250, 140, 20), "purple": (140, 50, 200),
    "cyan": (30, 210, 220), "magenta": (220, 40, 200), "gray": (128, 128, 128), "brown": (130, 80, 40),
}
EVENT_KINDS = ("text", "shape", "counter", "scene")
SHAPES = ("square", "circle", "triangle")
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _color(value: Any, where: str) -> tuple[int, int, int]:
    if isinstance(value, str):
        if value not in COLORS:
            raise ValueError(f"{where}: unknown color {value!r}; use one of {', '.join(COLORS)} or an (r, g, b) triple")
        return COLORS[value]
    try:
        r, g, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: color must be a name or an (r, g, b) triple, got {value!r}") from None
    return r, g, b


def _bounce(x: float, lo: float, hi: float) -> float:
    """Reflect ``x`` into [lo, hi] (a ball bouncing between two walls)."""
    if hi <= lo:
        return lo
    span = hi - lo
    y = (x - lo) % (2 * span)
    return lo + (y if y <= span else 2 * span - y)


class SyntheticSource:
    """Deterministic test scenes: moving shapes, a caption, a clock, and scripted events.

    ``size`` is ``(width, height)``. Frames are at ``t = k / fps`` for ``start_s <= t < min(duration_s, end_s)``;
    ``duration_s=float('inf')`` gives an endless stream rendered lazily. Every frame is a pure function
    of ``(seed, events, t)`` (see ``frame_at``). Events are dicts with ``start_s`` and optional
    ``end_s`` (None: until the end) and one of these kinds (positions are fractions of the frame):

    - ``{"kind": "text", "text": "SLIDE 1", "pos": (0.05, 0.35), "color": "white", "scale": 1.0}``
      (text wraps to the frame width; ``pos`` is the top-left corner)
    - ``{"kind": "shape", "shape": "square"|"circle"|"triangle", "color": "red", "pos": (0.3, 0.5),
      "size": 0.2, "velocity": (0.0, 0.0)}`` (``pos`` is the centre; ``velocity`` in frames/s, bouncing)
    - ``{"kind": "counter", "label": "COUNT", "start": 0, "step": 1, "every_s": 1.0, "pos": (0.62, 0.08)}``
      (shows ``label value``, value = start + step * floor((t - start_s) / every_s))
    - ``{"kind": "scene", "color": "blue"}`` (background colour while active: a scene cut)
    """

    def __init__(self, *, seed: int = 0, duration_s: float = 10.0, fps: float = 10.0,
                 size: tuple[int, int] = (128, 128), events: list | None = None, caption: str | None = None,
                 n_shapes: int = 2, clock: bool = True, max_side: int | None = None, start_s: float = 0.0,
                 end_s: float | None = None):
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if not duration_s > 0:
            raise ValueError(f"duration_s must be > 0 (float('inf') for endless), got {duration_s}")
        w, h = (int(v) for v in size)
        if w < 16 or h < 16:
            raise ValueError(f"size must be at least 16x16, got {size}")
        _check_max_side(max_side)
        if start_s < 0 or (end_s is not None and end_s <= start_s):
            raise ValueError(f"need 0 <= start_s < end_s, got start_s={start_s}, end_s={end_s}")
        self.start_s, self.end_s = float(start_s), end_s
        self.seed, self.fps, self.size, self.max_side = int(seed), float(fps), (w, h), max_side
        self.duration_s = float(duration_s)
        self.duration: float | None = None if math.isinf(self.duration_s) else self.duration_s
        self.name = f"synthetic:seed={self.seed}"
        self.caption = f"synthetic seed={self.seed}" if caption is None else caption
        self.show_clock = clock
        self.events = [self._check_event(i, e) for i, e in enumerate(events or [])]
        rng = np.random.default_rng(self.seed)
        base = rng.integers(20, 90, size=3)
        self._background = self._gradient(tuple(int(c) for c in base))
        self._shapes = []
        for _ in range(n_shapes):
            self._shapes.append({
                "shape": SHAPES[int(rng.integers(len(SHAPES)))],
                "color": tuple(int(c) for c in rng.integers(120, 256, size=3)),
                "size": float(rng.uniform(0.10, 0.18)),
                "pos": (float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.3, 0.7))),
                "velocity": (float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3))),
            })

    @staticmethod
    def _check_event(i: int, e: dict) -> dict:
        where = f"events[{i}]"
        if not isinstance(e, dict):
            raise ValueError(f"{where} must be a dict, got {type(e).__name__}")
        kind = e.get("kind")
        if kind not in EVENT_KINDS:
            raise ValueError(f"{where}: kind must be one of {', '.join(EVENT_KINDS)}, got {kind!r}")
        out = dict(e)
        out["start_s"] = float(e.get("start_s", 0.0))
        end = e.get("end_s")
        out["end_s"] = None if end is None else float(end)
        if out["end_s"] is not None and out["end_s"] <= out["start_s"]:
            raise ValueError(f"{where}: end_s ({end}) must be after start_s ({out['start_s']})")
        if kind == "text" and not isinstance(e.get("text"), str):
            raise ValueError(f"{where}: a text event needs a 'text' string")
        if kind == "shape" and e.get("shape", "square") not in SHAPES:
            raise ValueError(f"{where}: shape must be one of {', '.join(SHAPES)}, got {e.get('shape')!r}")
        if kind == "counter" and float(e.get("every_s", 1.0)) <= 0:
            raise ValueError(f"{where}: every_s must be > 0")
        if "color" in e:
            out["color"] = _color(e["color"], where)
        return out

    def _gradient(self, rgb: tuple[int, int, int]) -> np.ndarray:
        w, h = self.size
        ramp = np.linspace(0.7, 1.15, h, dtype=np.float32)[:, None, None]  # [H, 1, 1]
        img = np.clip(np.asarray(rgb, np.float32)[None, None, :] * ramp, 0, 255)  # [H, 1, 3]
        return np.ascontiguousarray(np.broadcast_to(img, (h, w, 3)).astype(np.uint8))

    @staticmethod
    def active(event: dict, t: float) -> bool:
        """True when ``event`` is shown at time ``t``."""
        return event["start_s"] <= t + 1e-9 and (event["end_s"] is None or t < event["end_s"] - 1e-9)

    @staticmethod
    def counter_value(event: dict, t: float) -> int:
        """The value a counter event shows at time ``t``."""
        k = math.floor((t - event["start_s"]) / float(event.get("every_s", 1.0)) + 1e-9)
        return int(event.get("start", 0)) + int(event.get("step", 1)) * k

    def _draw_shape(self, img: np.ndarray, spec: dict, t: float, t_local: float) -> None:
        w, h = self.size
        r = max(2, int(round(float(spec.get("size", 0.2)) * min(w, h) / 2)))
        px, py = spec.get("pos", (0.5, 0.5))
        vx, vy = spec.get("velocity", (0.0, 0.0))
        cx = int(round(_bounce(px * w + vx * w * t_local, r, w - 1 - r)))
        cy = int(round(_bounce(py * h + vy * h * t_local, r, h - 1 - r)))
        color = spec.get("color", COLORS["red"])
        color = color if isinstance(color, tuple) else _color(color, "shape")
        kind = spec.get("shape", "square")
        if kind == "circle":
            cv2.circle(img, (cx, cy), r, color, -1, cv2.LINE_AA)
        elif kind == "triangle":
            pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
            cv2.fillPoly(img, [pts], color, cv2.LINE_AA)
        else:
            cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)

    def _text(self, img: np.ndarray, text: str, pos: tuple[float, float], color=(255, 255, 255),
              scale: float = 1.0) -> None:
        """Draw ``text`` with a drop shadow, wrapped to the frame width; ``pos`` is the top-left (fractions)."""
        w, h = self.size
        fs = max(0.25, h / 300.0) * scale
        thick = max(1, int(round(fs * 2)))
        x0, y = int(pos[0] * w), int(pos[1] * h)
        lines: list[str] = []
        for word in text.split():
            cand = f"{lines[-1]} {word}" if lines else word
            if lines and cv2.getTextSize(cand, _FONT, fs, thick)[0][0] > w - x0 - 2:
                lines.append(word)
            elif lines:
                lines[-1] = cand
            else:
                lines.append(word)
        for line in lines:
            (tw, th), base = cv2.getTextSize(line, _FONT, fs, thick)
            y += th + 2
            cv2.putText(img, line, (x0 + 1, y + 1), _FONT, fs, (0, 0, 0), thick, cv2.LINE_AA)  # shadow
            cv2.putText(img, line, (x0, y), _FONT, fs, color, thick, cv2.LINE_AA)
            y += base

    def frame_at(self, t: float) -> np.ndarray:
        """Render the frame at time ``t``: ``[H, W, 3]`` uint8 (before ``max_side``)."""
        img = self._background.copy()
        for e in self.events:
            if e["kind"] == "scene" and self.active(e, t):
                img = self._gradient(e.get("color", COLORS["gray"]))
        for spec in self._shapes:
            self._draw_shape(img, spec, t, t)
        for e in self.events:
            if not self.active(e, t):
                continue
            if e["kind"] == "shape":
                self._draw_shape(img, e, t, t - e["start_s"])
            elif e["kind"] == "text":
                self._text(img, e["text"], e.get("pos", (0.05, 0.35)), e.get("color", (255, 255, 255)),
                           float(e.get("scale", 1.0)))
            elif e["kind"] == "counter":
                label = e.get("label", "COUNT")
                self._text(img, f"{label} {self.counter_value(e, t)}", e.get("pos", (0.62, 0.02)),
                           e.get("color", COLORS["yellow"]), float(e.get("scale", 1.0)))
        if self.caption:
            self._text(img, self.caption, (0.03, 0.02), scale=1.0)
        if self.show_clock:
            minutes, secs = divmod(t, 60.0)
            self._text(img, f"{int(minutes):02d}:{secs:04.1f}", (0.03, 0.82), COLORS["cyan"])
        return img

    def __iter__(self) -> Iterator[Frame]:
        end = min(self.duration_s, math.inf if self.end_s is None else self.end_s)
        first = math.ceil(self.start_s * self.fps - 1e-9)
        steps = itertools.count(first) if math.isinf(end) else range(first, math.ceil(end * self.fps - 1e-9))
        for k in steps:
            t = k / self.fps
            yield Frame(t, resize_max_side(self.frame_at(t), self.max_side))

    def close(self) -> None:
        """Nothing to release (frames are rendered on demand)."""

    def __repr__(self) -> str:
        return f"SyntheticSource(seed={self.seed}, duration_s={self.duration_s}, fps={self.fps}, size={self.size})"


# --------------------------------------------------------------------------------------------
# open_source
# --------------------------------------------------------------------------------------------


_SYNTHETIC_KEYS = {"seed": ("seed", int), "duration": ("duration_s", float), "duration_s": ("duration_s", float),
                   "fps": ("fps", float), "size": ("size", lambda v: tuple(int(x) for x in v.lower().split("x", 1))),
                   "caption": ("caption", str)}


def _parse_synthetic(spec: str) -> dict:
    """``"synthetic:seed=3,duration=60,fps=10,size=128x96"`` -> SyntheticSource kwargs."""
    _, _, rest = spec.partition(":")
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, _, value = (p.strip() for p in item.partition("="))
        if key not in _SYNTHETIC_KEYS:
            raise SourceError(f"unknown synthetic option {key!r} in {spec!r}; use {', '.join(_SYNTHETIC_KEYS)}")
        name, parse = _SYNTHETIC_KEYS[key]
        try:
            out[name] = parse(value)
            if name == "size" and len(out[name]) != 2:
                raise ValueError
        except ValueError:
            raise SourceError(f"bad synthetic option {item!r} in {spec!r}; "
                              "write e.g. synthetic:seed=3,duration=60,fps=10,size=128x96") from None
    return out


def open_source(spec: Any, **kw: Any) -> VideoSource:
    """Open ``spec`` as a VideoSource (validated now, so errors surface before ingestion).

    ``spec``: a VideoSource (returned as is); ``"synthetic"`` or ``"synthetic:seed=3,duration=60,fps=10,
    size=128x96"``; an rtsp/rtmp/http(s)/srt/udp/tcp URL or a ``/dev/video*`` path (LiveSource); an
    existing file (FileSource). ``kw`` go to the source's constructor.
    """
    if isinstance(spec, VideoSource) and not isinstance(spec, (str, bytes, os.PathLike)):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise SourceError(f"cannot open video source {spec!r}: unsupported type {type(spec).__name__}; "
                          "give a file path, a URL, 'synthetic' or a VideoSource")
    text = str(spec)
    if text == "synthetic" or text.startswith("synthetic:"):
        return SyntheticSource(**{**_parse_synthetic(text), **kw})
    if is_url(text) or is_device(text):
        return LiveSource(text, **kw)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise _stream_error(text, f"unsupported scheme {scheme!r}", f"use one of {', '.join(URL_SCHEMES)}")
    return FileSource(text, **kw)


# --------------------------------------------------------------------------------------------
# Writing clips (PyAV)
# --------------------------------------------------------------------------------------------

_CODEC_CHOICES = {"h264": ("libx264", "h264", "libopenh264", "mpeg4"), "hevc": ("libx265", "hevc", "mpeg4"),
                  "mpeg4": ("mpeg4",)}


def _pick_encoder(codec: str) -> str:
    import av

    for name in _CODEC_CHOICES.get(codec, (codec,)):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - codec not built into this FFmpeg
            continue
    raise ValueError(f"no encoder for codec {codec!r} in this PyAV build; use codec='mpeg4'")


def write_video(path: str | os.PathLike, frames_iter: Iterable[np.ndarray | Frame], fps: float,
                codec: str = "h264", *, crf: int = 23, faststart: bool = True) -> Path:
    """Encode frames to a video file with PyAV; returns the path.

    ``frames_iter`` yields ``[H, W, 3]`` uint8 arrays (constant rate: frame k at k / fps) or ``Frame``
    objects whose ``t`` becomes the pts (variable frame rate, millisecond precision). ``codec="h264"``
    uses libx264 when present, else another H.264 encoder, else MPEG-4 Part 2. ``faststart`` puts
    the MP4 index first, so a truncated copy stays readable up to the cut.
    """
    import av

    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path = Path(path)
    encoder = _pick_encoder(codec)
    it = iter(frames_iter)
    first = next(it, None)
    if first is None:
        raise ValueError("write_video() got no frames; give at least one")
    vfr = isinstance(first, Frame)
    rate = fractions.Fraction(fps).limit_denominator(1001)
    time_base = fractions.Fraction(1, 1000) if vfr else 1 / rate
    options = {"movflags": "+faststart"} if faststart and path.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
    container = av.open(str(path), mode="w", options=options)
    try:
        stream = container.add_stream(encoder, rate=rate)
        h, w = (first.rgb if vfr else first).shape[:2]
        if w % 2 or h % 2:
            raise ValueError(f"width and height must be even for {encoder}, got {w}x{h}; crop or resize the frames")
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = time_base
        if encoder == "libx264":
            stream.options = {"crf": str(crf), "preset": "medium"}
            stream.codec_context.thread_count = 1  # deterministic output, cheap for small clips
        elif encoder == "mpeg4":
            stream.codec_context.bit_rate = 2_000_000
        last_pts = -1
        for k, item in enumerate(itertools.chain([first], it)):
            rgb = item.rgb if vfr else item
            if isinstance(item, Frame) != vfr:
                raise ValueError("write_video() frames must be all arrays or all Frame objects")
            rgb = np.asarray(rgb)
            if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
                raise ValueError(f"frame {k}: want [{h}, {w}, 3] uint8, got {rgb.shape} {rgb.dtype}")
            pts = int(round(item.t / time_base)) if vfr else k
            if pts <= last_pts:
                raise ValueError(f"frame {k}: timestamps must increase by at least 1 ms (t={getattr(item, 't', k)})")
            last_pts = pts
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            vf.pts, vf.time_base = pts, time_base
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    return path


# --------------------------------------------------------------------------------------------
# Sampler and chunker
# --------------------------------------------------------------------------------------------


class Sampler:
    """Picks frames by timestamp at a target fps (variable frame rate exists: never by frame index).

    Slots are at ``t0 + k / fps`` (``t0`` = first frame's t). The first frame with ``t >= slot`` (1 ms
    tolerance, at most a tenth of a slot) is kept and the next slot is the first one after it, so a
    late frame never causes a burst. Counters (reset at each call): ``frames_in``, ``frames_kept``,
    ``frames_skipped`` (not needed at this rate, or going back in time) and ``frames_dropped``.

    ``realtime=True`` paces the output to the wall clock: a frame at stream time ``t`` is emitted no
    earlier than ``start_wall + (t - t0)``. A frame that would be kept but whose time is more than one
    slot behind the wall clock (the consumer was too slow) is dropped and counted in ``frames_dropped``.
    """

    def __init__(self, fps: float, *, realtime: bool = False, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if not fps > 0:
            raise ValueError(f"Sampler fps must be > 0, got {fps}")
        self.fps, self.realtime, self.clock, self.sleep = float(fps), realtime, clock, sleep
        self.period = 1.0 / self.fps
        self.tol = min(1e-3, 0.1 * self.period)
        self._reset()

    def _reset(self) -> None:
        self.frames_in = self.frames_kept = self.frames_skipped = self.frames_dropped = 0
        self._start_wall: float | None = None  # realtime: wall-clock time of the first frame
        self._t0 = 0.0  # stream time of the first frame

    def lag_s(self, t: float) -> float:
        """Realtime: how far stream time ``t`` is behind the wall clock (0 before the first frame)."""
        if self._start_wall is None:
            return 0.0
        return (self.clock() - self._start_wall) - (t - self._t0)

    def __call__(self, frames: Iterable[Frame]) -> Iterator[Frame]:
        self._reset()
        next_slot = None  # stream time of the next slot
        last_kept = -math.inf
        for frame in frames:
            self.frames_in += 1
            t = frame.t
            if next_slot is None:
                self._t0, next_slot = t, t
                if self.realtime:
                    self._start_wall = self.clock()
            if t < next_slot - self.tol or t <= last_kept:
                self.frames_skipped += 1
                continue
            # the next slot is the first one strictly after t (with the tolerance)
            k = math.floor((t - self._t0 + self.tol) * self.fps) + 1
            next_slot = self._t0 + k * self.period
            if self.realtime:
                lag = self.lag_s(t)
                if lag > self.period:
                    self.frames_dropped += 1
                    continue
                if lag < 0:
                    self.sleep(-lag)
            last_kept = t
            self.frames_kept += 1
            yield frame

    def stats(self) -> dict:
        """The counters as a dict."""
        return {"frames_in": self.frames_in, "frames_kept": self.frames_kept,
                "frames_skipped": self.frames_skipped, "frames_dropped": self.frames_dropped}


def time_marker(start_s: float, end_s: float) -> str:
    """The chunk's text marker, e.g. ``"Time=12.0-13.0s"`` (one decimal)."""
    return f"Time={start_s:.1f}-{end_s:.1f}s"


@dataclass
class Chunk:
    """Frames of one chunk of stream time ``[start_s, end_s)``."""

    index: int  # 0, 1, 2, ... in emission order (empty intervals are skipped, indices are not)
    start_s: float
    end_s: float
    frames: np.ndarray  # [N, H, W, 3] uint8
    timestamps: list[float]  # N frame times

    @property
    def marker(self) -> str:
        """``"Time=12.0-13.0s"``."""
        return time_marker(self.start_s, self.end_s)

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def fit_frame_count(frames: np.ndarray, timestamps: list[float], n: int) -> tuple[np.ndarray, list[float]]:
    """Make exactly ``n`` frames: repeat the last one when short, subsample evenly when long."""
    have = frames.shape[0]
    if have == n:
        return frames, list(timestamps)
    if have < n:
        idx = list(range(have)) + [have - 1] * (n - have)
    else:
        idx = np.linspace(0, have - 1, n).round().astype(int).tolist()
    return frames[idx], [timestamps[i] for i in idx]


class Chunker:
    """Groups sampled frames into chunks of chunk_seconds of stream time: chunk k covers [t0 + k*c, t0 + (k+1)*c).

    ``t0`` is ``origin`` when given, else the first frame's t. Empty intervals (gaps, stalls) are
    skipped, not emitted empty; the last partial chunk is emitted. With ``frames_per_chunk`` every
    chunk has exactly that many frames: fewer are padded by repeating the last frame, more are
    subsampled evenly (Qwen2.5-VL wants an even count: temporal patch 2). A frame whose size differs
    from the chunk's first frame is resized to it.
    """

    def __init__(self, chunk_seconds: float = 1.0, *, frames_per_chunk: int | None = None,
                 origin: float | None = None):
        if not chunk_seconds > 0:
            raise ValueError(f"chunk_seconds must be > 0, got {chunk_seconds}")
        if frames_per_chunk is not None and frames_per_chunk < 1:
            raise ValueError(f"frames_per_chunk must be >= 1 or None, got {frames_per_chunk}")
        self.chunk_seconds, self.frames_per_chunk, self.origin = float(chunk_seconds), frames_per_chunk, origin

    def _make(self, index: int, k: int, t0: float, rgbs: list[np.ndarray], ts: list[float]) -> Chunk:
        h, w = rgbs[0].shape[:2]
        rgbs = [r if r.shape[:2] == (h, w) else cv2.resize(r, (w, h), interpolation=cv2.INTER_AREA) for r in rgbs]
        frames = np.stack(rgbs)  # [N, H, W, 3]
        if self.frames_per_chunk is not None:
            frames, ts = fit_frame_count(frames, ts, self.frames_per_chunk)
        c = self.chunk_seconds
        return Chunk(index=index, start_s=t0 + k * c, end_s=t0 + (k + 1) * c, frames=frames, timestamps=list(ts))

    def __call__(self, frames: Iterable[Frame]) -> Iterator[Chunk]:
        t0 = self.origin
        cur_k: int | None = None
        rgbs: list[np.ndarray] = []
        ts: list[float] = []
        index = 0
        for frame in frames:
            if t0 is None:
                t0 = frame.t
            k = math.floor((frame.t - t0) / self.chunk_seconds + 1e-9)
            if cur_k is not None and k > cur_k:
                yield self._make(index, cur_k, t0, rgbs, ts)
                index += 1
                rgbs, ts = [], []
            if cur_k is None or k > cur_k:
                cur_k = k
            elif k < cur_k:
                logger.debug("frame at t=%.3f is before the current chunk; kept in chunk %d", frame.t, index)
            rgbs.append(frame.rgb)
            ts.append(frame.t)
        if rgbs:
            yield self._make(index, cur_k, t0, rgbs, ts)
