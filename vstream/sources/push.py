"""Frames handed in by a caller: ``PushSource`` (the Gradio webcam), thread-safe, bounded, never blocking."""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterator

import numpy as np

from vstream.clock import check_zone
from vstream.sources.frames import Frame, check_max_side, resize_max_side
from vstream.sources.push_queue import PushQueue

logger = logging.getLogger(__name__)


class PushSource:
    """Frames pushed by a caller (e.g. the Gradio webcam callback); thread-safe and bounded.

    ``push`` never blocks: when ``maxsize`` frames are waiting, the new frame is dropped, counted in
    ``dropped`` and ``push`` returns False. Iteration blocks for the next frame and ends after
    ``end()`` once the queued frames are consumed.

    Every frame carries wall-clock time (UTC epoch seconds): the ``wall=`` given to ``push`` (e.g. the
    camera's own timestamp) or ``wall_clock()`` at arrival; ``tz`` names the camera's zone (IANA name,
    default this machine's).
    """

    def __init__(self, *, maxsize: int = 256, name: str = "push", max_side: int | None = None,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 tz: str | None = None):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        check_max_side(max_side)
        self.tz = check_zone(tz)
        self._wall_clock = wall_clock
        self.name, self.maxsize, self.max_side = name, maxsize, max_side
        self.fps: float | None = None
        self.duration: float | None = None
        self.pushed = 0
        self.dropped = 0
        self._clock = clock
        self._t0: float | None = None
        self._queue: PushQueue[Frame] = PushQueue(maxsize)  # cost 1 a frame

    def push(self, rgb: np.ndarray, t: float | None = None, *, wall: float | None = None) -> bool:
        """Queue ``rgb`` [H, W, 3] uint8 (RGBA: alpha dropped) at time ``t`` (None: seconds since the first push)
        and wall-clock time ``wall`` (UTC epoch seconds; None: now).

        Returns False when the frame was not queued (queue full: counted in ``dropped``; or after end()).
        """
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.dtype != np.uint8:
            raise ValueError(f"push() wants an [H, W, 3] uint8 RGB array, got shape {rgb.shape} dtype {rgb.dtype}")
        with self._queue.lock:
            if self._queue.ended:
                logger.debug("PushSource %r: frame pushed after end(), ignored", self.name)
                return False
            now = self._clock()
            if self._t0 is None:
                self._t0 = now
            if not self._queue.fits(1):
                self.dropped += 1
                return False
            t = now - self._t0 if t is None else float(t)
            wall = self._wall_clock() if wall is None else float(wall)
            self._queue.put(Frame(t, resize_max_side(np.ascontiguousarray(rgb[..., :3]).copy(), self.max_side),
                                  wall))
            self.pushed += 1
            return True

    def end(self) -> None:
        """No more frames: iteration ends after the queued frames are consumed."""
        self._queue.end()

    def qsize(self) -> int:
        """Frames waiting to be consumed."""
        return len(self._queue)

    def __iter__(self) -> Iterator[Frame]:
        return iter(self._queue)

    def close(self) -> None:
        """End the stream and discard frames not yet consumed."""
        self._queue.close()

    def __repr__(self) -> str:
        return f"PushSource({self.name!r}, pushed={self.pushed}, dropped={self.dropped})"
