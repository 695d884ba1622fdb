"""Frames and what every video source is: ``Frame``, the ``VideoSource`` protocol, frame-size helpers.

A source yields ``Frame(t, rgb)``: ``t`` is the presentation time in seconds of stream time and
``rgb`` an ``[H, W, 3]`` uint8 array. Nothing here decodes video (that is ``vstream.sources``).
"""
from __future__ import annotations

from typing import Callable, Iterator, Protocol, runtime_checkable

import cv2
import numpy as np


class Frame:
    """One decoded frame at presentation time ``t`` (seconds of stream time).

    ``Frame(t, rgb)`` holds its pixels; ``Frame.lazy(t, convert)`` holds a decoded picture that is
    turned into RGB (``convert()``) only when ``rgb`` is first read, so frames the sampler drops are
    never colour-converted or copied. ``wall`` is the frame's wall-clock time (UTC epoch seconds) when the
    source knows it, else None. Read-only after construction.
    """

    __slots__ = ("t", "_rgb", "_convert", "wall")

    def __init__(self, t: float, rgb: np.ndarray | None = None, wall: float | None = None) -> None:
        if rgb is None:
            raise ValueError("Frame needs its rgb array; use Frame.lazy(t, convert) for a deferred conversion")
        object.__setattr__(self, "t", t)  # presentation time in seconds (stream time)
        object.__setattr__(self, "_rgb", rgb)  # [H, W, 3] uint8 RGB
        object.__setattr__(self, "_convert", None)
        object.__setattr__(self, "wall", wall)

    @classmethod
    def lazy(cls, t: float, convert: Callable[[], np.ndarray], wall: float | None = None) -> "Frame":
        """A frame whose ``rgb`` is made by ``convert()`` on first access (at most once)."""
        f = cls.__new__(cls)
        object.__setattr__(f, "t", t)
        object.__setattr__(f, "_rgb", None)
        object.__setattr__(f, "_convert", convert)
        object.__setattr__(f, "wall", wall)
        return f

    @property
    def rgb(self) -> np.ndarray:
        """[H, W, 3] uint8 RGB (converted now if this frame is lazy and was not read before)."""
        if self._rgb is None:
            object.__setattr__(self, "_rgb", self._convert())
            object.__setattr__(self, "_convert", None)  # drop the decoded picture
        return self._rgb

    @property
    def converted(self) -> bool:
        """True once the pixels exist as an RGB array."""
        return self._rgb is not None

    def shifted(self, dt: float) -> "Frame":
        """The same picture (and wall time) at stream time ``t + dt`` (stays lazy when this frame is)."""
        return self.with_times(self.t + dt, self.wall)

    def with_times(self, t: float, wall: float | None) -> "Frame":
        """The same picture at stream time ``t`` and wall time ``wall`` (stays lazy when this frame is)."""
        if self._rgb is not None:
            return Frame(t, self._rgb, wall)
        return Frame.lazy(t, lambda: self.rgb, wall)

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError("Frame is read-only")

    def __repr__(self) -> str:
        shape = "lazy" if self._rgb is None else "x".join(map(str, self._rgb.shape))
        return f"Frame(t={self.t:.3f}, {shape})"


class ConversionCounter:
    """A source's own counters: ``frames_decoded`` (pictures out of the decoder) and ``frames_converted``
    (pictures turned into RGB arrays). ``lazy_frame`` wraps a decoded picture so that its conversion is
    counted when, and only when, someone reads its pixels."""

    frames_decoded: int = 0
    frames_converted: int = 0

    def _counted(self, convert: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            rgb = convert()
            self.frames_converted += 1
            return rgb
        return run

    def lazy_frame(self, t: float, convert: Callable[[], np.ndarray], wall: float | None = None) -> Frame:
        """A lazy ``Frame`` at ``t`` whose conversion ``convert()`` is counted in ``frames_converted``."""
        return Frame.lazy(t, self._counted(convert), wall)

    def conversion_counts(self) -> dict[str, int]:
        """{"frames_decoded", "frames_converted"}."""
        return {"frames_decoded": self.frames_decoded, "frames_converted": self.frames_converted}


@runtime_checkable
class VideoSource(Protocol):
    """What the engine iterates: frames with timestamps, plus a few facts about the stream."""

    name: str
    fps: float | None  # nominal fps when known
    duration: float | None  # seconds when known (None for live)

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


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


def check_max_side(max_side: int | None) -> None:
    """Raise ValueError unless ``max_side`` is a positive int or None."""
    if max_side is not None and (not isinstance(max_side, (int, np.integer)) or max_side < 1):
        raise ValueError(f"max_side must be a positive int or None, got {max_side!r}")
