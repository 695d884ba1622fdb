"""Which stream a memory directory holds, so that reusing one is never a silent no-op.

``DIR/sources.json`` records every source a writer opened on the directory: its identity (a file's
resolved path, size, duration and a fingerprint of its first and last 64 KiB; a stream's URL without
password; a synthetic spec) and the time offset its chunks were stored with. Opening a writer session:

- the same source as the last one recorded: *resume* (said in a warning): chunks already stored are kept
  (stored once, by start time), new ones are added; a live stream (URL, device, pushed frames) shows new
  content each time, so its stream times continue after the newest stored entry (its entries' wall-clock
  times keep the real outage);
- another source (or a directory whose source was never recorded) with ``append=True``: its stream
  times start after the newest stored entry (its own time base, offset stated in a warning);
- another source without ``append``: ValueError (one line: what the directory holds, what to do).

Written crash-safely with ``memory.journal.atomic_write``; a reader never touches it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from memory.journal import atomic_write
from vstream.sources.frames import Frame

logger = logging.getLogger(__name__)

SOURCES_NAME = "sources.json"
_FORMAT = "vstream-sources"
_EDGE = 64 << 10  # bytes hashed at each end of a file


def _fingerprint(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_EDGE))
        if size > 2 * _EDGE:
            f.seek(size - _EDGE)
        h.update(f.read(_EDGE))
    return h.hexdigest()[:32]


def source_identity(source: Any) -> dict:
    """What identifies ``source`` across runs (plain JSON values)."""
    path = getattr(source, "path", None)
    duration = getattr(source, "duration", None)
    if path is not None and Path(path).is_file():
        p = Path(path).resolve()
        return {"kind": "file", "path": str(p), "size": p.stat().st_size,
                "duration_s": None if duration is None else round(float(duration), 3), "fingerprint": _fingerprint(p)}
    name = str(getattr(source, "name", None) or type(source).__name__)
    kind = "synthetic" if name.startswith("synthetic") else "stream"
    ident: dict[str, Any] = {"kind": kind, "name": name}
    if kind == "synthetic":
        ident.update({"duration_s": duration, "fps": getattr(source, "fps", None),
                      "size": list(getattr(source, "size", ()) or ())})
    return ident


def _describe(ident: dict) -> str:
    if ident.get("kind") == "file":
        dur = f", {ident['duration_s']:.1f} s" if ident.get("duration_s") is not None else ""
        return f"{ident['path']!r} ({ident['size']} bytes{dur})"
    return repr(ident.get("name", "?"))


def read_sources(directory: str | Path) -> list[dict]:
    """The sources recorded in a memory directory (oldest first; [] when none)."""
    try:
        d = json.loads((Path(directory) / SOURCES_NAME).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(d, dict) or d.get("format") != _FORMAT or not isinstance(d.get("sources"), list):
        return []
    return [s for s in d["sources"] if isinstance(s, dict) and isinstance(s.get("identity"), dict)]


def _write_sources(directory: Path, sources: list[dict]) -> None:
    atomic_write(directory / SOURCES_NAME, json.dumps({"format": _FORMAT, "sources": sources}, indent=1).encode(),
                 durable=True)


def _decide(d: Path, ident: dict, recorded: list[dict], entries: int, stored_end_s: float,
            append: bool) -> tuple[str, float]:
    """("new" | "resume" | "append", time offset), or ValueError when the directory holds another source."""
    if not recorded and entries == 0:
        return "new", 0.0
    last = recorded[-1] if recorded else None
    if last is not None and last["identity"] == ident:
        if ident.get("kind") == "stream" and entries:  # a live stream resumed: new content, after the stored
            return "resume", float(stored_end_s)  # entries (its wall-clock times show the outage)
        return "resume", float(last.get("offset_s", 0.0))
    if not append:
        held = _describe(last["identity"]) if last is not None else "a source that was not recorded"
        raise ValueError(f"memory dir {d} holds {entries} entries of {held}, not {_describe(ident)}; use a new "
                         f"--memory-dir, or --memory-append (Python: watch(..., memory_append=True)) to add this "
                         f"stream after them with its own time base (from {stored_end_s:.1f} s)")
    return "append", float(stored_end_s)


def check_memory_dir(directory: str | Path, source: Any, *, append: bool = False) -> None:
    """Raise the ValueError ``claim_memory_dir`` would, without a model and without writing (a CLI pre-check)."""
    d = Path(directory)
    if not (d / "config.json").is_file():
        return
    from memory.store import LongTermStore

    with LongTermStore.open(d, read_only=True, verify="size") as store:
        infos = store.infos()
    _decide(d, source_identity(source), read_sources(d), len(infos), max((i.end_s for i in infos), default=0.0),
            append)


def claim_memory_dir(directory: str | Path, source: Any, *, entries: int, stored_end_s: float,
                     append: bool = False) -> float:
    """Resume, append to or refuse a memory directory for ``source``; returns the time offset (s) its
    chunks get (0 for a new directory or a resumed source). See the module docstring."""
    d = Path(directory)
    ident = source_identity(source)
    recorded = read_sources(d)
    what, offset = _decide(d, ident, recorded, entries, stored_end_s, append)
    if what == "new":
        _write_sources(d, [{"identity": ident, "offset_s": 0.0}])
    elif what == "resume":
        logger.warning("memory dir %s holds this source already (%d entries up to %.1f s): resuming; stored "
                       "chunks are kept, new ones added", d, entries, stored_end_s)
    else:
        held = _describe(recorded[-1]["identity"]) if recorded else "a source that was not recorded"
        _write_sources(d, recorded + [{"identity": ident, "offset_s": offset}])
        logger.warning("appending %s to memory dir %s after its %d entries of %s: its stream times start at "
                       "%.1f s (own time base)", _describe(ident), d, entries, held, offset)
    return offset


class ShiftedSource:
    """``source`` with every frame time moved by ``offset_s`` (a stream appended to a memory directory)."""

    def __init__(self, source: Any, offset_s: float) -> None:
        self.inner, self.offset_s = source, float(offset_s)
        self.name = getattr(source, "name", "source")
        self.fps = getattr(source, "fps", None)
        self.duration = getattr(source, "duration", None)

    def __iter__(self) -> Iterator[Frame]:
        for f in self.inner:
            yield f.shifted(self.offset_s)  # stays lazy: only kept frames are converted

    def __getattr__(self, name: str) -> Any:  # gap_records, reconnects, dropped, push(), ...
        return getattr(self.inner, name)

    def close(self) -> None:
        if hasattr(self.inner, "close"):
            self.inner.close()


def copy_sources(src_dir: str | Path, dst_dir: str | Path) -> None:
    """Carry the source record over to a copy of a memory directory (``session.save``)."""
    recorded = read_sources(src_dir)
    if recorded and os.path.isdir(dst_dir):
        _write_sources(Path(dst_dir), recorded)
