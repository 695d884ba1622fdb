"""Everything from bytes to timed frames and samples (DESIGN §1.1-3): sources, sampler, chunker, audio.

``open_source`` picks a video source for a spec; every public name lives here. A source yields
``Frame(t, rgb)`` (``frames``). Files are read with PyAV, decord on request (``file``), and a file sampled
at a known rate never decodes the non-reference pictures its sampler drops (``skipping``); live URLs and
devices with PyAV, reconnecting (``live``); the Gradio webcam pushes frames into a ``PushSource``
(``push``); ``SyntheticSource`` renders deterministic scenes with scripted events (``synthetic``);
``write_video`` encodes clips (``encode``). Problems raise ``SourceError`` (a ``ValueError``) with a
one-line message naming the path and the fix, at open time where possible (``errors``); ``probe`` reads a
target's facts (``pyav``). The sampler and chunker (time markers) are ``chunking``; the audio track is
decoded to 16 kHz mono on the frames' clock by ``audio``, and pushed audio enters through ``audio_push``;
pushed frames and audio wait in one bounded, never-blocking queue (``push_queue``).
"""
from __future__ import annotations

import os
from typing import Any

from vstream.clock import time_marker
from vstream.sources.chunking import Chunk, Chunker, Sampler, fit_frame_count
from vstream.sources.frames import Frame, VideoSource, resize_max_side
from vstream.sources.encode import write_video
from vstream.sources.errors import (LIVE_SCHEMES, URL_SCHEMES, VIDEO_EXTENSIONS, SourceError, _stream_error, is_device,
                                    is_url)
from vstream.sources.file import FileSource
from vstream.sources.live import LiveSource
from vstream.sources.push import PushSource
from vstream.sources.pyav import MAX_BAD_PACKETS, probe
from vstream.sources.synthetic import (COLORS, EVENT_KINDS, SHAPES, SyntheticSource, TimeWindow, open_synthetic,
                                       split_synthetic_events, synthetic_kwargs)

__all__ = ["COLORS", "EVENT_KINDS", "LIVE_SCHEMES", "MAX_BAD_PACKETS", "SHAPES", "URL_SCHEMES", "VIDEO_EXTENSIONS",
           "Chunk", "Chunker", "FileSource", "Frame", "LiveSource", "PushSource", "Sampler", "SourceError",
           "SyntheticSource", "TimeWindow", "VideoSource", "fit_frame_count", "is_device", "is_url", "open_source",
           "open_synthetic", "probe", "resize_max_side", "split_synthetic_events", "synthetic_kwargs", "time_marker",
           "write_video"]


def open_source(spec: Any, **kw: Any) -> VideoSource:
    """Open ``spec`` as a VideoSource (validated now, so errors surface before ingestion).

    ``spec``: a VideoSource (returned as is); ``"synthetic"`` or ``"synthetic:seed=3,duration=60,fps=10,
    size=128x96"``, optionally with ``events=FILE.json`` (scripted events, see ``synthetic_kwargs``); an
    rtsp/rtmp/http(s)/srt/udp/tcp URL or a ``/dev/video*`` path (LiveSource); an existing file
    (FileSource). ``kw`` go to the source's constructor.
    """
    if isinstance(spec, VideoSource) and not isinstance(spec, (str, bytes, os.PathLike)):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise SourceError(f"cannot open video source {spec!r}: unsupported type {type(spec).__name__}; "
                          "give a file path, a URL, 'synthetic' or a VideoSource")
    text = str(spec)
    if text == "synthetic" or text.startswith("synthetic:"):
        return SyntheticSource(**{**synthetic_kwargs(text), **kw})
    if is_url(text) or is_device(text):
        return LiveSource(text, **kw)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise _stream_error(text, f"unsupported scheme {scheme!r}", f"use one of {', '.join(URL_SCHEMES)}")
    return FileSource(text, **kw)
