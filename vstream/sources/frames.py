"""Frames and what every video source is: ``Frame``, the ``VideoSource`` protocol, frame-size helpers.

A source yields ``Frame(t, rgb)``: ``t`` is the presentation time in seconds of stream time and
``rgb`` an ``[H, W, 3]`` uint8 array. Nothing here decodes video (that is ``vstream.sources``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, runtime_checkable

import cv2
import numpy as np


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame at presentation time ``t`` (seconds of stream time)."""

    t: float  # presentation time in seconds (stream time)
    rgb: np.ndarray  # [H, W, 3] uint8 RGB
    wall: float | None = None  # wall-clock time (UTC epoch seconds) of the frame, when the source knows it


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
