"""The Cameras tab's logic over ``vstream.Fleet``: many streams on the app's one model, a grid of their
latest frames, status and alerts; add / remove a stream; one question to all (``Fleet.ask_all``) with
per-camera evidence. Plain Python; the fleet is opened with the first camera.
"""
from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from typing import Any

from vstream.app.view import dedup_evidence, evidence_label

logger = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
MAX_CAMERAS = 8


class CameraWall:
    """A Fleet of cameras over ``agent`` (thread-safe). ``realtime`` plays files as live."""

    def __init__(self, agent, *, realtime: bool = True) -> None:
        self.agent = agent
        self.realtime = realtime
        self.fleet = None
        self.labels: dict[str, str] = {}
        self.alerts_fired: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _open(self):
        from vstream.fleet import Fleet

        with self._lock:
            if self.fleet is None:
                self.fleet = Fleet(self.agent)
            return self.fleet

    def add(self, cam_id: str, source: str, label: str, alert: str = "", threshold: float | None = None) -> str:
        """Start watching ``source`` (a URL or a checked file path) as ``cam_id``; an optional standing alert."""
        cam_id = (cam_id or "").strip()
        if not _ID_RE.match(cam_id):
            raise ValueError(f"bad camera name {cam_id!r}: use 1-32 letters, digits, '-', '_' or '.'")
        if cam_id in self.labels:
            raise ValueError(f"a camera named {cam_id!r} exists; remove it first or pick another name")
        if len(self.labels) >= MAX_CAMERAS:
            raise ValueError(f"at most {MAX_CAMERAS} cameras; remove one first")
        notify = [{"text": alert.strip(), **({"threshold": threshold} if threshold else {})}] if alert and \
            alert.strip() else ()
        fleet = self._open()
        fleet.add(cam_id, source, realtime=self.realtime, notify=notify, on_event=self._on_event)
        self.labels[cam_id] = label
        return f"Camera {cam_id!r} added: watching {label}."

    def _on_event(self, ev: dict) -> None:
        if ev.get("type") == "alert":
            self.alerts_fired[ev.get("stream", "?")] += 1

    def remove(self, cam_id: str) -> str:
        """Stop and forget camera ``cam_id``."""
        if cam_id not in self.labels:
            raise ValueError(f"there is no camera {cam_id!r}; pick one from the list")
        self.fleet.remove(cam_id)
        self.labels.pop(cam_id, None)
        self.alerts_fired.pop(cam_id, None)
        return f"Camera {cam_id!r} removed."

    def ids(self) -> list[str]:
        return list(self.labels)

    def grid(self) -> list[tuple[Any, str]]:
        """Gallery items: each camera's latest frame and ``"cam-1 · up · 12 chunks · 0 alerts"``."""
        from vstream.app.view import jpeg_image

        if self.fleet is None:
            return []
        stats = self.fleet.stats()["streams"]
        out = []
        for cid in self.ids():
            st = stats.get(cid)
            if st is None:
                continue
            try:
                live = list(self.fleet.stream(cid).engine.memory.live)
            except (ValueError, RuntimeError):
                live = []
            thumb = next((s.thumbnail for s in reversed(live) if getattr(s, "thumbnail", None)), None)
            img = jpeg_image(thumb)
            if img is None:
                from PIL import Image

                img = Image.new("RGB", (160, 90), (40, 40, 40))
            warn = f" · ⚠ {st['chunks_dropped']} dropped" if st.get("chunks_dropped") else ""
            out.append((img, f"{cid} · {st['state']} · {st['stream_time_s']:.0f} s · {st['chunks']} chunks · "
                             f"{self.alerts_fired[cid]} alerts{warn}"))
        return out

    def ask_all(self, question: str) -> tuple[list[tuple[Any, str]], str]:
        """One question to every camera: gallery items of per-camera evidence and a Markdown summary."""
        from vstream.app.view import jpeg_image

        question = " ".join((question or "").split())
        if not question:
            raise ValueError("type a question for all cameras, e.g. 'where is the red square?'")
        if self.fleet is None or not self.labels:
            raise ValueError("no cameras yet: add one first")
        hits = self.fleet.ask_all(question, top=len(self.labels), evidence=3)
        items, lines = [], []
        for h in hits:
            evs = dedup_evidence(h.evidence)
            lines.append(f"- **{h.stream}** (best score {h.score:+.2f}): "
                         + "; ".join(evidence_label(e) for e in evs))
            for e in evs:
                img = jpeg_image(e.thumbnail)
                if img is not None:
                    items.append((img, f"{h.stream} · {evidence_label(e)}"))
        return items, ("\n".join(lines) or "No camera has anything in memory yet.")

    def close(self) -> None:
        with self._lock:
            f, self.fleet = self.fleet, None
        if f is not None:
            f.close()
