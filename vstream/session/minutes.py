"""A day's timeline of a memory directory: the stored moments per minute of wall-clock time, read-only.

``timeline(directory, since=None, until=None, tz=None) -> list[Minute]``: one ``Minute`` per clock minute
that holds anything (video chunks with their thumbnail and text, speech, commentary), oldest first, plus
the alerts of an event log (``events=``, ``vstream.fleet.events`` lines) in the same minutes. Entries without
wall-clock time (a file watched without ``start_at``) are listed by stream time after the clocked ones,
one "minute" per minute of stream time, with ``wall_s=None``. ``render_html`` makes one self-contained page.
The CLI (``vstream timeline``) and the app's Memory tab both call ``timeline``.
"""
from __future__ import annotations

import base64
import html
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from memory.store_io import read_infos
from vstream.clock import clock_text, iso, parse_range
from vstream.session.recall import _plain, _source, directory_zone

logger = logging.getLogger(__name__)


@dataclass
class TimelineItem:
    """One stored moment (or alert) inside a minute."""

    kind: str  # "vision" | "speech" | "text" (commentary) | "alert"
    start_s: float | None  # stream time (None for an alert of another stream's log)
    end_s: float | None
    wall_s: float | None  # wall-clock time (UTC epoch seconds)
    text: str
    entry_id: int | None = None
    thumbnail: bytes | None = field(default=None, repr=False)  # JPEG

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("thumbnail")
        d["has_thumbnail"] = self.thumbnail is not None
        return d


@dataclass
class Minute:
    """What was stored in one minute: ``label`` is ``"14:05"`` (clock) or ``"+12m"`` (stream time only)."""

    label: str
    wall_s: float | None  # the minute's start (UTC epoch seconds); None: a stream-time minute
    stream_s: float | None  # the minute's first stream time
    tz: str
    items: list[TimelineItem]

    @property
    def thumbnail(self) -> bytes | None:
        """The first video thumbnail of the minute."""
        return next((i.thumbnail for i in self.items if i.thumbnail is not None), None)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "wall_s": self.wall_s, "clock": iso(self.wall_s, self.tz), "tz": self.tz,
                "stream_s": self.stream_s, "items": [i.to_dict() for i in self.items]}


def _alerts(events: str | Path | None, stream: str | None) -> list[dict]:
    """The alert lines (of ``stream``, default all) of a fleet event log (JSON lines; a torn last line and
    undecodable lines are skipped)."""
    if events is None:
        return []
    out = []
    with open(events, "rb") as f:
        for raw in f:
            try:
                e = json.loads(raw) if raw.endswith(b"\n") else None
            except json.JSONDecodeError:
                e = None
            if isinstance(e, dict) and e.get("type") == "alert" and (stream is None or e.get("stream") == stream):
                out.append(e)
    return out


def timeline(directory: str | Path, since: Any = None, until: Any = None, *, tz: str | None = None,
             events: str | Path | None = None, stream: str | None = None) -> list[Minute]:
    """The stored moments of ``directory`` per minute (see the module docstring); nothing is written.

    ``since``/``until``: a wall-clock range (``vstream.clock.parse_when``; zone ``tz``, default the stream's);
    with a range, entries without wall time are left out. ``events``: an event log whose ``alert`` lines
    (of ``stream``, default all) join the minutes of their ``clock_s`` (else ``wall_time``).
    """
    infos = read_infos(Path(directory))
    zone = directory_zone(infos, tz)
    rng = parse_range(since, until, tz=zone)
    from memory.longterm import wall_overlaps

    minutes: dict[tuple, Minute] = {}

    def minute_of(wall: float | None, stream_s: float | None) -> Minute:
        if wall is not None:
            key = ("w", math.floor(wall / 60.0))
            if key not in minutes:
                minutes[key] = Minute(label=clock_text(key[1] * 60.0, zone)[:5], wall_s=key[1] * 60.0,
                                      stream_s=stream_s, tz=zone, items=[])
        else:
            key = ("s", math.floor((stream_s or 0.0) / 60.0))
            if key not in minutes:
                minutes[key] = Minute(label=f"+{key[1]}m", wall_s=None, stream_s=key[1] * 60.0, tz=zone, items=[])
        return minutes[key]

    for i in sorted(infos, key=lambda i: (i.wall_s if i.wall_s is not None else math.inf, i.start_s)):
        if rng is not None and not wall_overlaps(i, rng):
            continue
        text = _plain(i.text)
        if i.kind != "vision" and not text:
            continue
        m = minute_of(i.wall_s, i.start_s)
        if m.stream_s is None:
            m.stream_s = i.start_s
        m.items.append(TimelineItem(kind=_source(i), start_s=i.start_s, end_s=i.end_s, wall_s=i.wall_s, text=text,
                            entry_id=i.entry_id, thumbnail=i.thumbnail))
    for e in _alerts(events, stream):
        wall = e.get("clock_s") if e.get("clock_s") is not None else e.get("wall_time")
        if wall is None or (rng is not None and not rng[0] <= float(wall) < rng[1]):
            continue
        m = minute_of(float(wall), None)
        p = e.get("probability")
        m.items.append(TimelineItem(kind="alert", start_s=e.get("stream_time_s"), end_s=e.get("stream_time_s"),
                            wall_s=float(wall), text=f"{e.get('condition', '')}"
                            + (f" (p={float(p):.2f})" if p is not None else "")
                            + (f": {e['answer']}" if e.get("answer") else "")))
    out = sorted(minutes.values(), key=lambda m: (m.wall_s is None, m.wall_s if m.wall_s is not None else m.stream_s))
    for m in out:
        m.items.sort(key=lambda it: (it.wall_s if it.wall_s is not None else math.inf,
                                     it.start_s if it.start_s is not None else math.inf))
    return out


def render_text(minutes: list[Minute]) -> str:
    """One line per minute and one indented line per item (clock time for clocked items)."""
    lines = []
    for m in minutes:
        lines.append(m.label)
        for it in m.items:
            when = clock_text(it.wall_s, m.tz) if it.wall_s is not None else f"{it.start_s:.1f}s"
            lines.append(f"  {when}  {it.kind:<7} {it.text}".rstrip())
    return "\n".join(lines) + ("\n" if lines else "")


def render_json(minutes: list[Minute]) -> str:
    return json.dumps({"minutes": [m.to_dict() for m in minutes]}, ensure_ascii=False, indent=1) + "\n"


def render_html(minutes: list[Minute], title: str = "vstream timeline") -> str:
    """One self-contained HTML page (thumbnails inline as data: URLs, every text escaped)."""
    rows = []
    for m in minutes:
        thumb = m.thumbnail
        img = (f'<img alt="" src="data:image/jpeg;base64,{base64.b64encode(thumb).decode("ascii")}">'
               if thumb else "")
        items = "".join(
            f'<li class="{html.escape(it.kind)}"><b>{html.escape(clock_text(it.wall_s, m.tz) if it.wall_s is not None else f"{it.start_s:.1f}s")}</b> '
            f'{html.escape(it.kind)}: {html.escape(it.text)}</li>' for it in m.items)
        rows.append(f'<tr><th>{html.escape(m.label)}</th><td>{img}</td><td><ul>{items}</ul></td></tr>')
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif}td,th{vertical-align:top;padding:4px}img{height:48px}"
            "li.alert{color:#b00}</style></head><body><h1>" + html.escape(title) + "</h1><table>"
            + "".join(rows) + "</table></body></html>\n")
