"""The app's time-range fields (``since`` / ``until``): what the user typed, as the keyword arguments of
``Session.ask``, ``vstream.search`` and ``vstream.session.timeline``. Plain Python.

An empty field means "no limit on that side"; text is read by ``vstream.clock.parse_when`` (ISO 8601,
"10m", "2h", "yesterday 08:00", "14:05") in the stream's zone. A time that cannot be read, or a ``since``
not before its ``until``, is a one-line ValueError before anything is asked or read.
"""
from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

#: What the fields accept (their placeholder and the help text)
EXAMPLES = "e.g. 10m, 2h, 14:05, yesterday 08:00, 2026-03-29T14:05"


def range_args(since: Any = None, until: Any = None) -> dict[str, Any]:
    """``{"since": ..., "until": ...}`` with only the fields that hold something (stripped text)."""
    out = {}
    for key, value in (("since", since), ("until", until)):
        if isinstance(value, str):
            value = " ".join(value.split())
        if value is not None and value != "":
            out[key] = value
    return out


def checked_range(session: Any, since: Any = None, until: Any = None) -> dict[str, Any]:
    """``range_args`` checked against ``session``'s clock zone (``Session.time_range``; without a session, this
    machine's zone): ValueError naming the bad field and the accepted forms."""
    kw = range_args(since, until)
    if not kw:
        return kw
    if session is not None and hasattr(session, "time_range"):
        session.time_range(**kw)
    else:
        from vstream.clock import parse_range

        parse_range(kw.get("since"), kw.get("until"))
    return kw


def range_note(kw: dict[str, Any]) -> str:
    """``" (since 10m until 14:05)"`` for a chat line ('' without a range)."""
    parts = [f"{k} {kw[k]}" for k in ("since", "until") if k in kw]
    return f" *({' '.join(parts)})*" if parts else ""
