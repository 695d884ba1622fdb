"""Live streams: ``LiveSource`` reads rtsp/rtmp/http(s)/srt/udp/tcp URLs and ``/dev/video*`` with PyAV.

It reconnects with exponential back-off when a live stream fails or stalls, records the stream time
lost in ``gaps``, and counts reconnects and undecodable packets.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Iterator
from urllib.parse import urlsplit

import numpy as np

from vstream.frames import Frame, check_max_side, resize_max_side
from vstream.sources.errors import (LIVE_SCHEMES, SourceError, _check_file, _container_error, _exc_text, _file_error,
                                    _redact, _stream_error, is_device, is_url)
from vstream.sources.pyav import _decode_video, _DecodeLog, _open_container, _stream_facts

logger = logging.getLogger(__name__)


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
        check_max_side(max_side)
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
