"""The shared part of the app's view (one picture for every browser, refreshed by the timer): what runs
now, the transcript as heard, the current frame, the random-model banner and the overload warning.
A mixin of ``AppController`` (``vstream.app.controller``); plain Python.
"""
from __future__ import annotations

import logging

from vstream.app.view import overload_warning, random_banner, transcript_text

logger = logging.getLogger(__name__)


class SharedView:
    """Read-only views over an AppController's state (``session``, ``kind``, ``source_label``...)."""

    def transcript(self) -> str:
        """The current source's speech as heard so far, one timed line per segment."""
        s = self.session
        return transcript_text(_retry(lambda: s.transcript)) if s is not None else ""

    def latest_frame(self):
        """What the source shows now: the latest webcam frame, else the newest chunk's thumbnail (or None)."""
        from vstream.app.view import jpeg_image

        with self._lock:
            s, frame = self.session, self.last_frame
        if frame is not None:
            return frame
        if s is None:
            return None
        live = _retry(lambda: list(s.engine.memory.live))
        return jpeg_image(next((g.thumbnail for g in reversed(live) if getattr(g, "thumbnail", None)), None))

    def _latest_thumbnail(self) -> bytes | None:
        s = self.session
        if s is None:
            return None
        live = _retry(lambda: list(s.engine.memory.live))
        return next((g.thumbnail for g in reversed(live) if getattr(g, "thumbnail", None)), None)

    def now_line(self) -> str:
        """The shared one-line truth every browser shows: source, commentary, speech."""
        with self._lock:
            s, kind, label = self.session, self.kind, self.source_label
        if s is None:
            return "**Now:** no source yet. Pick the webcam, a URL, an upload, or load a saved memory."
        if kind == "memory":
            return f"**Now:** {label} (no live source: questions answer from it)."
        speech = "hearing speech" if self._asr_active else "not hearing speech"
        return (f"**Now watching:** {kind} · {label} · commentary {'on' if self._commentary_active else 'off'}"
                f" · {speech}")

    def banner(self) -> str:
        """The random-model warning ('' for a real checkpoint)."""
        return random_banner(self.model_name)

    def warning(self, st: dict | None = None) -> str:
        """The overload warning for the current session ('' when perception keeps up)."""
        st = st if st is not None else self.status()
        s = self.session
        chunk_s = s.config.sampler.chunk_seconds if s is not None else 1.0
        return overload_warning(st.get("stats"), chunk_s, st.get("last_latency_s"))

    def webcam_note(self) -> str:
        """What the webcam panel says: ignored frames while another source runs."""
        if self.kind != "webcam" and self.webcam_ignored:
            return (f"⚠ {self.webcam_ignored} webcam frames were ignored: the source is now {self.source_label}. "
                    "Stop and record again (or press Use webcam) to switch back to the webcam.")
        return ""


def _retry(fn, tries: int = 3):
    """Call ``fn``; retry when a deque/list was mutated by the perception thread mid-iteration."""
    for i in range(tries):
        try:
            return fn()
        except RuntimeError:
            if i == tries - 1:
                raise
