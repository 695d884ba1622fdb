"""What the app says about the model, the stream's health, its speech and its evidence (plain Python).

``random_banner`` (a random-weight preset and the command for a real checkpoint), ``overload_warning``
(perception behind the stream, with the advice), ``transcript_text`` (speech as heard, with times),
``dedup_evidence`` / ``evidence_label`` (one span once, its source and a labelled score).
"""
from __future__ import annotations

import io
import logging
import re
from typing import Any, Iterable

logger = logging.getLogger(__name__)

#: A real checkpoint the banner suggests (any hub id or local checkpoint directory works).
REAL_MODEL_HINT = "python app.py --model HuggingFaceTB/SmolVLM2-256M-Video-Instruct"

_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def is_random_preset(model_name: str) -> bool:
    """True when ``model_name`` is one of the registry's random-weight presets."""
    from vstream.models.registry import PRESETS

    return model_name in PRESETS


def random_banner(model_name: str) -> str:
    """Markdown warning for a random-weight model ('' for a real checkpoint)."""
    if not is_random_preset(model_name):
        return ""
    return (f"⚠ **{model_name} has random weights** (a preset for tests and timing): its answers are noise and "
            f"its P(yes) readings mean nothing. Speech recognition, search, evidence and timing are real. "
            f"Load a real checkpoint (a hub id or a local directory): `{REAL_MODEL_HINT}`")


def overload_warning(stats: dict | None, chunk_seconds: float, last_latency_s: float | None = None) -> str:
    """A warning when perception falls behind the stream (chunks dropped, latency above the chunk length)."""
    if not stats:
        return ""
    dropped, chunks = int(stats.get("chunks_dropped") or 0), int(stats.get("chunks") or 0)
    p50 = stats.get("chunk_latency_p50")
    lat = last_latency_s if last_latency_s is not None else p50
    why = []
    if dropped:
        why.append(f"{dropped} of {dropped + chunks} chunks dropped")
    if lat is not None and lat > chunk_seconds:
        why.append(f"chunk latency {lat:.1f} s is above the chunk length {chunk_seconds:g} s")
    asr = stats.get("asr") or {}
    if (asr.get("dropped_s") or 0) > 0:
        why.append(f"{asr['dropped_s']:.0f} s of audio not recognised")
    if (asr.get("queue_s") or 0) > 15:
        why.append(f"speech recognition is {asr['queue_s']:.0f} s behind")
    if not why:
        return ""
    return ("⚠ **Perception is falling behind the stream**: " + "; ".join(why) + ". What it skips is never seen. "
            "Lower the frame rate (`--fps 0.5`), use a smaller model, or drop repeated visual tokens "
            "(`--token-drop 0.9`)" + ("; for speech, start without the other sources' load or with `--no-asr`"
                                     if asr else "") + ".")


def fmt_span(start_s: float, end_s: float) -> str:
    """``"47.4–51.7 s"``."""
    return f"{start_s:.1f}–{end_s:.1f} s"


def when_text(item: Any) -> str:
    """When an item (Evidence, Moment, or a timeline dict) was: its clock time in its zone (``"14:05:03"``, or
    ``"14:05:03–14:05:07"`` with ``wall_end_s``) when it has ``wall_s``, else its stream time (``fmt_span``)."""
    get = item.get if isinstance(item, dict) else (lambda k: getattr(item, k, None))
    wall = get("wall_s")
    if wall is None:
        return fmt_span(get("start_s"), get("end_s"))
    from vstream.clock import clock_text

    tz, end = get("tz") or None, get("wall_end_s")
    a = clock_text(wall, tz)
    b = clock_text(end, tz) if end is not None else a
    return a if a == b else f"{a}–{b}"


def transcript_text(segments: Iterable[Any]) -> str:
    """Speech as heard, one line per segment: ``[47.4–51.7 s] Count the seconds…``."""
    lines = []
    for seg in segments:
        text = _CONTROL_RE.sub("", getattr(seg, "text", "") or "").strip()
        if text:
            lines.append(f"[{fmt_span(seg.start_s, seg.end_s)}] {text}")
    return "\n".join(lines)


#: a chunk marker in stream form (``Time=12.0-13.0s``) or clock form (``Time=14:05:03-14:05:04``)
_MARK = r"Time=(?:[0-9.]+-[0-9.]+s|[0-9]{2}:[0-9]{2}:[0-9]{2}-[0-9]{2}:[0-9]{2}:[0-9]{2})"


def plain_text(text: str) -> str:
    """An entry's text without its ``Time=a-bs`` / ``Time=14:05:03-14:05:04`` / ``speech:`` markers."""
    text = re.sub(_MARK + r"\s*", "", text or "")
    return _CONTROL_RE.sub("", re.sub(r"^\s*speech:\s*", "", text)).strip()


def score_label(ev: Any) -> str:
    """The evidence score labelled by what it is: a cosine similarity in [-1, 1] or a retrieval score."""
    kind = "retrieval score" if getattr(ev, "tier", "window") == "long_term" else "similarity"
    return f"{kind} {ev.score:+.2f}"


def source_of(ev: Any) -> str:
    """What an evidence item is: ``speech``, ``OCR text`` (vision with OCR), ``vision`` or ``text``."""
    src = getattr(ev, "source", "vision") or "vision"
    if src == "vision" and "ocr:" in (getattr(ev, "text", "") or "").lower():
        return "vision + OCR"
    return src


def evidence_label(ev: Any) -> str:
    """One line per evidence item: ``speech · 47.4–51.7 s · similarity +0.03 · “Count the …”`` (clock time
    ``14:05:03–14:05:07`` instead of the span when the item has wall-clock time)."""
    text = plain_text(getattr(ev, "text", "") or "")
    out = f"{source_of(ev)} · {when_text(ev)} · {score_label(ev)}"
    if text:
        out += f" · “{text[:90]}{'…' if len(text) > 90 else ''}”"
    return out


_SPEECH_RE = re.compile(r"Time=([0-9.]+)-([0-9.]+)s speech:\s*(.*?)(?=\s*" + _MARK + "|$)", re.S)


def speech_lines(ev: Any) -> list[Any]:
    """A video chunk whose only text is speech heard over it stands for those speech lines: one speech item
    per line (its own span and words, the chunk's score and thumbnail; its wall-clock time, when the chunk has
    one, moved by the same offset as its stream time). Any other item is returned as is."""
    import dataclasses

    text = getattr(ev, "text", "") or ""
    if getattr(ev, "source", "") != "vision" or "speech:" not in text:
        return [ev]
    lines = _SPEECH_RE.findall(text)
    rest = _SPEECH_RE.sub("", text)
    if not lines or re.sub(_MARK, "", rest).strip():
        return [ev]  # the chunk has text of its own (OCR): it stays a vision item
    wall = getattr(ev, "wall_s", None)

    def moved(t: float) -> float | None:
        return None if wall is None else wall + (t - ev.start_s)

    return [dataclasses.replace(ev, start_s=float(a), end_s=float(b), source="speech", text=t.strip(),
                                wall_s=moved(float(a)), wall_end_s=moved(float(b))) for a, b, t in lines if t.strip()]


def dedup_evidence(evidence: Iterable[Any]) -> list[Any]:
    """Each span once (the best-scored item of a span wins; a speech item beats vision on the same span);
    chunks that only carry speech become those speech lines; a vision chunk whose text is a speech line
    already listed is left out. Speech first, then best first."""
    best: dict[tuple[float, float], Any] = {}
    for ev in (x for e in evidence for x in speech_lines(e)):
        key = (round(ev.start_s, 1), round(ev.end_s, 1))
        cur = best.get(key)
        if cur is None or (ev.source == "speech" and cur.source != "speech") or \
                (ev.source == cur.source and ev.score > cur.score):
            best[key] = ev
    items = sorted(best.values(), key=lambda e: (e.source != "speech", -e.score))
    said = {plain_text(e.text) for e in items if e.source == "speech" and plain_text(e.text)}
    out = []
    for ev in items:
        t = plain_text(ev.text)
        if ev.source == "vision" and t and t in said:
            continue  # the chunk's text is that speech line: shown once, as speech
        out.append(ev)
    return out


def jpeg_image(data: bytes | None):
    """A PIL image from JPEG bytes (None when missing or unreadable)."""
    from PIL import Image

    if not data:
        return None
    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except Exception:
        return None
