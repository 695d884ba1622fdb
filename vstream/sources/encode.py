"""Writing clips: ``write_video`` encodes arrays or timestamped Frames with PyAV, choosing an available encoder."""
from __future__ import annotations

import fractions
import itertools
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from vstream.sources.frames import Frame


_CODEC_CHOICES = {"h264": ("libx264", "h264", "libopenh264", "mpeg4"), "hevc": ("libx265", "hevc", "mpeg4"),
                  "mpeg4": ("mpeg4",)}


def _pick_encoder(codec: str) -> str:
    import av

    for name in _CODEC_CHOICES.get(codec, (codec,)):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - codec not built into this FFmpeg
            continue
    raise ValueError(f"no encoder for codec {codec!r} in this PyAV build; use codec='mpeg4'")


def write_video(path: str | os.PathLike, frames_iter: Iterable[np.ndarray | Frame], fps: float,
                codec: str = "h264", *, crf: int = 23, faststart: bool = True) -> Path:
    """Encode frames to a video file with PyAV; returns the path.

    ``frames_iter`` yields ``[H, W, 3]`` uint8 arrays (constant rate: frame k at k / fps) or ``Frame``
    objects whose ``t`` becomes the pts (variable frame rate, millisecond precision). ``codec="h264"``
    uses libx264 when present, else another H.264 encoder, else MPEG-4 Part 2. ``faststart`` puts
    the MP4 index first, so a truncated copy stays readable up to the cut.
    """
    import av

    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path = Path(path)
    encoder = _pick_encoder(codec)
    it = iter(frames_iter)
    first = next(it, None)
    if first is None:
        raise ValueError("write_video() got no frames; give at least one")
    vfr = isinstance(first, Frame)
    rate = fractions.Fraction(fps).limit_denominator(1001)
    time_base = fractions.Fraction(1, 1000) if vfr else 1 / rate
    options = {"movflags": "+faststart"} if faststart and path.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
    container = av.open(str(path), mode="w", options=options)
    try:
        stream = container.add_stream(encoder, rate=rate)
        h, w = (first.rgb if vfr else first).shape[:2]
        if w % 2 or h % 2:
            raise ValueError(f"width and height must be even for {encoder}, got {w}x{h}; crop or resize the frames")
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = time_base
        if encoder == "libx264":
            stream.options = {"crf": str(crf), "preset": "medium"}
            stream.codec_context.thread_count = 1  # deterministic output, cheap for small clips
        elif encoder == "mpeg4":
            stream.codec_context.bit_rate = 2_000_000
        last_pts = -1
        for k, item in enumerate(itertools.chain([first], it)):
            rgb = item.rgb if vfr else item
            if isinstance(item, Frame) != vfr:
                raise ValueError("write_video() frames must be all arrays or all Frame objects")
            rgb = np.asarray(rgb)
            if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
                raise ValueError(f"frame {k}: want [{h}, {w}, 3] uint8, got {rgb.shape} {rgb.dtype}")
            pts = int(round(item.t / time_base)) if vfr else k
            if pts <= last_pts:
                raise ValueError(f"frame {k}: timestamps must increase by at least 1 ms (t={getattr(item, 't', k)})")
            last_pts = pts
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            vf.pts, vf.time_base = pts, time_base
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    return path
