"""Audio of a stream as 16 kHz mono float32 blocks on the video's clock (issue 17, DESIGN §1.1).

Interfaces (what the engine, the CLI and the app use):

- ``audio_blocks(spec, start_s=0.0, end_s=None, *, block_s=0.5, origin_s=None) -> AudioTrack | None``:
  the audio track of a file or URL. ``None`` (and one info line) when there is none; iterating the
  ``AudioTrack`` yields ``AudioBlock(t_start_s, samples)`` with ``samples`` ``[N]`` float32 in [-1, 1]
  at ``SAMPLE_RATE`` (16 kHz). Only samples with ``start_s <= t < end_s`` are yielded.
- ``AudioDecoder(stream, origin_s=...)``: the same conversion for packets that a caller demuxes
  itself (``.decode(packet) -> list[AudioBlock]``, ``.flush()``): one container for frames and
  sound, which is the exact way to share a live stream's clock.
- ``vstream.sources.audio_push.AudioPush``: audio handed in by a caller (the app's microphone/webcam path):
  ``push(samples, sample_rate, t=None)`` never blocks, converts and resamples, and counts what it drops.
- ``read_audio(spec, ...) -> (t0, samples) | None``: a whole track in one array (tests, export).

The clock. Frame times of a file are its presentation times with the first video frame at 0
(what ``FileSource`` gives with decord: the video stream's start time is the origin), so an audio
sample at container time ``p`` is at ``p - origin_s`` with ``origin_s`` the video stream's start time
(0 for most MP4 files; 1.4 s or so for MPEG-TS). A file without video has origin 0. For a live URL
the origin is the first video keyframe's time in this connection, as ``LiveSource`` counts from its
first frame; a separate connection is only aligned to within its setup delay, so the engine should
feed ``AudioDecoder`` from the container it already reads. Timestamps come from the packets' PTS,
not from counting samples: a gap in the audio stays a gap (a block ends there).

Damage. An undecodable packet is skipped; ``MAX_BAD_AUDIO_PACKETS`` in a row stop the audio with one
warning (the video is decoded from its own packets and goes on). A track whose codec has no
decoder gives ``None`` with one warning.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import urlsplit

import numpy as np

from vstream.sources.errors import LIVE_SCHEMES, SourceError, _check_file, _exc_text, _redact, is_device, is_url
from vstream.sources.pyav import _open_container

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000  # Hz, what Whisper wants
#: Undecodable audio packets in a row after which the audio track is given up.
MAX_BAD_AUDIO_PACKETS = 8
#: Live: audio packets kept while waiting for the first video keyframe (the clock origin); at this
#: many the first video packet's time is used instead.
MAX_PENDING_PACKETS = 512
#: A jump in PTS larger than this (seconds) between two decoded frames ends the current block.
GAP_TOLERANCE_S = 0.02


@dataclass(frozen=True, eq=False)
class AudioBlock:
    """Contiguous audio starting at ``t_start_s`` (seconds of stream time)."""

    t_start_s: float
    samples: np.ndarray  # [N] float32 mono at SAMPLE_RATE, in [-1, 1]

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def t_end_s(self) -> float:
        return self.t_start_s + self.duration_s


def to_mono_float(samples: np.ndarray) -> np.ndarray:
    """``[N]`` or ``[N, C]`` int16/int32/uint8/float samples -> ``[N]`` float32 mono in [-1, 1]."""
    a = np.asarray(samples)
    if a.ndim == 2:
        if a.shape[1] > 8 and a.shape[0] <= 8:  # [C, N] (planar) given: channels are the short side
            a = a.T
    elif a.ndim != 1:
        raise ValueError(f"audio samples must be [N] or [N, C], got shape {a.shape}")
    if a.dtype == np.int16:
        a = a.astype(np.float32) / 32768.0
    elif a.dtype == np.int32:
        a = a.astype(np.float32) / 2147483648.0
    elif a.dtype == np.uint8:
        a = (a.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32, copy=False)
    else:
        raise ValueError(f"audio samples must be int16, int32, uint8 or float, got {a.dtype}")
    if a.ndim == 2:
        a = a.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(a, dtype=np.float32)


class _Blocker:
    """Cuts resampled audio into blocks of ``block_s``; a PTS jump or a window edge ends a block early."""

    def __init__(self, *, start_s: float, end_s: float | None, block_s: float):
        self.start_s, self.end_s = start_s, end_s
        self.block_n = max(1, int(round(block_s * SAMPLE_RATE)))
        self._parts: list[np.ndarray] = []
        self._n = 0
        self._t0: float | None = None  # stream time of the first buffered sample
        self.done = False  # past end_s

    def _expected(self) -> float | None:
        return None if self._t0 is None else self._t0 + self._n / SAMPLE_RATE

    def add(self, t: float | None, x: np.ndarray) -> list[AudioBlock]:
        """Add samples ``x`` [N] starting at stream time ``t`` (None: right after the last ones)."""
        out: list[AudioBlock] = []
        if self.done or len(x) == 0:
            return out
        exp = self._expected()
        if t is None:
            t = exp if exp is not None else self.start_s
        elif exp is not None and abs(t - exp) > GAP_TOLERANCE_S:
            if t < exp:  # overlaps what we have: drop the repeated part
                cut = int(round((exp - t) * SAMPLE_RATE))
                x, t = x[cut:], exp
                if len(x) == 0:
                    return out
            else:  # a gap: the current block ends here
                out += self.flush()
        elif exp is not None:
            t = exp  # within tolerance: keep the blocks contiguous
        # trim to [start_s, end_s)
        if t < self.start_s:
            cut = int(math.ceil((self.start_s - t) * SAMPLE_RATE - 1e-6))
            if cut >= len(x):
                return out
            x, t = x[cut:], t + cut / SAMPLE_RATE
        if self.end_s is not None:
            keep = int(math.ceil((self.end_s - t) * SAMPLE_RATE - 1e-6))
            if keep <= 0:
                self.done = True
                return out + self.flush()
            if keep < len(x):
                x = x[:keep]
                self.done = True
        if self._t0 is None:
            self._t0 = t
        self._parts.append(x)
        self._n += len(x)
        while self._n >= self.block_n:
            whole = np.concatenate(self._parts)
            out.append(AudioBlock(self._t0, np.ascontiguousarray(whole[:self.block_n])))
            rest = whole[self.block_n:]
            self._t0 += self.block_n / SAMPLE_RATE
            self._parts, self._n = ([rest] if len(rest) else []), len(rest)
        if self.done:
            out += self.flush()
        return out

    def flush(self) -> list[AudioBlock]:
        """The buffered samples as one (short) block."""
        if not self._n:
            self._t0 = None
            return []
        block = AudioBlock(self._t0, np.ascontiguousarray(np.concatenate(self._parts)))
        self._parts, self._n, self._t0 = [], 0, None
        return [block]


class _Resampler:
    """PyAV's resampler to 16 kHz mono float; rebuilt when the input format changes mid-stream."""

    def __init__(self):
        self._r = None

    def __call__(self, frame) -> list:
        import av

        if self._r is None:
            self._r = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        try:
            return list(self._r.resample(frame))
        except ValueError:  # "Frame does not match AudioResampler setup": format change
            out = self.flush()
            self._r = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            return out + list(self._r.resample(frame))

    def flush(self) -> list:
        if self._r is None:
            return []
        out = list(self._r.resample(None))
        self._r = None
        return out


class AudioDecoder:
    """Decodes the packets of one PyAV audio stream into ``AudioBlock``s on the stream clock.

    ``origin_s`` (seconds of container time) is stream time 0: the video stream's start time for a
    file, the first video frame's PTS for a live connection. ``decode(packet)`` never raises for
    damaged data: bad packets are skipped and counted (``bad_packets``); after
    ``MAX_BAD_AUDIO_PACKETS`` in a row ``failed`` becomes True, one warning is logged and every later
    call returns nothing; skipped packets that did not stop it are summed up in one warning by
    ``flush()``. ``done`` is True once ``end_s`` is reached.
    """

    def __init__(self, stream, *, origin_s: float = 0.0, start_s: float = 0.0, end_s: float | None = None,
                 block_s: float = 0.5, name: str = "audio"):
        if not block_s > 0:
            raise ValueError(f"block_s must be > 0, got {block_s}")
        self.stream, self.origin_s, self.name = stream, float(origin_s), name
        self._resample = _Resampler()
        self._blocks = _Blocker(start_s=float(start_s), end_s=end_s, block_s=block_s)
        self.bad_packets = 0
        self._in_a_row = 0
        self.failed = False
        self.last_error: BaseException | None = None
        self.last_t: float | None = None  # stream time of the end of the last decoded audio

    @property
    def done(self) -> bool:
        return self.failed or self._blocks.done

    def _frames_to_blocks(self, frames) -> list[AudioBlock]:
        out: list[AudioBlock] = []
        for frame in frames:
            for o in self._resample(frame):
                x = o.to_ndarray().reshape(-1).astype(np.float32, copy=False)  # [N] flt mono
                t = None if o.pts is None or o.time_base is None else float(o.pts * o.time_base) - self.origin_s
                out += self._blocks.add(t, x)
                if len(x):
                    self.last_t = (t if t is not None else (self.last_t or 0.0)) + len(x) / SAMPLE_RATE
        return out

    def fail(self, why: str) -> None:
        """Give up this track with one warning (idempotent)."""
        if not self.failed:
            self.failed = True
            where = "before any sound" if self.last_t is None else f"after t={self.last_t:.2f}s"
            logger.warning("audio of %r is damaged: audio stopped %s (%s); the video goes on", self.name, where, why)

    def decode(self, packet) -> list[AudioBlock]:
        """Blocks completed by this packet (none for a bad one, or after failure/end)."""
        import av

        if self.done:
            return []
        try:
            frames = packet.decode()
        except (av.FFmpegError, ValueError) as exc:
            self.bad_packets += 1
            self._in_a_row += 1
            self.last_error = exc
            if self._in_a_row >= MAX_BAD_AUDIO_PACKETS:
                self.fail(f"{self._in_a_row} undecodable packets in a row: {_exc_text(exc)}")
            return []
        self._in_a_row = 0
        return self._frames_to_blocks(frames)

    def flush(self) -> list[AudioBlock]:
        """Drain the decoder and the resampler; the last (short) block."""
        import av

        out: list[AudioBlock] = []
        if not self.failed:
            if self.bad_packets:  # damage that did not stop the audio: one warning at the end
                logger.warning("audio of %r had %d undecodable packet(s), skipped (%s)", self.name, self.bad_packets,
                               _exc_text(self.last_error))
            try:
                out += self._frames_to_blocks(self.stream.codec_context.decode(None))
            except (av.FFmpegError, ValueError):
                pass
            for o in self._resample.flush():
                x = o.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                t = None if o.pts is None or o.time_base is None else float(o.pts * o.time_base) - self.origin_s
                out += self._blocks.add(t, x)
        return out + self._blocks.flush()


def _stream_start_s(stream) -> float | None:
    if stream.start_time is None or stream.time_base is None:
        return None
    return float(stream.start_time * stream.time_base)


class AudioTrack:
    """The audio track of a file or URL; iterate for ``AudioBlock``s (each iteration reopens the source).

    Facts: ``name``, ``codec``, ``source_rate`` (Hz), ``channels``, ``duration`` (seconds or None),
    ``origin_s``, ``live``. After an iteration: ``bad_packets`` and ``failed`` (audio stopped early).
    A live connection that fails is not reopened (one warning, the audio ends); the engine's own
    reconnecting container with ``AudioDecoder`` is the way to keep sound across outages.
    """

    def __init__(self, target: str, *, start_s: float, end_s: float | None, block_s: float,
                 origin_s: float | None, live: bool, open_kw: dict, facts: dict, container=None):
        self.target, self.name = target, _redact(target)
        self.start_s, self.end_s, self.block_s = start_s, end_s, block_s
        self.live, self._open_kw = live, open_kw
        self.codec, self.source_rate, self.channels = facts["codec"], facts["rate"], facts["channels"]
        self.duration = None if live else facts["duration"]
        self._origin_fixed = origin_s
        self.origin_s = origin_s if origin_s is not None else facts["origin_s"]
        self.bad_packets = 0
        self.failed = False
        self._closed = False
        self._container = container  # opened by audio_blocks(); used by the first iteration

    def __iter__(self) -> Iterator[AudioBlock]:
        import av

        if self._closed:
            raise RuntimeError(f"AudioTrack {self.name!r} is closed; open a new one")
        container, self._container = self._container, None
        if container is None:
            try:
                container = _open_container(self.target, **self._open_kw)
            except Exception as exc:  # noqa: BLE001 - PyAV raises many error types
                logger.warning("audio of %r cannot be opened (%s); the video goes on without sound", self.name,
                               _exc_text(exc))
                self.failed = True
                return
        try:
            yield from self._decode(container, av)
        finally:
            container.close()

    def _decode(self, container, av) -> Iterator[AudioBlock]:
        a = container.streams.audio[0]
        v = container.streams.video[0] if (self.live and self._origin_fixed is None and container.streams.video) else None
        origin = self.origin_s
        if not self.live and self.start_s > 0 and a.time_base:
            try:
                container.seek(int((self.start_s + origin) / a.time_base), stream=a, backward=True)
            except av.FFmpegError as exc:
                logger.debug("audio seek to %.2fs failed in %s (%s)", self.start_s, self.name, _exc_text(exc))
        dec: AudioDecoder | None = None
        pending: list = []  # live: audio packets seen before the first video keyframe
        first_video_t: float | None = None
        streams = (a, v) if v is not None else (a,)
        try:
            for packet in container.demux(*streams):
                if self._closed:
                    return
                if packet.stream.type == "video":
                    if dec is None and packet.pts is not None:
                        pt = float(packet.pts * packet.time_base)
                        first_video_t = pt if first_video_t is None else first_video_t
                        if packet.is_keyframe or len(pending) >= MAX_PENDING_PACKETS:
                            self.origin_s = pt if packet.is_keyframe else first_video_t
                            dec = AudioDecoder(a, origin_s=self.origin_s, start_s=self.start_s, end_s=self.end_s,
                                               block_s=self.block_s, name=self.name)
                            for p in pending:
                                yield from dec.decode(p)
                            pending = []
                    continue
                if packet.size == 0:  # demuxer flush packet
                    continue
                if dec is None:
                    if v is not None:
                        if len(pending) < MAX_PENDING_PACKETS:
                            pending.append(packet)  # else: older sound than any frame, dropped
                        continue
                    dec = AudioDecoder(a, origin_s=origin, start_s=self.start_s, end_s=self.end_s,
                                       block_s=self.block_s, name=self.name)
                yield from dec.decode(packet)
                if dec.done:
                    break
        except (av.FFmpegError, EOFError, OSError) as exc:
            if dec is None:
                dec = AudioDecoder(a, origin_s=origin, name=self.name)
            dec.fail(f"demuxing failed: {_exc_text(exc)}")
        if dec is None:
            return
        if not dec.failed:
            yield from dec.flush()
        self.bad_packets += dec.bad_packets
        self.failed = self.failed or dec.failed

    def close(self) -> None:
        """Stop iterating at the next packet; release a connection not yet read."""
        self._closed = True
        container, self._container = self._container, None
        if container is not None:
            container.close()

    def __enter__(self) -> "AudioTrack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AudioTrack({self.name!r}, codec={self.codec!r}, rate={self.source_rate}, origin_s={self.origin_s})"


def audio_blocks(spec: Any, start_s: float = 0.0, end_s: float | None = None, *, block_s: float = 0.5,
                 origin_s: float | None = None, open_timeout_s: float = 10.0,
                 options: dict | None = None) -> AudioTrack | None:
    """The audio track of file or URL ``spec`` as an iterable of ``AudioBlock`` (16 kHz mono float32).

    ``spec`` is a path, a URL, or an open ``FileSource``/``LiveSource`` (its path or URL is read).
    Returns None (after one info line) when ``spec`` has no audio track, or is a device, a
    synthetic source or another VideoSource object; None after one warning when the track's codec cannot be
    decoded or a live URL cannot be opened. ``origin_s`` overrides the clock origin (container seconds
    that are stream time 0); by default the video stream's start (files) or the first video keyframe
    (live). Raises SourceError for a missing or unreadable file, like the video source would.
    """
    if start_s < 0 or (end_s is not None and end_s <= start_s):
        raise ValueError(f"need 0 <= start_s < end_s, got start_s={start_s}, end_s={end_s}")
    if not block_s > 0:
        raise ValueError(f"block_s must be > 0, got {block_s}")
    if not isinstance(spec, (str, os.PathLike)):  # an open FileSource / LiveSource: read the same file or URL
        spec = getattr(spec, "path", None) or getattr(spec, "url", None) or spec
    if not isinstance(spec, (str, os.PathLike)) or str(spec) == "synthetic" or str(spec).startswith("synthetic:"):
        logger.info("source %r has no audio track; vision only", getattr(spec, "name", spec))
        return None
    target = str(spec)
    if is_device(target):
        logger.info("device %r has no audio track (cameras are opened without sound); vision only", target)
        return None
    url = is_url(target)
    live = url and urlsplit(target).scheme.lower() in LIVE_SCHEMES
    if not url:
        _check_file(target)
    opts = dict(options or {})
    if urlsplit(target).scheme.lower() in ("rtsp", "rtsps"):
        opts.setdefault("rtsp_transport", "tcp")
    open_kw = {"timeout": (open_timeout_s, max(open_timeout_s, 5.0)) if url else None, "options": opts}
    try:
        container = _open_container(target, **open_kw)
    except Exception as exc:  # noqa: BLE001
        if not url:
            raise SourceError(f"cannot read audio of {target!r}: not a readable media file ({_exc_text(exc)}); "
                              "give a valid video or audio file") from exc
        logger.warning("audio of %r cannot be opened (%s); vision only", _redact(target), _exc_text(exc))
        return None
    keep = False
    try:
        if not container.streams.audio:
            logger.info("%r has no audio track; vision only", _redact(target))
            return None
        a = container.streams.audio[0]
        cc = a.codec_context
        if cc is None or not cc.name:
            logger.warning("audio of %r has a codec this FFmpeg cannot decode; vision only", _redact(target))
            return None
        duration = None
        if a.duration is not None and a.time_base is not None and a.duration > 0:
            duration = float(a.duration * a.time_base)
        elif container.duration:
            duration = container.duration / 1_000_000
        vstart = _stream_start_s(container.streams.video[0]) if container.streams.video else None
        facts = {"codec": getattr(cc.codec, "canonical_name", None) or cc.name, "rate": int(cc.sample_rate or a.rate or 0) or None,
                 "channels": int(cc.channels or 0) or None, "duration": duration,
                 "origin_s": vstart if vstart is not None else 0.0}
        keep = True
    finally:
        if not keep:
            container.close()
    # the first iteration reads this connection (a live server may accept only one)
    return AudioTrack(target, start_s=float(start_s), end_s=end_s, block_s=block_s, origin_s=origin_s, live=live,
                      open_kw=open_kw, facts=facts, container=container)


def read_audio(spec: Any, start_s: float = 0.0, end_s: float | None = None,
               **kw: Any) -> tuple[float, np.ndarray] | None:
    """The whole track as ``(t_start_s, samples [N] float32)``; gaps are filled with silence. None: no audio."""
    track = audio_blocks(spec, start_s, end_s, **kw)
    if track is None:
        return None
    blocks = list(track)
    if not blocks:
        return None
    t0 = blocks[0].t_start_s
    n = int(round((blocks[-1].t_end_s - t0) * SAMPLE_RATE))
    out = np.zeros(n, np.float32)
    for b in blocks:
        i = int(round((b.t_start_s - t0) * SAMPLE_RATE))
        seg = b.samples[: max(0, n - i)]
        out[i:i + len(seg)] = seg
    return t0, out


__all__ = ["SAMPLE_RATE", "AudioBlock", "AudioDecoder", "AudioTrack", "audio_blocks", "read_audio", "to_mono_float",
           "MAX_BAD_AUDIO_PACKETS"]
