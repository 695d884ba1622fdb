"""The app's standing alerts for the current source: each with its latest P(yes) and check time, a log of
fired alerts with their thumbnails, and per-alert delete. Cleared with the source they belong to.
Plain Python, no Gradio.
"""
from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from vstream.types import Alert

logger = logging.getLogger(__name__)


@dataclass
class StandingAlert:
    """One "tell me when ..." on the current session."""

    alert_id: int
    condition: str
    threshold: float
    handle: int  # the session's notifier handle
    fired: int = 0


@dataclass
class Fired:
    """One alert that fired: when, how sure, what the model said, and the moment's thumbnail (JPEG)."""

    alert_id: int
    condition: str
    at_s: float
    probability: float
    text: str = ""
    thumbnail: bytes | None = field(default=None, repr=False)


class AlertBook:
    """Standing alerts of one session plus the log of those that fired (thread-safe)."""

    def __init__(self, log_limit: int = 50) -> None:
        self._lock = threading.Lock()
        self._alerts: dict[int, StandingAlert] = {}
        self._ids = itertools.count(1)
        self.log: deque[Fired] = deque(maxlen=log_limit)
        self.version = 0  # bumped on every change (add, delete, fire, clear)

    def add(self, session, condition: str, threshold: float, cooldown_s: float | None, on_fire) -> StandingAlert:
        """Register ``condition`` on ``session``; ``on_fire(StandingAlert, Alert)`` is called when it fires."""
        with self._lock:
            alert_id = next(self._ids)
        box: dict[str, StandingAlert] = {}
        handle = session.notify_when(condition, lambda a: on_fire(box["a"], a), threshold=threshold,
                                     cooldown_s=cooldown_s)
        box["a"] = sa = StandingAlert(alert_id, condition, threshold, handle)
        with self._lock:
            self._alerts[alert_id] = sa
            self.version += 1
        return sa

    def record(self, sa: StandingAlert, alert: Alert, thumbnail: bytes | None) -> Fired | None:
        """Log a firing (None when the alert was deleted meanwhile)."""
        text = alert.answer.text.strip() if alert.answer is not None else ""
        f = Fired(sa.alert_id, sa.condition, alert.at_s, alert.probability, text, thumbnail)
        with self._lock:
            if sa.alert_id not in self._alerts:
                return None
            sa.fired += 1
            self.log.append(f)
            self.version += 1
        return f

    def delete(self, session, alert_id: int) -> StandingAlert:
        """Remove one alert; ValueError when there is no such alert."""
        with self._lock:
            sa = self._alerts.pop(alert_id, None)
            if sa is None:
                raise ValueError(f"there is no alert #{alert_id}; pick one from the list")
            self.version += 1
        if session is not None:
            session.notifier.remove(sa.handle)
        return sa

    def clear(self) -> int:
        """Forget every alert and the log (the source they belong to is gone); returns how many alerts."""
        with self._lock:
            n = len(self._alerts)
            self._alerts.clear()
            self.log.clear()
            self.version += 1
        return n

    def alerts(self) -> list[StandingAlert]:
        with self._lock:
            return list(self._alerts.values())

    def rows(self, session) -> list[list[Any]]:
        """Table rows: ``[#, condition, threshold, latest P(yes), checked at, fired]``."""
        conds = dict(session.notifier.conditions) if session is not None else {}
        out = []
        for sa in self.alerts():
            c = conds.get(sa.handle)
            p = getattr(c, "last_p", None)
            at = getattr(c, "last_checked_s", None)
            out.append([sa.alert_id, sa.condition, f"{sa.threshold:g}",
                        "not checked yet" if p is None else ("probe failed" if p != p else f"{p:.4f}"),
                        "-" if at is None else f"{at:.1f} s", sa.fired])
        return out

    def items(self) -> list[tuple[Any, str]]:
        """Gallery items of the log, newest first: ``(thumbnail, "12.0 s · P(yes) 0.0031 · condition")``."""
        from PIL import Image

        from vstream.app.chat import clean_text
        from vstream.app.view import jpeg_image

        out = []
        for f in reversed(list(self.log)):
            img = jpeg_image(f.thumbnail) or Image.new("RGB", (160, 90), (90, 40, 40))
            out.append((img, f"{f.at_s:.1f} s · P(yes) {f.probability:.4f} · {clean_text(f.condition)}"))
        return out
