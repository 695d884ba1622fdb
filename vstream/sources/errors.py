"""What can be wrong with a video source and how to say it: ``SourceError`` and its one-line messages.

Also the facts every opener needs before touching a decoder: which specs are URLs or devices
(``is_url``, ``is_device``), credential redaction for messages and logs, and the checks of a local
file (missing, empty, a folder, an MP4 without its index).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

#: URL schemes opened with PyAV as live streams.
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp", "tcp", "rtp")
URL_SCHEMES = LIVE_SCHEMES + ("http", "https")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".flv", ".mpg", ".mpeg", ".y4m")

_FIX_FILE = "give a valid H.264/MPEG-4 video file"


class SourceError(ValueError):
    """A video source cannot be opened or read; the message is one line naming the problem and the fix."""

    def __init__(self, message: str):
        super().__init__(_one_line(message))


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def _redact(target: str) -> str:
    """Hide the password of ``scheme://user:pass@host`` in messages and logs."""
    try:
        parts = urlsplit(target)
    except ValueError:
        return target
    if parts.scheme and parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
    return target


def _file_error(path: Any, problem: str, fix: str = _FIX_FILE) -> SourceError:
    return SourceError(f"cannot read video {str(path)!r}: {problem}; {fix}")


def _stream_error(url: str, problem: str,
                  fix: str = "check the URL, the network and that the server is running") -> SourceError:
    return SourceError(f"cannot open stream {_redact(url)!r}: {problem}; {fix}")


def _exc_text(exc: BaseException) -> str:
    """Short text of an exception (PyAV/decord messages may carry paths and newlines)."""
    text = _one_line(getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
    text = re.sub(r"\[[\d:]+\] \S+:\d+: ", "", text)  # decord's "[12:00:00] /src/file.cc:83: " prefix
    return text[:200]


def is_url(spec: Any) -> bool:
    """True for rtsp/rtmp/http(s)/srt/udp/tcp URLs."""
    return isinstance(spec, str) and urlsplit(spec).scheme.lower() in URL_SCHEMES


def is_device(spec: Any) -> bool:
    """True for camera device paths such as ``/dev/video0``."""
    return isinstance(spec, (str, os.PathLike)) and str(spec).startswith("/dev/video")


def _mp4_missing_index(path: Path) -> bool:
    """True when an MP4/MOV file has media data but no 'moov' index (truncated while writing)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 8 or head[4:8] != b"ftyp":
                return False
            pos, seen = 0, set()
            while pos + 8 <= size and len(seen) < 64:
                f.seek(pos)
                hdr = f.read(16)
                n, kind = int.from_bytes(hdr[:4], "big"), hdr[4:8]
                if n == 1 and len(hdr) >= 16:
                    n = int.from_bytes(hdr[8:16], "big")
                seen.add(kind)
                if n < 8:
                    break
                pos += n
            return b"moov" not in seen and b"mdat" in seen
    except OSError:
        return False


def _check_file(path: str | os.PathLike) -> Path:
    """Raise SourceError for a missing, empty or directory path; return it as a Path."""
    p = Path(path)
    if not p.exists():
        raise _file_error(path, "no such file", "check the path (relative paths start at the working directory)")
    if p.is_dir():
        vids = sorted(c.name for c in p.iterdir() if c.suffix.lower() in VIDEO_EXTENSIONS)
        hint = f"give one of its video files, e.g. {vids[0]!r}" if vids else "give a video file, not a folder"
        raise _file_error(path, f"it is a directory ({len(vids)} video files inside)", hint)
    size = p.stat().st_size
    if size == 0:
        raise _file_error(path, "file is empty (0 bytes)")
    if not os.access(p, os.R_OK):
        raise _file_error(path, "permission denied", "make the file readable")
    return p


def _container_error(target: str, exc: BaseException, *, is_file: bool) -> SourceError:
    text = _exc_text(exc)
    if is_file:
        p = Path(target)
        if _mp4_missing_index(p):
            return _file_error(target, "the MP4 index ('moov' atom) is missing, the file is truncated or still "
                                       "being written", "wait for the writer to finish or re-encode the file")
        return _file_error(target, f"not a readable video ({text})")
    return _stream_error(target, text)
