"""The app's player side: a moment of a video file (its frame large, its sound) and the focus view of an
evidence item or a search hit (picture, time, source, text). Plain Python, no Gradio.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vstream.app.view import jpeg_image, plain_text, score_label, source_of, when_text

logger = logging.getLogger(__name__)

AUDIO_RATE = 16_000
MAX_CLIP_S = 30.0  # longest sound clip the focus view plays


def frame_at(path: str | Path, t_s: float, max_side: int = 1280):
    """The frame of video file ``path`` at ``t_s`` seconds as a PIL image (long side <= ``max_side``), or None."""
    import cv2
    from PIL import Image

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return None
        cap.set(cv2.CAP_PROP_POS_MSEC, max(0.0, float(t_s)) * 1e3)
        ok, bgr = cap.read()
        if not ok:
            return None
    finally:
        cap.release()
    img = Image.fromarray(bgr[:, :, ::-1])  # [H, W, 3] RGB
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    return img


def audio_clip(path: str | Path, start_s: float, end_s: float) -> tuple[int, np.ndarray] | None:
    """The sound of ``path`` from ``start_s`` to ``end_s`` (at most MAX_CLIP_S) as ``(16000, int16 [N])``, or None."""
    from vstream.sources.audio import audio_blocks

    end_s = min(end_s, start_s + MAX_CLIP_S)
    try:
        blocks = audio_blocks(str(path), max(0.0, start_s), end_s)
    except Exception as e:  # no audio track, unreadable: the focus view shows the picture only
        logger.info("no sound for %s %.1f-%.1fs: %s", Path(path).name, start_s, end_s, e)
        return None
    if blocks is None:
        return None
    parts = []
    try:
        for b in blocks:
            lo = max(0, int(round((start_s - b.t_start_s) * AUDIO_RATE)))
            hi = max(0, int(round((end_s - b.t_start_s) * AUDIO_RATE)))
            parts.append(b.samples[lo:hi])
            if b.t_end_s >= end_s:
                break
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            close()
    if not parts:
        return None
    x = np.concatenate(parts)  # [N] float32 in [-1, 1]
    if not len(x):
        return None
    return AUDIO_RATE, (np.clip(x, -1, 1) * 32767).astype(np.int16)


@dataclass
class Focus:
    """One moment shown large: its picture, a Markdown caption, and its sound when the source is a file."""

    image: Any  # PIL image or None
    caption: str
    audio: tuple[int, np.ndarray] | None = None


def focus_evidence(ev: Any, source_label: str, video_path: str | Path | None = None) -> Focus:
    """The focus view of an evidence item: the frame from the file when there is one (readable), else its
    thumbnail; for speech from a file, the sound of its span."""
    mid = 0.5 * (ev.start_s + ev.end_s)
    img = frame_at(video_path, mid) if video_path else None
    if img is None:
        img = jpeg_image(getattr(ev, "thumbnail", None))
    text = plain_text(getattr(ev, "text", "") or "")
    cap = (f"**{when_text(ev)}** · {source_of(ev)} · {score_label(ev)} · from *{source_label}*"
           + (f"\n\n> {text}" if text else ""))
    audio = audio_clip(video_path, ev.start_s, ev.end_s) if (video_path and getattr(ev, "source", "") == "speech") \
        else None
    return Focus(img, cap, audio)
