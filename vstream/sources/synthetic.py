"""Synthetic video: ``SyntheticSource`` renders deterministic test scenes with scripted events.

Also everything about a ``"synthetic:..."`` spec: parsing its options, the ``events=FILE`` option
(a JSON file with the scripted events, see ``synthetic_kwargs``), ``open_synthetic`` and
``TimeWindow`` (the frames of one window of an endless scripted stream, rendered directly).
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from vstream.sources.frames import Frame, check_max_side, resize_max_side
from vstream.sources.errors import SourceError

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30), "green": (30, 190, 60), "blue": (40, 80, 230), "yellow": (240, 220, 30),
    "white": (255, 255, 255), "black": (0, 0, 0), "orange": (250, 140, 20), "purple": (140, 50, 200),
    "cyan": (30, 210, 220), "magenta": (220, 40, 200), "gray": (128, 128, 128), "brown": (130, 80, 40),
}
EVENT_KINDS = ("text", "shape", "counter", "scene")
SHAPES = ("square", "circle", "triangle")
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _color(value: Any, where: str) -> tuple[int, int, int]:
    if isinstance(value, str):
        if value not in COLORS:
            raise ValueError(f"{where}: unknown color {value!r}; use one of {', '.join(COLORS)} or an (r, g, b) triple")
        return COLORS[value]
    try:
        r, g, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: color must be a name or an (r, g, b) triple, got {value!r}") from None
    return r, g, b


def _bounce(x: float, lo: float, hi: float) -> float:
    """Reflect ``x`` into [lo, hi] (a ball bouncing between two walls)."""
    if hi <= lo:
        return lo
    span = hi - lo
    y = (x - lo) % (2 * span)
    return lo + (y if y <= span else 2 * span - y)


class SyntheticSource:
    """Deterministic test scenes: moving shapes, a caption, a clock, and scripted events.

    ``size`` is ``(width, height)``. Frames are at ``t = k / fps`` for ``start_s <= t < min(duration_s, end_s)``;
    ``duration_s=float('inf')`` gives an endless stream rendered lazily. Every frame is a pure function
    of ``(seed, events, t)`` (see ``frame_at``). Events are dicts with ``start_s`` and optional
    ``end_s`` (None: until the end) and one of these kinds (positions are fractions of the frame):

    - ``{"kind": "text", "text": "SLIDE 1", "pos": (0.05, 0.35), "color": "white", "scale": 1.0}``
      (text wraps to the frame width; ``pos`` is the top-left corner)
    - ``{"kind": "shape", "shape": "square"|"circle"|"triangle", "color": "red", "pos": (0.3, 0.5),
      "size": 0.2, "velocity": (0.0, 0.0)}`` (``pos`` is the centre; ``velocity`` in frames/s, bouncing)
    - ``{"kind": "counter", "label": "COUNT", "start": 0, "step": 1, "every_s": 1.0, "pos": (0.62, 0.08)}``
      (shows ``label value``, value = start + step * floor((t - start_s) / every_s))
    - ``{"kind": "scene", "color": "blue"}`` (background colour while active: a scene cut)
    """

    def __init__(self, *, seed: int = 0, duration_s: float = 10.0, fps: float = 10.0,
                 size: tuple[int, int] = (128, 128), events: list | None = None, caption: str | None = None,
                 n_shapes: int = 2, clock: bool = True, max_side: int | None = None, start_s: float = 0.0,
                 end_s: float | None = None):
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if not duration_s > 0:
            raise ValueError(f"duration_s must be > 0 (float('inf') for endless), got {duration_s}")
        w, h = (int(v) for v in size)
        if w < 16 or h < 16:
            raise ValueError(f"size must be at least 16x16, got {size}")
        check_max_side(max_side)
        if start_s < 0 or (end_s is not None and end_s <= start_s):
            raise ValueError(f"need 0 <= start_s < end_s, got start_s={start_s}, end_s={end_s}")
        self.start_s, self.end_s = float(start_s), end_s
        self.seed, self.fps, self.size, self.max_side = int(seed), float(fps), (w, h), max_side
        self.duration_s = float(duration_s)
        self.duration: float | None = None if math.isinf(self.duration_s) else self.duration_s
        self.name = f"synthetic:seed={self.seed}"
        self.caption = f"synthetic seed={self.seed}" if caption is None else caption
        self.show_clock = clock
        self.events = [self._check_event(i, e) for i, e in enumerate(events or [])]
        rng = np.random.default_rng(self.seed)
        base = rng.integers(20, 90, size=3)
        self._background = self._gradient(tuple(int(c) for c in base))
        self._shapes = []
        for _ in range(n_shapes):
            self._shapes.append({
                "shape": SHAPES[int(rng.integers(len(SHAPES)))],
                "color": tuple(int(c) for c in rng.integers(120, 256, size=3)),
                "size": float(rng.uniform(0.10, 0.18)),
                "pos": (float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.3, 0.7))),
                "velocity": (float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3))),
            })

    @staticmethod
    def _check_event(i: int, e: dict) -> dict:
        where = f"events[{i}]"
        if not isinstance(e, dict):
            raise ValueError(f"{where} must be a dict, got {type(e).__name__}")
        kind = e.get("kind")
        if kind not in EVENT_KINDS:
            raise ValueError(f"{where}: kind must be one of {', '.join(EVENT_KINDS)}, got {kind!r}")
        out = dict(e)
        out["start_s"] = float(e.get("start_s", 0.0))
        end = e.get("end_s")
        out["end_s"] = None if end is None else float(end)
        if out["end_s"] is not None and out["end_s"] <= out["start_s"]:
            raise ValueError(f"{where}: end_s ({end}) must be after start_s ({out['start_s']})")
        if kind == "text" and not isinstance(e.get("text"), str):
            raise ValueError(f"{where}: a text event needs a 'text' string")
        if kind == "shape" and e.get("shape", "square") not in SHAPES:
            raise ValueError(f"{where}: shape must be one of {', '.join(SHAPES)}, got {e.get('shape')!r}")
        if kind == "counter" and float(e.get("every_s", 1.0)) <= 0:
            raise ValueError(f"{where}: every_s must be > 0")
        if "color" in e:
            out["color"] = _color(e["color"], where)
        return out

    def _gradient(self, rgb: tuple[int, int, int]) -> np.ndarray:
        w, h = self.size
        ramp = np.linspace(0.7, 1.15, h, dtype=np.float32)[:, None, None]  # [H, 1, 1]
        img = np.clip(np.asarray(rgb, np.float32)[None, None, :] * ramp, 0, 255)  # [H, 1, 3]
        return np.ascontiguousarray(np.broadcast_to(img, (h, w, 3)).astype(np.uint8))

    @staticmethod
    def active(event: dict, t: float) -> bool:
        """True when ``event`` is shown at time ``t``."""
        return event["start_s"] <= t + 1e-9 and (event["end_s"] is None or t < event["end_s"] - 1e-9)

    @staticmethod
    def counter_value(event: dict, t: float) -> int:
        """The value a counter event shows at time ``t``."""
        k = math.floor((t - event["start_s"]) / float(event.get("every_s", 1.0)) + 1e-9)
        return int(event.get("start", 0)) + int(event.get("step", 1)) * k

    def _draw_shape(self, img: np.ndarray, spec: dict, t: float, t_local: float) -> None:
        w, h = self.size
        r = max(2, int(round(float(spec.get("size", 0.2)) * min(w, h) / 2)))
        px, py = spec.get("pos", (0.5, 0.5))
        vx, vy = spec.get("velocity", (0.0, 0.0))
        cx = int(round(_bounce(px * w + vx * w * t_local, r, w - 1 - r)))
        cy = int(round(_bounce(py * h + vy * h * t_local, r, h - 1 - r)))
        color = spec.get("color", COLORS["red"])
        color = color if isinstance(color, tuple) else _color(color, "shape")
        kind = spec.get("shape", "square")
        if kind == "circle":
            cv2.circle(img, (cx, cy), r, color, -1, cv2.LINE_AA)
        elif kind == "triangle":
            pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
            cv2.fillPoly(img, [pts], color, cv2.LINE_AA)
        else:
            cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)

    def _text(self, img: np.ndarray, text: str, pos: tuple[float, float], color=(255, 255, 255),
              scale: float = 1.0) -> None:
        """Draw ``text`` with a drop shadow, wrapped to the frame width; ``pos`` is the top-left (fractions)."""
        w, h = self.size
        fs = max(0.25, h / 300.0) * scale
        thick = max(1, int(round(fs * 2)))
        x0, y = int(pos[0] * w), int(pos[1] * h)
        lines: list[str] = []
        for word in text.split():
            cand = f"{lines[-1]} {word}" if lines else word
            if lines and cv2.getTextSize(cand, _FONT, fs, thick)[0][0] > w - x0 - 2:
                lines.append(word)
            elif lines:
                lines[-1] = cand
            else:
                lines.append(word)
        for line in lines:
            (tw, th), base = cv2.getTextSize(line, _FONT, fs, thick)
            y += th + 2
            cv2.putText(img, line, (x0 + 1, y + 1), _FONT, fs, (0, 0, 0), thick, cv2.LINE_AA)  # shadow
            cv2.putText(img, line, (x0, y), _FONT, fs, color, thick, cv2.LINE_AA)
            y += base

    def frame_at(self, t: float) -> np.ndarray:
        """Render the frame at time ``t``: ``[H, W, 3]`` uint8 (before ``max_side``)."""
        img = self._background.copy()
        for e in self.events:
            if e["kind"] == "scene" and self.active(e, t):
                img = self._gradient(e.get("color", COLORS["gray"]))
        for spec in self._shapes:
            self._draw_shape(img, spec, t, t)
        for e in self.events:
            if not self.active(e, t):
                continue
            if e["kind"] == "shape":
                self._draw_shape(img, e, t, t - e["start_s"])
            elif e["kind"] == "text":
                self._text(img, e["text"], e.get("pos", (0.05, 0.35)), e.get("color", (255, 255, 255)),
                           float(e.get("scale", 1.0)))
            elif e["kind"] == "counter":
                label = e.get("label", "COUNT")
                self._text(img, f"{label} {self.counter_value(e, t)}", e.get("pos", (0.62, 0.02)),
                           e.get("color", COLORS["yellow"]), float(e.get("scale", 1.0)))
        if self.caption:
            self._text(img, self.caption, (0.03, 0.02), scale=1.0)
        if self.show_clock:
            minutes, secs = divmod(t, 60.0)
            self._text(img, f"{int(minutes):02d}:{secs:04.1f}", (0.03, 0.82), COLORS["cyan"])
        return img

    def __iter__(self) -> Iterator[Frame]:
        end = min(self.duration_s, math.inf if self.end_s is None else self.end_s)
        first = math.ceil(self.start_s * self.fps - 1e-9)
        steps = itertools.count(first) if math.isinf(end) else range(first, math.ceil(end * self.fps - 1e-9))
        for k in steps:
            t = k / self.fps
            yield Frame(t, resize_max_side(self.frame_at(t), self.max_side))

    def close(self) -> None:
        """Nothing to release (frames are rendered on demand)."""

    def __repr__(self) -> str:
        return f"SyntheticSource(seed={self.seed}, duration_s={self.duration_s}, fps={self.fps}, size={self.size})"


# --------------------------------------------------------------------------------------------
# "synthetic:..." specs
# --------------------------------------------------------------------------------------------

_SYNTHETIC_KEYS = {"seed": ("seed", int), "duration": ("duration_s", float), "duration_s": ("duration_s", float),
                   "fps": ("fps", float), "size": ("size", lambda v: tuple(int(x) for x in v.lower().split("x", 1))),
                   "caption": ("caption", str)}


def _parse_synthetic(spec: str) -> tuple[dict, str | None]:
    """``"synthetic:seed=3,duration=60,fps=10,size=128x96,events=e.json"`` -> (SyntheticSource kwargs, ``"e.json"``)."""
    _, _, rest = spec.partition(":")
    out: dict[str, Any] = {}
    events: str | None = None
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, _, value = (p.strip() for p in item.partition("="))
        if key == "events":
            events = value
            continue
        if key not in _SYNTHETIC_KEYS:
            raise SourceError(f"unknown synthetic option {key!r} in {spec!r}; "
                              f"use {', '.join(_SYNTHETIC_KEYS)} or events=FILE.json")
        name, parse = _SYNTHETIC_KEYS[key]
        try:
            out[name] = parse(value)
            if name == "size" and len(out[name]) != 2:
                raise ValueError
        except ValueError:
            raise SourceError(f"bad synthetic option {item!r} in {spec!r}; "
                              "write e.g. synthetic:seed=3,duration=60,fps=10,size=128x96") from None
    return out, events


def split_synthetic_events(spec: str) -> tuple[str, str | None]:
    """``"synthetic:seed=1,events=e.json,fps=2"`` -> (``"synthetic:seed=1,fps=2"``, ``"e.json"``).

    ``events=FILE`` names a JSON file with the scripted events (a list, or
    ``{"events": [...], ...SyntheticSource keyword arguments}``).
    """
    head, _, rest = spec.partition(":")
    keep, events = [], None
    for item in (s.strip() for s in rest.split(",")):
        if item.startswith("events="):
            events = item[len("events="):]
        elif item:
            keep.append(item)
    return f"{head}:{','.join(keep)}" if keep else head, events


def _read_events(path: str) -> list | dict:
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"synthetic events file not found: {p}; check the path (benchmark scripts: regenerate "
                          "the benchmark, data/make_synthetic_bench.py)")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SourceError(f"{p}: not valid JSON ({e.msg}); give a list of SyntheticSource events") from None


def synthetic_kwargs(spec: str) -> dict:
    """SyntheticSource keyword arguments for ``"synthetic:seed=3,duration=60,...[,events=FILE]"``.

    The events file holds a list of SyntheticSource events, or ``{"events": [...], **kwargs}`` whose
    further SyntheticSource keyword arguments (caption, n_shapes, clock, ...) override the spec's.
    """
    out, events_path = _parse_synthetic(spec)
    if events_path:
        data = _read_events(events_path)
        if isinstance(data, dict):
            data = dict(data)
            out["events"] = data.pop("events", [])
            out.update(data)
        else:
            out["events"] = data
    return out


def open_synthetic(spec: str, start_s: float = 0.0, end_s: float | None = None) -> Any:
    """A VideoSource for ``"synthetic:...[,events=FILE]"``, restricted to [start_s, end_s) when given."""
    src = SyntheticSource(**synthetic_kwargs(spec))
    if start_s > 0 or end_s is not None:
        return TimeWindow(src, start_s, end_s)
    return src


class TimeWindow:
    """The frames of a SyntheticSource in [start_s, end_s), rendered directly (no frames before start)."""

    def __init__(self, src: SyntheticSource, start_s: float, end_s: float | None) -> None:
        if start_s < 0 or (end_s is not None and end_s <= start_s):
            raise ValueError(f"need 0 <= start_s < end_s, got start_s={start_s}, end_s={end_s}")
        self.src, self.start_s, self.end_s = src, float(start_s), end_s
        self.fps = src.fps
        stop = src.duration_s if end_s is None else min(src.duration_s, float(end_s))
        self.duration = None if math.isinf(stop) else stop
        self.name = f"{src.name}[{start_s:g}s-]"

    def __iter__(self) -> Iterator[Frame]:
        stop = self.src.duration_s if self.end_s is None else min(self.src.duration_s, float(self.end_s))
        for k in itertools.count(math.ceil(self.start_s * self.fps - 1e-9)):
            t = k / self.fps
            if t >= stop - 1e-9:
                return
            yield Frame(t, resize_max_side(self.src.frame_at(t), self.src.max_side))

    def close(self) -> None:
        self.src.close()
