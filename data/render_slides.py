"""Render the synthetic lecture slides of ``data/slides.json`` as video frames (OpenCV only).

Each item is ``{"slide": "<title>\\n<line>[\\n<line>]", "question": "<paraphrase question about it>"}``.
A slide is a light background with a coloured title bar and one or two body lines; words are drawn one
by one with a visible gap so that OCR keeps the spaces. Usable as a module (``render_slide``) or as a
script that writes PNGs::

    python data/render_slides.py --out slides_png --width 480
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

SLIDES_JSON = Path(__file__).with_name("slides.json")
_BACKGROUNDS = [(250, 250, 245), (240, 246, 252), (252, 247, 238), (244, 252, 244), (248, 244, 252)]
_TITLE_COLOURS = [(30, 50, 120), (120, 30, 40), (20, 90, 60), (90, 40, 110), (40, 40, 40)]


def load_slides(path: str | Path = SLIDES_JSON) -> list[dict]:
    """The slide items: [{"slide": str, "question": str}, ...]."""
    items = json.loads(Path(path).read_text(encoding="utf-8"))
    for i, it in enumerate(items):
        if not isinstance(it, dict) or not it.get("slide") or not it.get("question"):
            raise ValueError(f"{path}: item {i} needs non-empty 'slide' and 'question'")
    return items


def _line_width(words: list[str], font: int, scale: float, thick: int, gap: int) -> int:
    return sum(cv2.getTextSize(w, font, scale, thick)[0][0] for w in words) + gap * max(0, len(words) - 1)


def _draw_words(img: np.ndarray, words: list[str], x: int, y: int, font: int, scale: float, colour, thick: int,
                gap: int) -> None:
    for w in words:
        cv2.putText(img, w, (x, y), font, scale, colour, thick, cv2.LINE_AA)
        x += cv2.getTextSize(w, font, scale, thick)[0][0] + gap


def render_slide(text: str, width: int = 480, height: int = 270, style: int = 0) -> np.ndarray:
    """One slide as an RGB frame [height, width, 3] uint8: first line the title, the rest body lines."""
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if not lines:
        raise ValueError("a slide needs at least a title line")
    bg = _BACKGROUNDS[style % len(_BACKGROUNDS)]
    title_rgb = _TITLE_COLOURS[style % len(_TITLE_COLOURS)]
    img = np.empty((height, width, 3), np.uint8)
    img[:] = bg
    margin = max(6, width // 32)
    avail = width - 2 * margin
    bar_h = int(height * 0.26)
    img[:bar_h] = title_rgb
    img[bar_h: bar_h + max(2, height // 90)] = (200, 160, 40)

    def fit(words: list[str], font: int, scale: float, thick: int) -> tuple[float, int]:
        while True:
            gap = max(5, int(round(14 * scale)))
            if _line_width(words, font, scale, thick, gap) <= avail or scale < 0.3:
                return scale, gap
            scale *= 0.93

    base = width / 640.0
    words = lines[0].split()
    scale, gap = fit(words, cv2.FONT_HERSHEY_DUPLEX, 1.05 * base * 1.25, 2 if width >= 400 else 1)
    th = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_DUPLEX, scale, 1)[0][1]
    _draw_words(img, words, margin, (bar_h + th) // 2, cv2.FONT_HERSHEY_DUPLEX, scale, (255, 255, 255),
                2 if width >= 400 else 1, gap)
    body = lines[1:]
    top, bottom = bar_h + int(height * 0.1), height - int(height * 0.08)
    step = (bottom - top) / max(1, len(body))
    for i, line in enumerate(body):
        words = line.split()
        scale, gap = fit(words, cv2.FONT_HERSHEY_SIMPLEX, 0.85 * base * 1.25, 1)
        th = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][1]
        y = int(top + step * i + (step + th) / 2)
        cv2.circle(img, (margin + 3, y - th // 2), max(2, th // 5), (90, 90, 90), -1, cv2.LINE_AA)
        _draw_words(img, words, margin + 12, y, cv2.FONT_HERSHEY_SIMPLEX, scale, (20, 20, 20), 1, gap)
    return img


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Render data/slides.json as PNG frames.")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--width", type=int, default=480)
    p.add_argument("--slides", default=str(SLIDES_JSON))
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, it in enumerate(load_slides(a.slides)):
        rgb = render_slide(it["slide"], a.width, a.width * 9 // 16, style=i)
        cv2.imwrite(str(out / f"slide_{i:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


if __name__ == "__main__":
    main()
