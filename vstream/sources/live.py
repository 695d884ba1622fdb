"""Live streams: ``LiveSource`` reads rtsp/rtmp/http(s)/srt/udp/tcp URLs and ``/dev/video*`` with PyAV.

It reconnects with exponential back-off when a live stream fails or stalls, records the stream time
lost in ``gaps`` (and ``gap_records``: at, duration, reason), and counts reconnects and undecodable
packets. An http(s) URL is live when it has no duration or is MPEG-TS/HLS; of those, a *finite* one (an
HLS playlist with ``#EXT-X-ENDLIST``, which ffmpeg reports as a duration, or a file of known size, e.g.
a ``.ts`` with a Content-Length) ends at its end of file: only a dropped connection reconnects. Answers that will not
change (HTTP 4xx, a page that is not video) are not retried. An http(s) file that gives no frame
(an MP4 with its index at the end, on a server without Range requests) is downloaded once, within
``max_download_bytes``, and played from the local copy; otherwise it ends with one clear line.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
import time
import urllib.request
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit


from vstream.clock import check_zone
from vstream.sources.frames import ConversionCounter, Frame, check_max_side
from vstream.sources.errors import (LIVE_SCHEMES, SourceError, _check_file, _container_error, _exc_text, _file_error,
                                    _redact, _stream_error, is_device, is_url)
from vstream.sources.pyav import (DeviceDecoding, _decode_video, _DecodeLog, _open_container, _stream_facts, _video_origin,
                                  rgb_of)

logger = logging.getLogger(__name__)

#: container formats that mean a live http(s) stream (no end to wait for)
LIVE_HTTP_FORMATS = ("mpegts", "hls", "applehttp", "flv", "rtp", "sdp")
#: ffmpeg protocols an http(s) source (and the HLS playlists it serves) may use: no file:, no listening
HTTP_PROTOCOLS = "http,https,tcp,tls,crypto"


def _http_finite(container, fmt: str, duration: float | None) -> bool:
    """True for an http(s) resource with an end: an ended HLS playlist (ffmpeg gives it a duration only
    with #EXT-X-ENDLIST) or a body of known size (Content-Length); a live feed has neither."""
    names = fmt.split(",")
    if "hls" in names or "applehttp" in names:
        return duration is not None
    try:
        size = int(container.size)
    except Exception:  # noqa: BLE001 - no size: a live feed (chunked transfer)
        return False
    return size > 0


def _final(err: BaseException) -> bool:
    """True when reconnecting cannot help: HTTP 4xx (but 429) or data that is not video (e.g. an HTML page)."""
    import av

    cause = err.__cause__ if err.__cause__ is not None else err
    if isinstance(cause, av.HTTPTooManyRequestsError):
        return False
    return isinstance(cause, (av.HTTPClientError, av.InvalidDataError))


class LiveSource(ConversionCounter, DeviceDecoding):
    """A live stream (rtsp/rtmp/http(s)/srt, ``/dev/video*``) or any file PyAV can open.

    The first connection is made at construction (errors surface before ingestion). For network
    streams and devices, ``t`` counts seconds from the first frame; for local files it is the
    container's pts. When a live stream fails (error, stall past ``read_timeout_s``, or end of
    stream on rtsp/rtmp/srt/udp/tcp/devices) it is reopened with exponential back-off
    (``backoff_s * 2**attempt``, at most ``max_retries`` attempts in a row); the stream time lost
    is recorded in ``gaps`` as ``(last_t, resumed_t)`` and ``reconnects`` counts the successes.
    When retries run out, iteration raises SourceError. For a local file a decode error means
    truncation: a warning, then the end. Frames are lazy: a picture is converted to RGB only when its
    ``rgb`` is read (``frames_decoded`` / ``frames_converted`` count both, over the source's life).
    """

    def __init__(self, url: str | os.PathLike, *, max_side: int | None = None, reconnect: bool = True,
                 max_retries: int = 5, backoff_s: float = 0.5, open_timeout_s: float = 10.0,
                 read_timeout_s: float | None = None, options: dict | None = None,
                 max_download_bytes: int = 2 << 30,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 wall_clock: Callable[[], float] = time.time, tz: str | None = None):
        check_max_side(max_side)
        self.tz = check_zone(tz)  # the camera's zone (IANA name, default this machine's)
        self._wall_clock = wall_clock  # live streams: each frame's wall time is its arrival time
        if max_retries < 0 or backoff_s < 0 or open_timeout_s <= 0 or max_download_bytes < 0:
            raise ValueError("need max_retries >= 0, backoff_s >= 0, open_timeout_s > 0 and max_download_bytes >= 0")
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
        if urlsplit(self.url).scheme.lower() in ("http", "https"):
            self._options.setdefault("protocol_whitelist", HTTP_PROTOCOLS)
        self.max_download_bytes = int(max_download_bytes)
        self.gaps: list[tuple[float, float]] = []
        self.gap_records: list[dict] = []  # {"at_s", "duration_s", "reason"} per gap (for stats and JSON lines)
        self.reconnects = 0
        self._download: str | None = None  # local copy of an http(s) file that could not be streamed
        self.bad_packets = 0  # undecodable packets skipped (damaged data, packet loss)
        self._closed = False
        self._container = None
        self._finite = False  # a live-format http(s) resource with an end (see _http_finite)
        if self._is_file:
            _check_file(self.url)
        self._container = self._connect_with_retries(first=True)
        facts = _stream_facts(self._container)
        if self._is_url and not self._live:  # http(s): live when it has no end or is a live format
            fmt = str(getattr(getattr(self._container, "format", None), "name", "") or "")
            if facts["duration"] is None or any(f in fmt.split(",") for f in LIVE_HTTP_FORMATS):
                self._live = True
                self._finite = _http_finite(self._container, fmt, facts["duration"])
                logger.info("stream %r (%s, duration %s) is %s", self.name, fmt or "?", facts["duration"],
                            "finite: it ends at its end, reconnecting only when the connection drops"
                            if self._finite else "live: it reconnects when it drops")
        self.fps = facts["fps"]
        self.duration = None if self._live else facts["duration"]
        self.width, self.height, self.codec = facts["width"], facts["height"], facts["codec"]

    def _connect(self):
        try:
            container = self._open_on_device(_open_container, self.url,
                                             timeout=(self.open_timeout_s, self.read_timeout_s),
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
                if attempt >= attempts or _final(err):
                    raise
                wait = min(self.backoff_s * (2 ** attempt), 30.0)
                logger.warning("%s %r failed (%s); retry %d/%d in %.1fs", "opening" if first else "reconnecting",
                               self.name, err, attempt + 1, attempts, wait)
                self._sleep(wait)
        raise AssertionError("unreachable")

    def _decode(self, container, log: _DecodeLog) -> Iterator[tuple[float | None, Any]]:
        """(pts seconds, decoded picture) of the first video stream; pictures are converted later."""
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"
        for frame in _decode_video(container, vs, log):
            self.frames_decoded += 1
            yield frame.time, frame

    def __iter__(self) -> Iterator[Frame]:
        import av

        if self._closed:
            raise RuntimeError(f"LiveSource {self.name!r} is closed; open a new one")
        last_t: float | None = None  # stream time of the last frame yielded
        last_wall = self._clock()
        fallback_dt = 1.0 / (self.fps or 25.0)
        first_pass = True
        fruitless = 0  # connections in a row that ended before their first frame
        last_error: BaseException | None = None
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
            frames_here = 0
            try:
                for pts, picture in self._decode(container, log):
                    if pts is not None and not math.isfinite(pts):
                        pts = None  # a frame without a usable time (PyAV gives NaN): placed after the last one
                    if self._is_file:
                        t = float(pts) - _video_origin(container) if pts is not None else (
                            0.0 if last_t is None else last_t + fallback_dt)  # first video frame = 0, as decord
                    else:
                        if base is None:  # first frame of this connection
                            if last_t is None:
                                base = 0.0
                            else:  # resume after a reconnect: the wall-clock outage is stream time lost
                                base = last_t + max(fallback_dt, self._clock() - last_wall)
                                self.gaps.append((last_t, base))
                                self.gap_records.append({"at_s": round(last_t, 3),
                                                         "duration_s": round(base - last_t, 3),
                                                         "reason": _exc_text(last_error) if last_error is not None
                                                         else "stream ended"})
                                logger.warning("stream %r resumed; lost %.2fs of stream time", self.name, base - last_t)
                            first_pts = pts
                        if pts is None or first_pts is None:
                            t = base if last_t is None or last_t < base else last_t + fallback_dt
                        else:
                            t = base + float(pts) - float(first_pts)
                    last_t, last_wall = t, self._clock()
                    frames_here += 1
                    log.add(t)
                    wall = self._wall_clock() if self._live else None  # files: no wall time (start_at=)
                    yield self.lazy_frame(t, functools.partial(rgb_of, picture, self.max_side), wall)
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
            if error is None and (not self._live or (self._finite and frames_here)):
                return  # http(s) file, ended playlist or finished stream: a clean end
            if not self.reconnect:
                if error is not None:
                    raise SourceError(f"stream {self.name!r} failed ({_exc_text(error)}); "
                                      "pass reconnect=True or check the source")
                return
            last_error = error
            fruitless = fruitless + 1 if frames_here == 0 else 0
            if fruitless and last_t is None and not self._live and self._try_download():
                continue  # an http(s) file that cannot be streamed: play the local copy
            if fruitless > self.max_retries:
                why = f" (last: {_exc_text(error)})" if error is not None else ""
                fix = ("check that the source sends video" if self._live else
                       "an MP4 over http(s) needs its index first (ffmpeg -movflags +faststart) or a server with "
                       "Range requests, else download it and give the file")
                raise SourceError(f"stream {self.name!r} gave no frame in {fruitless} connections in a row{why}; "
                                  f"{fix}")
            wait = min(self.backoff_s * (2 ** (fruitless - 1)), 30.0) if fruitless else 0.0
            logger.warning("stream %r %s at t=%s; reconnecting%s", self.name,
                           f"failed ({_exc_text(error)})" if error is not None else "ended",
                           "?" if last_t is None else f"{last_t:.2f}s",
                           f" in {wait:.1f}s (attempt {fruitless}/{self.max_retries})" if fruitless else "")
            if wait:
                self._sleep(wait)

    def _try_download(self) -> bool:
        """Copy an http(s) file that gave no frame to a temp file and play that; False when not possible."""
        if self._download is not None or not self._is_url or self.max_download_bytes <= 0:
            return False
        if urlsplit(self.url).scheme.lower() not in ("http", "https"):
            return False
        fd, path = tempfile.mkstemp(prefix="vstream-dl-", suffix=os.path.splitext(urlsplit(self.url).path)[1])
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(self.url, timeout=self.open_timeout_s) as resp:
                size = int(resp.headers.get("Content-Length") or 0)
                if size > self.max_download_bytes:
                    raise OSError(f"{size} bytes is over max_download_bytes={self.max_download_bytes}")
                copied = 0
                while block := resp.read(1 << 20):
                    copied += len(block)
                    if copied > self.max_download_bytes:
                        raise OSError(f"over max_download_bytes={self.max_download_bytes}")
                    out.write(block)
        except (OSError, ValueError) as exc:
            os.unlink(path)
            logger.warning("stream %r gives no frame and cannot be downloaded (%s)", self.name, _exc_text(exc))
            return False
        logger.warning("stream %r cannot be streamed (no frame; the server may lack Range requests): "
                       "downloaded it (%d bytes) and playing the local copy", self.name, copied)
        self._download = path
        self.url, self._is_url, self._is_file = path, False, True
        self._options["protocol_whitelist"] = "file"  # the local copy
        return True

    def set_decode_device(self, device: str | None) -> None:
        """Decode on ``device`` ("cpu", "cuda", "cuda:N"); the connection opened to probe the stream is
        closed and made again on the device when iteration starts."""
        DeviceDecoding.set_decode_device(self, device)
        if self.decode_device != "cpu" and self._container is not None:
            container, self._container = self._container, None
            container.close()

    def close(self) -> None:
        """Stop iterating (at the next frame or read timeout) and close the connection (and a download)."""
        self._closed = True
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception:  # noqa: BLE001
                pass
        if self._download is not None:
            try:
                os.unlink(self._download)
            except OSError:
                pass

    def __enter__(self) -> "LiveSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LiveSource({self.name!r}, fps={self.fps}, reconnects={self.reconnects})"
