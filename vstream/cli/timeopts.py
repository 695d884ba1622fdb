"""`--since/--until/--tz` for `vstream ask|search|export|timeline`, clock-time printing, and `vstream timeline`.

Every time option is read (``vstream.clock.parse_range``) before a model loads; a bad one is one line
and exit 2 (``ValueError`` through ``vstream.cli.main``). Times print as clock time (``14:05:03``, the
stream's zone) where an entry has wall time, else as stream seconds.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def add_time_args(p: argparse.ArgumentParser) -> None:
    """``--since``, ``--until`` and ``--tz`` on a subcommand."""
    p.add_argument("--since", default=None, metavar="WHEN",
                   help="only what was recorded from WHEN on: ISO time, '10m', '2h', 'yesterday 08:00'")
    p.add_argument("--until", default=None, metavar="WHEN", help="only what was recorded before WHEN")
    p.add_argument("--tz", default=None, metavar="ZONE",
                   help="time zone for --since/--until and printed times (IANA name; default: the stream's)")


def check_time_args(args: argparse.Namespace) -> tuple[tuple[float, float] | None, str]:
    """The wall-clock range of ``--since/--until`` and the zone, checked before anything loads.

    ``args.since``/``args.until`` become epoch seconds (None when absent)."""
    from memory.store_io import read_infos
    from vstream.clock import check_zone, parse_range
    from vstream.session.recall import directory_zone

    if args.tz is not None:
        check_zone(args.tz)
    infos = read_infos(Path(args.memory_dir))
    tz = directory_zone(infos, args.tz)
    rng = parse_range(args.since, args.until, tz=tz)
    if rng is not None:
        args.since = None if math.isinf(rng[0]) else rng[0]
        args.until = None if math.isinf(rng[1]) else rng[1]
        if not any(i.wall_s is not None for i in infos):
            logger.warning("%s holds no clock times (a file watched without --start-at): nothing is in any "
                           "time range", args.memory_dir)
    return rng, tz


def span_text(start_s: float, end_s: float, wall_s: float | None, wall_end_s: float | None, tz: str | None) -> str:
    """``"14:05:03-14:05:04"`` with wall time, else ``"12.0-13.0s"``."""
    from vstream.clock import clock_text

    if wall_s is not None:
        end = wall_end_s if wall_end_s is not None else wall_s
        return f"{clock_text(wall_s, tz)}-{clock_text(end, tz)}"
    return f"{start_s:.1f}-{end_s:.1f}s"


def when_text(at_s: float, wall_s: float | None, tz: str | None) -> str:
    """``"14:05:03"`` with wall time, else ``"12.0s"``."""
    from vstream.clock import clock_text

    return clock_text(wall_s, tz) if wall_s is not None else f"{at_s:.1f}s"


def session_span(session, start_s: float, end_s: float | None = None) -> tuple[str, dict]:
    """How `vstream watch` shows a stream span of ``session``: clock time for a live source (once its chunks
    carry wall time), stream seconds otherwise; plus the JSON fields (``wall_s``/``wall_end_s``) when known."""
    from vstream.session.pipeline import clock_markers

    end = start_s if end_s is None else end_s
    w = session.engine.wall_of(start_s, end)
    fields = {"wall_s": w["wall_s"], "wall_end_s": w["wall_end_s"]} if w else {}
    if w and clock_markers(session.config.memory.time_marker, session.source):
        text = when_text(start_s, w["wall_s"], w["tz"])
        return (text if end_s is None else f"{text}-{when_text(end, w['wall_end_s'], w['tz'])}"), fields
    return (f"{start_s:.1f}s" if end_s is None else f"{start_s:.1f}-{end:.1f}s"), fields


def range_text(rng: tuple[float, float] | None, tz: str) -> str:
    from vstream.clock import clock_text

    if rng is None:
        return ""
    lo = clock_text(rng[0], tz, date=True) if math.isfinite(rng[0]) else "the start"
    hi = clock_text(rng[1], tz, date=True) if math.isfinite(rng[1]) else "now"
    return f"{lo} to {hi}"


def cmd_timeline(args: argparse.Namespace) -> int:
    """`vstream timeline DIR [--since --until] [--json|--html]`: the stored moments per minute (read-only)."""
    from vstream.session.minutes import render_html, render_json, render_text, timeline

    if not (Path(args.memory_dir) / "config.json").is_file():
        raise ValueError(f"{args.memory_dir} is not a vstream memory directory (no config.json); give the directory "
                         f"written by `vstream watch --memory-dir`")
    rng, tz = check_time_args(args)
    minutes = timeline(args.memory_dir, args.since, args.until, tz=tz, events=args.events)
    if args.html:
        text = render_html(minutes, title=f"vstream timeline: {Path(args.memory_dir).name} {range_text(rng, tz)}")
    elif args.json:
        text = render_json(minutes)
    else:
        text = render_text(minutes) or (f"nothing recorded in that period ({range_text(rng, tz)})\n" if rng
                                        else "nothing recorded\n")
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def add_timeline_parser(sub: Any) -> None:
    t = sub.add_parser("timeline", help="what a memory directory holds, minute by minute (clock time; read-only)")
    t.add_argument("memory_dir")
    add_time_args(t)
    form = t.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="one JSON document")
    form.add_argument("--html", action="store_true", help="one self-contained HTML page (thumbnails inline)")
    t.add_argument("--events", default=None, metavar="FILE", help="a fleet event log: its alerts join the minutes")
    t.add_argument("--out", "-o", default=None, help="file to write (default: stdout)")
    t.set_defaults(func=cmd_timeline)
