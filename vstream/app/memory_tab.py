"""The Memory tab's logic: the saved memories under the app's root with their sizes and lengths, search
(``vstream.search``) with thumbnails, a timeline of the stored moments (``vstream.session.timeline``), both
limited to a time range when one is given, and delete. Plain Python.

Memories are addressed by name only (``check_memory_name``); nothing outside the root is read or removed.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vstream.app.chat import _NAME_RE, check_memory_name
from vstream.app.timerange import range_args
from vstream.app.view import when_text

logger = logging.getLogger(__name__)


@dataclass
class SavedMemory:
    """One saved memory: its name, bytes on disk, entries by kind and the stream time it covers."""

    name: str
    bytes: int
    vision: int
    speech: int
    text: int
    length_s: float


def _dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


class MemoryShelf:
    """The saved memories under ``root`` (one folder each)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._thumbs = Path(tempfile.mkdtemp(prefix="vstream-app-search-"))

    def names(self) -> list[str]:
        """Names of the memories saved under the root."""
        if not self.root.is_dir():
            return []
        return sorted(d.name for d in self.root.iterdir()
                      if d.is_dir() and (d / "config.json").is_file() and _NAME_RE.match(d.name))

    def path(self, name: str) -> Path:
        """The folder of saved memory ``name``; ValueError when there is none."""
        name = check_memory_name(name)
        if name not in self.names():
            raise ValueError(f"no saved memory named {name!r}; choose one of the saved names")
        return self.root / name

    def describe(self) -> list[SavedMemory]:
        """Every saved memory with its size, entries and length."""
        from memory.store_io import read_infos

        out = []
        for name in self.names():
            d = self.root / name
            try:
                infos = read_infos(d)
            except (OSError, ValueError) as e:
                logger.warning("saved memory %s unreadable: %s", name, e)
                infos = []
            out.append(SavedMemory(name, _dir_bytes(d), sum(i.kind == "vision" for i in infos),
                                   sum(i.kind == "text" and i.source == "speech" for i in infos),
                                   sum(i.kind == "text" and i.source != "speech" for i in infos),
                                   max((i.end_s for i in infos), default=0.0)))
        return out

    def search(self, name: str, query: str, top: int = 6, *, since: Any = None, until: Any = None) -> list[Any]:
        """``vstream.search`` over a saved memory: Moments, best first, thumbnails written to a temp folder.

        ``since``/``until`` (text, empty: no limit; ``vstream.app.timerange``): only what was recorded then."""
        from vstream.api import search

        d = self.path(name)
        query = " ".join((query or "").split())
        if not query:
            raise ValueError("type what to look for, e.g. 'how far away is the storm'")
        out = self._thumbs / name
        shutil.rmtree(out, ignore_errors=True)
        return search(d, query, top=top, thumbs_dir=out, **range_args(since, until))

    def timeline(self, name: str, max_items: int = 60, *, since: Any = None, until: Any = None,
                 merge: bool = True) -> list[dict]:
        """The stored moments in time order, read by ``vstream.session.timeline`` (clocked moments first, in
        wall-clock order; then those with stream time only): ``{"start_s", "end_s", "source", "text",
        "thumbnail" (JPEG), "wall_s", "tz", "clock" ("14:05:03", None without wall-clock time)}``.

        ``since``/``until`` (text, empty: no limit): only moments recorded then. With ``merge``, consecutive
        vision chunks showing the same thing (same text, no gap in stream or clock time) are one moment;
        speech lines are their own moments. At most ``max_items`` (evenly picked when there are more).
        """
        from vstream.clock import clock_text
        from vstream.session.minutes import timeline

        moments: list[dict] = []
        prev = None
        for minute in timeline(self.path(name), **range_args(since, until)):
            for it in minute.items:
                last = moments[-1] if moments else None
                if merge and it.kind == "vision" and last is not None and last["source"] == "vision" \
                        and last["text"] == it.text and _follows(prev, it):
                    last["end_s"] = it.end_s
                else:
                    clocked = it.wall_s is not None
                    moments.append({"start_s": it.start_s, "end_s": it.end_s, "source": it.kind, "text": it.text,
                                    "thumbnail": it.thumbnail, "wall_s": it.wall_s, "tz": minute.tz if clocked else "",
                                    "clock": clock_text(it.wall_s, minute.tz) if clocked else None})
                prev = it
        if len(moments) > max_items:
            step = len(moments) / max_items
            moments = [moments[int(k * step)] for k in range(max_items)]
        return moments

    def delete(self, name: str, confirm: str) -> str:
        """Delete saved memory ``name`` when ``confirm`` repeats its name."""
        d = self.path(name)
        if (confirm or "").strip() != d.name:
            raise ValueError(f"to delete {d.name!r}, type its name in the confirm box first")
        shutil.rmtree(d)
        return f"Deleted saved memory {d.name!r}."


def _follows(prev: Any, it: Any) -> bool:
    """Timeline item ``it`` continues ``prev`` without a gap in stream time, nor (when both have it) in
    wall-clock time (a resumed camera's next chunk follows in stream time but not on the clock)."""
    if prev is None or abs(prev.end_s - it.start_s) >= 1e-3:
        return False
    return prev.wall_s is None or it.wall_s is None or abs(it.wall_s - prev.wall_s - (prev.end_s - prev.start_s)) < 1.0


def moment_caption(m: Any) -> str:
    """``"speech · 47.4–51.7 s · Count the seconds…"`` for a Moment or a timeline dict (``"speech · 14:05:03 ·
    …"`` when it has wall-clock time)."""
    get = m.get if isinstance(m, dict) else (lambda k: getattr(m, k, None))
    text = get("text") or ""
    return f"{get('source')} · {when_text(m)}" + (f" · {text[:70]}" if text else "")


