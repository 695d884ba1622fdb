"""``ClockedSource``: a recorded source (a file) given the wall-clock time it started at (``start_at=``).

Files carry no wall time of their own: ``start_at`` (ISO 8601, a datetime or epoch seconds) says when
the recording began, and every frame's wall time is ``start_at + t`` (the stream time of a file is its
presentation time, from 0). ``tz`` names the zone the recording was made in (clock markers and output).
"""
from __future__ import annotations

import logging
from typing import Any, Iterator

from vstream.clock import check_zone, parse_when
from vstream.sources.frames import Frame

logger = logging.getLogger(__name__)


class ClockedSource:
    """``source`` with wall-clock time on every frame: ``start_at + t`` (frames that have their own keep it)."""

    def __init__(self, source: Any, start_at: Any, tz: str | None = None) -> None:
        self.tz = check_zone(tz)
        self.start_wall = parse_when(start_at, tz=self.tz, what="start_at")
        self.inner = source
        self.name = getattr(source, "name", "source")
        self.fps = getattr(source, "fps", None)
        self.duration = getattr(source, "duration", None)

    def __iter__(self) -> Iterator[Frame]:
        for f in self.inner:
            yield f if f.wall is not None else f.with_times(f.t, self.start_wall + f.t)

    def __getattr__(self, name: str) -> Any:  # gap_records, reconnects, path, ...
        return getattr(self.inner, name)

    def close(self) -> None:
        if hasattr(self.inner, "close"):
            self.inner.close()
