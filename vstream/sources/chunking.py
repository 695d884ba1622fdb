"""Sampling and chunking: ``Sampler`` picks frames by timestamp, ``Chunker`` groups them into ``Chunk``s.

``Sampler`` picks frames by timestamp (never by index: variable frame rate exists) and, in realtime
mode, paces to the wall clock and counts the frames it had to drop. ``Chunker`` groups the sampled
frames into chunks of ``chunk_seconds`` of stream time, each with a ``Time=a-bs`` marker (DESIGN §1.2–1.3),
or a clock marker ``Time=14:05:03-14:05:04`` when the frames carry wall-clock time and clock markers are on.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from vstream.clock import clock_marker, time_marker
from vstream.sources.frames import Frame

logger = logging.getLogger(__name__)


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

    def plan(self, times) -> np.ndarray:
        """Indices into ``times`` (increasing stream times) that this sampler keeps when not pacing.

        The same rule as iterating (it runs on stand-in frames that carry only ``t``), for sources that
        know every frame's time up front and decode only what will be kept (decord). Counters are reset.
        """
        class _T:
            __slots__ = ("t", "i")

        def stubs():
            for i, t in enumerate(times):
                s = _T()
                s.t, s.i = float(t), i
                yield s

        realtime, self.realtime = self.realtime, False
        try:
            kept = [s.i for s in self(stubs())]
        finally:
            self.realtime = realtime
            self._reset()
        return np.asarray(kept, dtype=np.int64)

    def stats(self) -> dict:
        """The counters as a dict."""
        return {"frames_in": self.frames_in, "frames_kept": self.frames_kept,
                "frames_skipped": self.frames_skipped, "frames_dropped": self.frames_dropped}


@dataclass
class Chunk:
    """Frames of one chunk of stream time ``[start_s, end_s)``; wall-clock time beside it when known."""

    index: int  # 0, 1, 2, ... in emission order (empty intervals are skipped, indices are not)
    start_s: float
    end_s: float
    frames: np.ndarray  # [N, H, W, 3] uint8
    timestamps: list[float]  # N frame times
    wall_s: float | None = None  # UTC epoch seconds at start_s (from the first frame's wall time), None: unknown
    tz: str = ""  # the source's IANA time-zone name (with wall_s)
    clock: bool = False  # the marker in clock form (memory.time_marker "clock")

    @property
    def wall_end_s(self) -> float | None:
        """UTC epoch seconds at end_s (None without wall time)."""
        return None if self.wall_s is None else self.wall_s + (self.end_s - self.start_s)

    @property
    def marker(self) -> str:
        """``"Time=12.0-13.0s"``, or ``"Time=14:05:03-14:05:04"`` (clock form, the source's zone)."""
        if self.clock and self.wall_s is not None:
            return clock_marker(self.wall_s, self.wall_end_s, self.tz)
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

    A chunk's wall time is its first frame's wall time moved back to the chunk start (None when that frame
    has none); ``tz`` names the zone and ``clock`` asks for clock markers (``Chunk.marker``).
    """

    def __init__(self, chunk_seconds: float = 1.0, *, frames_per_chunk: int | None = None,
                 origin: float | None = None, tz: str = "", clock: bool = False):
        if not chunk_seconds > 0:
            raise ValueError(f"chunk_seconds must be > 0, got {chunk_seconds}")
        if frames_per_chunk is not None and frames_per_chunk < 1:
            raise ValueError(f"frames_per_chunk must be >= 1 or None, got {frames_per_chunk}")
        self.chunk_seconds, self.frames_per_chunk, self.origin = float(chunk_seconds), frames_per_chunk, origin
        self.tz, self.clock = tz, bool(clock)

    def _make(self, index: int, k: int, t0: float, rgbs: list[np.ndarray], ts: list[float],
              wall0: float | None) -> Chunk:
        h, w = rgbs[0].shape[:2]
        rgbs = [r if r.shape[:2] == (h, w) else cv2.resize(r, (w, h), interpolation=cv2.INTER_AREA) for r in rgbs]
        frames = np.stack(rgbs)  # [N, H, W, 3]
        if self.frames_per_chunk is not None:
            frames, ts = fit_frame_count(frames, ts, self.frames_per_chunk)
        c = self.chunk_seconds
        start = t0 + k * c
        wall = None if wall0 is None else wall0 - (ts[0] - start)  # the first frame's wall time, at the chunk start
        return Chunk(index=index, start_s=start, end_s=t0 + (k + 1) * c, frames=frames, timestamps=list(ts),
                     wall_s=wall, tz=self.tz if wall is not None else "", clock=self.clock)

    def __call__(self, frames: Iterable[Frame]) -> Iterator[Chunk]:
        t0 = self.origin
        cur_k: int | None = None
        rgbs: list[np.ndarray] = []
        ts: list[float] = []
        wall0: float | None = None  # wall time of the current chunk's first frame
        index = 0
        for frame in frames:
            if t0 is None:
                t0 = frame.t
            k = math.floor((frame.t - t0) / self.chunk_seconds + 1e-9)
            if cur_k is not None and k > cur_k:
                yield self._make(index, cur_k, t0, rgbs, ts, wall0)
                index += 1
                rgbs, ts = [], []
            if cur_k is None or k > cur_k:
                cur_k = k
            elif k < cur_k:
                logger.debug("frame at t=%.3f is before the current chunk; kept in chunk %d", frame.t, index)
            if not rgbs:
                wall0 = getattr(frame, "wall", None)
            rgbs.append(frame.rgb)
            ts.append(frame.t)
        if rgbs:
            yield self._make(index, cur_k, t0, rgbs, ts, wall0)
