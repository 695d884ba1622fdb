"""Wall-clock time of a stream: zone names, clock markers, and the ``since``/``until`` of a question.

Stream time is seconds since a stream started; wall time is UTC seconds since the epoch, recorded per
chunk and memory entry beside the source's IANA time-zone name (e.g. ``"Europe/Berlin"``). This module
turns user input into wall time (``parse_when``, ``parse_range``: datetimes, ISO 8601 strings, relative
spans such as ``"10m"``, ``"2h"``, ``"yesterday 08:00"``, parsed with ``dateparser``) and wall time into
text (``clock_text``, ``clock_marker``).

A range is half-open, ``[since, until)``: an entry is in it when it overlaps it
(``wall_start < until`` and ``wall_end > since``; ``memory.longterm.wall_overlaps``).
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import time
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

logger = logging.getLogger(__name__)

NOTHING_RECORDED = "Nothing recorded in that period."


def local_zone() -> str:
    """This machine's IANA time-zone name ("UTC" when it cannot be told)."""
    try:
        import tzlocal

        name = tzlocal.get_localzone_name()
    except Exception:  # noqa: BLE001 - no zone configured: UTC
        name = None
    return name or "UTC"


def check_zone(name: str | None) -> str:
    """``name`` if it is a known IANA zone (None: this machine's zone), else a one-line ValueError."""
    if name is None or name == "":
        return local_zone()
    if not isinstance(name, str):
        raise ValueError(f"time zone must be an IANA name such as 'Europe/Berlin', got {name!r}")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; give an IANA name such as 'Europe/Berlin' or 'UTC'") from None
    return name


def _zone(name: str | None) -> dt.tzinfo:
    try:
        return ZoneInfo(name) if name else dt.timezone.utc
    except (ZoneInfoNotFoundError, ValueError):
        return dt.timezone.utc


def to_datetime(wall: float, tz: str | None) -> dt.datetime:
    """Wall time ``wall`` (UTC epoch seconds) as an aware datetime in zone ``tz``."""
    return dt.datetime.fromtimestamp(float(wall), tz=_zone(tz))


def clock_text(wall: float, tz: str | None, *, date: bool = False) -> str:
    """``"14:05:03"`` (``date=True``: ``"2026-03-29 14:05:03 CEST"``) of wall time ``wall`` in zone ``tz``."""
    d = to_datetime(wall, tz)
    return d.strftime("%Y-%m-%d %H:%M:%S %Z") if date else d.strftime("%H:%M:%S")


def iso(wall: float | None, tz: str | None) -> str | None:
    """ISO 8601 with the zone's offset (None for None)."""
    if wall is None or (isinstance(wall, float) and math.isnan(wall)):
        return None
    return to_datetime(wall, tz).isoformat(timespec="milliseconds")


def time_marker(start_s: float, end_s: float) -> str:
    """The chunk marker in stream time, e.g. ``"Time=12.0-13.0s"`` (one decimal)."""
    return f"Time={start_s:.1f}-{end_s:.1f}s"


def clock_marker(wall_start: float, wall_end: float, tz: str | None) -> str:
    """The chunk marker in clock form, e.g. ``"Time=14:05:03-14:05:04"`` (the camera's zone)."""
    return f"Time={clock_text(wall_start, tz)}-{clock_text(wall_end, tz)}"


def parse_when(value: Any, *, tz: str | None = None, now: Callable[[], float] = time.time,
               what: str = "time") -> float:
    """``value`` as wall time (UTC epoch seconds).

    Accepts an epoch number, a ``datetime`` (naive: in zone ``tz``), an ISO 8601 string, or any phrase
    ``dateparser`` reads, relative to ``now()`` and preferring the past: ``"10m"``, ``"2h"``,
    ``"yesterday 08:00"``, ``"14:05"``. Naive times are in zone ``tz`` (None: this machine's zone).
    Raises a one-line ValueError naming ``what`` when it cannot be read.
    """
    zone = check_zone(tz)
    if isinstance(value, bool):
        raise ValueError(f"{what}: {value!r} is not a time; give e.g. '2026-03-29T14:05', '10m' or 'yesterday 08:00'")
    if isinstance(value, (int, float)):
        if not math.isfinite(float(value)):
            raise ValueError(f"{what}: {value!r} is not a time; give epoch seconds or e.g. '10m'")
        return float(value)
    if isinstance(value, dt.datetime):
        d = value if value.tzinfo is not None else value.replace(tzinfo=ZoneInfo(zone))
        return d.timestamp()
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what}: {value!r} is not a time; give e.g. '2026-03-29T14:05', '10m' or 'yesterday 08:00'")
    text = value.strip()
    if text.replace(".", "", 1).lstrip("+-").isdigit():  # a plain number (e.g. an HTTP query field): epoch seconds
        return float(text)
    try:  # ISO 8601 first: exact, and independent of the parser's guesses
        d = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if d.tzinfo is None:
            d = d.replace(tzinfo=ZoneInfo(zone))
        return d.timestamp()
    except ValueError:
        pass
    got = _dateparse(text, zone, now)
    if got is None:
        raise ValueError(f"{what}: cannot read {text!r} as a time; give e.g. '2026-03-29T14:05', '10m' "
                         f"(ten minutes ago) or 'yesterday 08:00'")
    return got[0]


def _dateparse(text: str, zone: str, now: Callable[[], float]) -> tuple[float, bool] | None:
    """(wall time, relative to now?) of ``text`` read by ``dateparser``, or None when it reads nothing.

    dateparser works on naive wall time: a span relative to now ("10m", "2 hours ago") moves with the base
    and is taken in absolute seconds (right across a DST change); a time of day or a date is localized in
    the zone with that day's offset."""
    import dateparser

    t_now = now()
    base = dt.datetime.fromtimestamp(t_now, tz=ZoneInfo(zone)).replace(tzinfo=None)  # wall time in the zone

    def parse(rel: dt.datetime) -> dt.datetime | None:
        return dateparser.parse(text, settings={"PREFER_DATES_FROM": "past", "RELATIVE_BASE": rel})

    d = parse(base)
    if d is None:
        return None
    if d.tzinfo is not None:  # the text named its own zone or offset
        return d.timestamp(), False
    later = parse(base + dt.timedelta(hours=1))
    if later is not None and later.tzinfo is None and later - d == dt.timedelta(hours=1):
        return t_now - (base - d).total_seconds(), True
    return d.replace(tzinfo=ZoneInfo(zone)).timestamp(), False


#: "around 14:05" in a question: this many seconds either side
AROUND_S = 300.0


def question_range(question: str, *, tz: str | None = None, now: Callable[[], float] = time.time
                   ) -> tuple[float, float] | None:
    """The wall-clock range a question names, found by ``dateparser.search.search_dates`` (``parse_time=True``).

    A span of less than a day back from now ("in the last ten minutes", "2 hours ago") gives ``[then, now)``;
    a time of day ("around 14:05", "at 14:05") gives ``[t - 5 min, t + 5 min)``. Other expressions (a bare day
    name, numbers that only look like dates) are ignored; None when the question names no usable time. Give
    ``since``/``until`` for anything else ("yesterday between 8 and 9")."""
    from dateparser.search import search_dates

    zone = check_zone(tz)
    base = dt.datetime.fromtimestamp(now(), tz=ZoneInfo(zone)).replace(tzinfo=None)
    found = search_dates(question, languages=["en"],
                         settings={"PREFER_DATES_FROM": "past", "RELATIVE_BASE": base}) or []
    for text, _ in found:
        got = _dateparse(text, zone, now)
        if got is None:
            continue
        wall, relative = got
        if relative and 0 < now() - wall < 86400.0:  # a day word alone ("yesterday") names no span
            return wall, now()
        if not relative and ":" in text:  # a time of day
            return wall - AROUND_S, wall + AROUND_S
    return None


def parse_range(since: Any = None, until: Any = None, *, tz: str | None = None,
                now: Callable[[], float] = time.time) -> tuple[float, float] | None:
    """``(since, until)`` as wall times (missing ends open: -inf / +inf), None when neither is given.

    Raises a one-line ValueError when a time cannot be read or ``since`` is not before ``until``.
    """
    if since is None and until is None:
        return None
    lo = -math.inf if since is None else parse_when(since, tz=tz, now=now, what="since")
    hi = math.inf if until is None else parse_when(until, tz=tz, now=now, what="until")
    if not lo < hi:
        raise ValueError(f"since ({_show(lo, tz)}) is not before until ({_show(hi, tz)}); swap them or widen the range")
    return lo, hi


def _show(wall: float, tz: str | None) -> str:
    return clock_text(wall, tz or local_zone(), date=True) if math.isfinite(wall) else str(wall)
