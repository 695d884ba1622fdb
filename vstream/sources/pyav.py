"""PyAV plumbing shared by ``probe``, ``FileSource`` (its fallback) and ``LiveSource``.

Opening a container (``_open_container``: one place; a test replaces it in the module that opens
through it, e.g. ``vstream.sources.live``), the facts of its first video stream, ``probe``, and
tolerant decoding: undecodable packets are skipped and counted, and a file that ends before its
index says it should is reported as truncated.
"""
from __future__ import annotations

import functools
import heapq
import logging
import os
from typing import Any, Iterator
from urllib.parse import urlsplit

from vstream.sources.frames import ConversionCounter, Frame, resize_max_side
from vstream.sources.skipping import SkipPlan, pts_time
from vstream.sources.errors import (LIVE_SCHEMES, _check_file, _container_error, _exc_text, _file_error,
                                    _stream_error, is_device, is_url)

logger = logging.getLogger(__name__)


def _open_container(target: str, *, timeout: float | tuple[float, float] | None = None,
                    options: dict | None = None, fmt: str | None = None, hwaccel: Any = None):
    """Open ``target`` with PyAV for reading (one place, so tests can replace it); ``hwaccel``: a PyAV
    ``HWAccel`` to decode on a device."""
    import av

    return av.open(target, mode="r", format=fmt, options=options or {}, timeout=timeout, hwaccel=hwaccel)


#: What ``set_decode_device`` accepts besides "cuda:N": decoding devices by name.
DECODE_DEVICES = ("cpu", "cuda")


class DeviceDecoding:
    """A PyAV source that can decode on a GPU: NVDEC through PyAV's hardware acceleration.

    ``set_decode_device("cuda")`` (or ``"cuda:N"``) asks for it; when this PyAV build or machine cannot
    (no CUDA device type, no GPU, no driver), decoding stays on the CPU and one info line says why.
    Decoded pictures are downloaded to system memory, so everything downstream is unchanged."""

    decode_device: str = "cpu"
    _hw_said: bool = False

    def set_decode_device(self, device: str | None) -> None:
        """Decode on ``device``: "cpu" (or None) or "cuda" / "cuda:N" (NVDEC where available)."""
        device = device or "cpu"
        if not isinstance(device, str) or device.split(":", 1)[0] not in DECODE_DEVICES or (
                ":" in device and not device.split(":", 1)[1].isdigit()):
            raise ValueError(f"decode device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        self.decode_device = device

    def _hwaccel(self):
        """The ``HWAccel`` to open with, or None (CPU); says once why a GPU request stays on the CPU."""
        if self.decode_device == "cpu":
            return None
        kind, _, index = self.decode_device.partition(":")
        try:
            from av.codec.hwaccel import HWAccel, hwdevices_available

            if kind not in hwdevices_available():
                raise RuntimeError(f"this PyAV build has no {kind} device type")
            return HWAccel(kind, device=index or None, allow_software_fallback=True)
        except (ImportError, RuntimeError) as exc:
            self._cpu_instead(exc)
            return None

    def _open_on_device(self, opener, target: str, **kw):
        """``opener(target, **kw)`` (an ``_open_container``) decoding on the requested device, or on the CPU
        when it cannot."""
        hw = self._hwaccel()
        if hw is not None:
            try:
                return opener(target, hwaccel=hw, **kw)
            except Exception as exc:  # noqa: BLE001 - no GPU, no driver, device busy: the CPU decodes
                self._cpu_instead(exc)
        return opener(target, **kw)

    def _cpu_instead(self, exc: BaseException) -> None:
        """Decode on the CPU from now on (``decode_device`` says so); one info line names why."""
        if not self._hw_said:
            self._hw_said = True
            logger.info("decoding %r on the CPU: NVDEC on %s is not available here (%s)",
                        getattr(self, "name", "?"), self.decode_device, _exc_text(exc))
        self.decode_device = "cpu"


def _video_origin(container) -> float:
    """Container seconds of the first video stream's start: stream time 0 on every backend (decord counts
    from there too, and ``vstream.sources.audio`` puts the sound on the same clock). 0 when unknown."""
    try:
        vs = container.streams.video[0]
        if vs.start_time is None or vs.time_base is None:
            return 0.0
        return float(vs.start_time * vs.time_base)
    except (AttributeError, IndexError, TypeError, ValueError):  # no video stream / a stand-in container
        return 0.0


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


def _decode_video(container, vs, log: _DecodeLog, left_out: list | None = None,
                  skip: "SkipPlan | None" = None) -> Iterator[Any]:
    """Demux and decode ``vs``; skip undecodable packets (counted in ``log``); demux errors propagate.

    With a ``skip`` plan, packets it leaves out are not decoded; their pts go to ``left_out``.
    Frames still held by the decoder are drained before a demux error is raised.
    """
    import av

    in_a_row = 0
    try:
        for packet in container.demux(vs):
            if skip is not None and skip.leave_out(packet):
                left_out.append(packet.pts)
                continue
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


def rgb_of(frame, max_side: int | None = None):
    """A decoded PyAV picture as [H, W, 3] uint8 RGB, longer side shrunk to ``max_side``."""
    return resize_max_side(frame.to_ndarray(format="rgb24"), max_side)


def _seek(container, vs, start_s: float, origin: float, path: str) -> None:
    """Position ``container`` at the keyframe at or before ``start_s`` (stream time); from the start when
    ``start_s`` is 0 or the seek fails."""
    import av

    if start_s > 0 and vs.time_base:
        try:
            container.seek(int((start_s + origin) / vs.time_base), stream=vs, backward=True, any_frame=False)
        except av.FFmpegError as exc:
            logger.debug("seek to %.2fs failed in %s (%s); decoding from the start", start_s, path, _exc_text(exc))


def plan_file_skips(path: str, fps: float, *, start_s: float = 0.0, end_s: float | None = None,
                    seek: bool = True) -> SkipPlan | None:
    """The ``SkipPlan`` of a ``Sampler(fps)`` over the frames of file ``path`` in ``[start_s, end_s)``, reading
    from the position ``_pyav_frames`` decodes from (its own container: ``plan.close()``); None without a
    time base."""
    container = _open_container(path)
    try:
        vs = container.streams.video[0]
        if vs.time_base is None:
            container.close()
            return None
        origin = _video_origin(container)
        if seek:
            _seek(container, vs, start_s, origin, path)
        return SkipPlan(container, fps, start_s=start_s, end_s=end_s, origin=origin, path=path)
    except BaseException:
        container.close()
        raise


def _pyav_frames(container, *, path: str, start_s: float = 0.0, end_s: float | None = None,
                 max_side: int | None = None, seek: bool = True, counter: ConversionCounter | None = None,
                 skip: SkipPlan | None = None) -> Iterator[Frame]:
    """Decode the first video stream of an open PyAV container (a file): what is readable, then a warning.

    Frames are lazy: a picture becomes an RGB array only when its ``rgb`` is read (counted in
    ``counter.frames_converted``; ``counter.frames_decoded`` counts every picture decoded).
    ``seek=False`` decodes from the start and skips to ``start_s`` (for containers that seek badly).
    ``skip`` (a ``SkipPlan`` whose ``path`` is this file) leaves the non-reference pictures it does not
    keep out of the decoder; each still comes out as a lazy frame at its time, in presentation order,
    decoded alone if it is ever read."""
    import av

    vs = container.streams.video[0]
    vs.thread_type = "AUTO"
    facts_fps = float(vs.average_rate) if vs.average_rate else None
    origin = _video_origin(container)  # frame times count from the video stream's start (MPEG-TS: ~1.4 s)
    if seek:
        _seek(container, vs, start_s, origin, path)
    log = _DecodeLog(container, whole=start_s <= 0, end_s=end_s)
    left_out: list[int] = []  # pts of the packets the plan left out, in decode order
    pending: list[tuple[float, int]] = []  # heap of (t, pts): left-out pictures not yet yielded

    def left_out_before(t_next: float | None) -> Iterator[Frame]:
        """Lazy frames for the left-out pictures shown before ``t_next`` (all of them: None)."""
        while left_out:
            pts = left_out.pop()
            heapq.heappush(pending, (pts_time(pts, vs.time_base) - origin, pts))
        while pending and (t_next is None or pending[0][0] < t_next):
            t, pts = heapq.heappop(pending)
            if t < start_s - 1e-6 or (end_s is not None and t >= end_s):
                continue
            log.add(t)
            fetch = functools.partial(_decode_alone, skip, pts, t, max_side)
            yield Frame.lazy(t, fetch) if counter is None else counter.lazy_frame(t, fetch)

    error: BaseException | None = None
    try:
        for frame in _decode_video(container, vs, log, left_out, skip):
            if counter is not None:
                counter.frames_decoded += 1
            t = frame.time
            if t is None:  # no pts: continue from the last time at the nominal rate
                t = 0.0 if log.last_t is None else log.last_t + 1.0 / (facts_fps or 25.0)
            else:
                t = float(t) - origin
            if skip is not None:
                yield from left_out_before(t)
            if t < start_s - 1e-6:
                continue
            if end_s is not None and t >= end_s:
                return
            log.add(t)
            if counter is None:
                yield Frame(t, rgb_of(frame, max_side))
                continue
            yield counter.lazy_frame(t, functools.partial(rgb_of, frame, max_side))
        if skip is not None:
            yield from left_out_before(None)
    except (av.FFmpegError, EOFError, OSError) as exc:
        error = exc
    log.warn_if_damaged(path, error)


def _decode_alone(skip: SkipPlan, pts: int, t: float, max_side: int | None):
    """The RGB picture at ``pts`` of ``skip.path``, decoded from the keyframe before it (a left-out picture
    that was read after all)."""
    skip.note_fetch(skip.path, t)
    container = _open_container(skip.path)
    try:
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"
        container.seek(pts, stream=vs, backward=True, any_frame=False)
        for frame in _decode_video(container, vs, _DecodeLog()):
            if frame.pts == pts:
                return rgb_of(frame, max_side)
            if frame.pts is not None and frame.pts > pts:  # presentation order: it is not coming
                break
    finally:
        container.close()
    raise RuntimeError(f"the frame at t={t:.3f}s of {skip.path!r} could not be decoded again")
