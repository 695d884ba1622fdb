"""Standing alerts: conditions, the Notifier (threshold, rising edge, cool-down) and Alerts with answers.

After each chunk ``Alerts.check`` probes every condition on the memory as of that chunk; a condition
that fires is asked about in full ("Describe what happened: ...") and its callback receives an
``Alert`` carrying that answer (or none when the query queue was full or answering failed).
"""
from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

from vstream.types import Alert

logger = logging.getLogger(__name__)


@dataclass
class Condition:
    """A standing instruction: "tell me when <text>"."""

    handle: int
    text: str
    callback: Callable[[Alert], None]
    threshold: float
    cooldown_s: float
    last_fired_s: float | None = None
    fired: int = 0
    active: bool = False  # P >= threshold at the last check (an event in progress)
    errors: int = 0  # probes that raised
    last_p: float | None = None  # P("Yes") at the latest check (NaN when the probe failed)
    last_checked_s: float | None = None  # stream time of the latest check


def _check_threshold(threshold: float) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}") from None
    if not 0.0 < t < 1.0:  # also rejects NaN
        raise ValueError(f"threshold must be in (0, 1), got {threshold}; e.g. threshold=0.5")
    return t


def _check_cooldown(cooldown_s: float) -> float:
    try:
        c = float(cooldown_s)
    except (TypeError, ValueError):
        raise ValueError(f"cooldown_s must be a number of seconds >= 0, got {cooldown_s!r}") from None
    if math.isnan(c) or c < 0:
        raise ValueError(f"cooldown_s must be >= 0 seconds of stream time, got {cooldown_s}")
    return c


class Notifier:
    """Scores every condition after each chunk and decides which fire.

    A condition fires once per event: on the check where P("Yes") rises to ``threshold`` or above after
    being below it (or at the first check), unless it fired less than ``cooldown_s`` of stream time ago.
    An event whose start falls inside the cool-down does not fire later while it lasts.
    """

    def __init__(self, probe: Callable[[str], float]) -> None:
        self.probe = probe
        self.conditions: dict[int, Condition] = {}
        self._next = 0
        self._lock = threading.Lock()

    def add(self, text: str, callback: Callable[[Alert], None], threshold: float, cooldown_s: float) -> int:
        """Register a condition; returns its handle. ValueError on an empty text or a bad threshold/cool-down."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the alert condition is empty; say what to watch for")
        if not callable(callback):
            raise ValueError(f"callback must be callable (it receives an Alert), got {type(callback).__name__}")
        t, c = _check_threshold(threshold), _check_cooldown(cooldown_s)
        with self._lock:
            h = self._next
            self._next += 1
            self.conditions[h] = Condition(h, text.strip(), callback, t, c)
        return h

    def remove(self, handle: int) -> None:
        with self._lock:
            self.conditions.pop(handle, None)

    def check(self, now_s: float) -> list[tuple[Condition, float]]:
        """Probe every condition at stream time ``now_s``; return (condition, probability) that fire.

        A probe that raises is logged and counts as "not happening" (perception goes on).
        """
        with self._lock:
            conds = list(self.conditions.values())
        fired = []
        for c in conds:
            try:
                p = float(self.probe(c.text))
            except Exception as e:
                c.errors += 1
                logger.warning("probing alert %r failed: %s", c.text[:60], e)
                p = float("nan")
            c.last_p, c.last_checked_s = p, now_s
            if not p >= c.threshold:  # NaN counts as below
                c.active = False
                continue
            rising, c.active = not c.active, True
            if not rising:
                continue
            if c.last_fired_s is not None and now_s - c.last_fired_s < c.cooldown_s:
                continue
            c.last_fired_s = now_s
            c.fired += 1
            fired.append((c, p))
        return fired


class Alerts:
    """A session's standing alerts: a Notifier plus the full answer for each condition that fires.

    ``ask(question, history=False)`` queues a question on the memory as of now and returns a
    Future[Answer]; it raises ValueError when the query queue is full.
    """

    def __init__(self, probe: Callable[[str], float], ask: Callable[..., Future], *, threshold: float,
                 cooldown_s: float) -> None:
        self.notifier = Notifier(probe)
        self._ask = ask
        self.threshold = threshold
        self.cooldown_s = cooldown_s

    def add(self, condition: str, callback: Callable[[Alert], None], *, threshold: float | None = None,
            cooldown_s: float | None = None) -> int:
        """Register a condition (defaults: the session's notify threshold and cool-down); returns its handle."""
        return self.notifier.add(condition, callback, self.threshold if threshold is None else threshold,
                                 self.cooldown_s if cooldown_s is None else cooldown_s)

    def check(self, now_s: float, wall_s: float | None = None) -> None:
        """Probe the conditions after the chunk ending at ``now_s`` (wall-clock ``wall_s`` when known); ask about
        each one that fires."""
        if not self.notifier.conditions:
            return
        for cond, p in self.notifier.check(now_s):
            try:
                fut = self._ask(f"Describe what happened: {cond.text}", history=False)
            except ValueError:  # queue full: report the alert without a full answer
                logger.warning("query queue full; alert %r reported without an answer", cond.text)
                fut = Future()
                fut.set_result(None)
            fut.add_done_callback(lambda f, cond=cond, p=p: _deliver(cond, now_s, p, f, wall_s))


def _deliver(cond: Condition, at_s: float, p: float, fut: Future, wall_s: float | None = None) -> None:
    """Call the condition's callback with the Alert and its answer (None if cancelled or failed)."""
    ans = fut.result() if not fut.cancelled() and fut.exception() is None else None
    try:
        cond.callback(Alert(condition=cond.text, at_s=at_s, probability=p, answer=ans, wall_s=wall_s))
    except Exception:
        logger.exception("alert callback failed")
