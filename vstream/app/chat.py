"""The app's view side (plain Python, no Gradio): one browser's ``Chat``, what the UI says about sharing
(``SHARING_NOTE``), and the helpers that turn answers and stats into what the UI shows.

The app's stream is shared by every browser; each browser gets its own ``Chat`` from
``AppController.new_chat()`` (``vstream.app.controller``) and keeps it in Gradio's per-session state.
"""
from __future__ import annotations

import io
import logging
import re
import threading
from typing import Any

from vstream.types import Answer

logger = logging.getLogger(__name__)

__all__ = ["Chat", "SHARING_NOTE", "check_memory_name", "clean_text", "evidence_caption", "evidence_items",
           "format_answer", "format_status", "human_bytes", "latency_frame"]

#: Saved-memory names: a plain folder name inside the app's memory root (no paths, no "..").
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Control characters (random tiny models emit them) removed before text reaches the browser.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

#: What the UI says about sharing (one stream for everyone, one chat per browser).
SHARING_NOTE = ("The video source, its memory, the alerts and the commentary are shared by everyone using this "
                "app; your chat and its evidence are yours alone (one per browser tab; earlier questions from any "
                "chat are part of the model's context).")


class Chat:
    """One browser's chat over the shared stream: messages and the evidence of its latest answer."""

    def __init__(self, limit: int = 200) -> None:
        self._lock = threading.Lock()
        self._messages: list[dict] = []
        self._limit = int(limit)
        self.version = 0
        self._evidence: list[tuple[Any, str]] = []
        self._answer_evidence: list[Any] = []  # the Evidence behind each gallery item
        self._answer_source: tuple[str, Any] = ("", None)  # (source label, video file) of the latest answer
        self.evidence_version = 0

    def post(self, role: str, content: str) -> dict:
        msg = {"role": role, "content": content}
        with self._lock:
            self._messages.append(msg)
            del self._messages[:-self._limit]
            self.version += 1
        return msg

    def edit(self, msg: dict, content: str) -> None:
        with self._lock:
            msg["content"] = content
            self.version += 1

    def messages(self) -> list[dict]:
        """The chat as Gradio messages (copies)."""
        with self._lock:
            return [dict(m) for m in self._messages]

    def set_evidence(self, items: list[tuple[Any, str]]) -> None:
        with self._lock:
            self._evidence = list(items)
            self.evidence_version += 1

    def evidence(self) -> list[tuple[Any, str]]:
        with self._lock:
            return list(self._evidence)

    def set_answer(self, answer: Answer, source_label: str, video_path: Any = None) -> None:
        """Keep ``answer``'s evidence (de-duplicated) as this chat's gallery, with where it came from."""
        evs = _dedup(answer.evidence)
        items = evidence_items(answer, video_path)
        with self._lock:
            self._evidence = items
            self._answer_evidence = evs
            self._answer_source = (source_label, video_path)
            self.evidence_version += 1

    def evidence_at(self, index: int) -> tuple[Any, str, Any]:
        """``(Evidence, source label, video path)`` of gallery item ``index``; ValueError when out of range."""
        with self._lock:
            if not 0 <= int(index) < len(self._answer_evidence):
                raise ValueError("that evidence item is gone (a newer answer replaced it); click one shown now")
            return (self._answer_evidence[int(index)], *self._answer_source)


def clean_text(text: str) -> str:
    """Text safe to show: control characters removed."""
    return _CONTROL_RE.sub("", text or "")


def human_bytes(n: float | None) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def evidence_caption(start_s: float, end_s: float, score: float) -> str:
    """``"12.0-13.0s (0.83)"``."""
    return f"{start_s:.1f}-{end_s:.1f}s ({score:.2f})"


def _dedup(evidence):
    from vstream.app.view import dedup_evidence

    return dedup_evidence(evidence)


def evidence_items(answer: Answer | None, video_path: Any = None) -> list[tuple[Any, str]]:
    """Gallery items ``(PIL image, caption)``: the answer's evidence, each span once, in ``_dedup`` order.

    The picture is the item's thumbnail, else the frame of ``video_path`` at the item's time, else a grey card.
    """
    from PIL import Image

    from vstream.app.player import frame_at
    from vstream.app.view import evidence_label

    out = []
    for ev in _dedup(answer.evidence if answer is not None else []):
        img = None
        if ev.thumbnail:
            try:
                img = Image.open(io.BytesIO(ev.thumbnail)).convert("RGB")
            except Exception as e:  # a damaged thumbnail should not break the answer
                logger.warning("evidence thumbnail %.1f-%.1fs unreadable: %s", ev.start_s, ev.end_s, e)
        if img is None and video_path:
            img = frame_at(video_path, 0.5 * (ev.start_s + ev.end_s), max_side=320)
        if img is None:
            img = Image.new("RGB", (160, 90), (70, 70, 80))
        out.append((img, evidence_label(ev)))
    return out


def format_answer(ans: Answer) -> str:
    """The answer's chat text with its evidence (each span once, source and labelled score) and timing; a
    time range with nothing recorded in it is just that sentence (the model was not asked)."""
    from vstream.app.view import evidence_label
    from vstream.clock import NOTHING_RECORDED

    if ans.text == NOTHING_RECORDED and not ans.evidence and not ans.tokens:
        return NOTHING_RECORDED
    text = clean_text(ans.text).strip()
    if not text:
        text = (f"(no visible text: the model decoded {ans.tokens} tokens that print as nothing — "
                "random weights do that)" if ans.tokens else "(empty answer)")
    spans = "\n".join(f"- {evidence_label(e)}" for e in _dedup(ans.evidence))
    meta = f"asked at {ans.asked_at_s:.1f}s · first token {ans.ttft_s:.2f}s · {ans.tokens} tokens"
    if ans.cancelled:
        meta += " · cancelled"
    return f"{text}\n\n**Evidence** (click a picture below to see it large):\n{spans or '- none'}\n\n*{meta}*"


def check_memory_name(name: str) -> str:
    """Return ``name`` stripped if it is a valid saved-memory name, else raise ValueError."""
    name = (name or "").strip()
    if not name:
        raise ValueError("give the memory a name, e.g. lecture-1")
    if ".." in name or not _NAME_RE.match(name) or name.endswith(".partial"):
        raise ValueError(f"bad memory name {name!r}: use 1-64 letters, digits, '-', '_' or '.', "
                         "with no '/' and no '..'")
    return name


def _fmt_s(x: float | None, unit: str = "s", scale: float = 1.0, digits: int = 2) -> str:
    return "-" if x is None else f"{x * scale:.{digits}f} {unit}"


def format_status(st: dict) -> str:
    """The status panel as Markdown (a two-column table)."""
    s = st.get("stats")
    rows = [("model", f"{st['model']} on {st['device']}"), ("source", st["source"] or "none"),
            ("commentary", st["commentary"]), ("speech", st.get("speech", "off"))]
    if s is not None:
        mem = s.get("memory_bytes") or {}
        rows += [
            ("stream time", f"{s['stream_time_s']:.1f} s" + (" (ended)" if s.get("ended") else "")),
            ("frames kept / dropped", f"{s['frames_kept']} / {s['frames_dropped']} (in {s['frames_in']})"),
            ("chunks (dropped)", f"{s['chunks']} ({s.get('chunks_dropped', 0)})"),
            ("chunk latency last / p50 / p95",
             f"{_fmt_s(st.get('last_latency_s'), 'ms', 1e3, 0)} / {_fmt_s(s['chunk_latency_p50'], 'ms', 1e3, 0)}"
             f" / {_fmt_s(s['chunk_latency_p95'], 'ms', 1e3, 0)}"),
            ("time to first token p50 / p95",
             f"{_fmt_s(s['ttft_p50'], 'ms', 1e3, 0)} / {_fmt_s(s['ttft_p95'], 'ms', 1e3, 0)}"),
            ("decode speed", "-" if s.get("tokens_per_s") is None else f"{s['tokens_per_s']:.1f} tok/s"),
            ("context tokens", str(s.get("context_tokens", "-"))),
            ("memory device / RAM / disk",
             f"{human_bytes(mem.get('device'))} / {human_bytes(mem.get('ram'))} / {human_bytes(mem.get('disk'))}"),
            ("long-term entries", str(s.get("long_term_entries", 0))),
            ("questions pending / answered", f"{s.get('queries_pending', 0)} / {s.get('queries_answered', 0)}"),
        ]
        asr = s.get("asr")
        if asr:
            rtf = "-" if asr.get("rtf") is None else f"{asr['rtf']:.2f}"
            rows.append(("speech lines / waiting / real-time factor",
                         f"{asr.get('segments', 0)} / {asr.get('queue_s', 0):.0f} s / {rtf}"))
        if s.get("error"):
            rows.append(("error", clean_text(str(s["error"]))))
    wc = st.get("webcam")
    if wc:
        rows.append(("webcam frames pushed / dropped / ignored",
                     f"{wc['pushed']} / {wc['dropped']} / {wc['ignored']}"))
        if "audio_s" in wc:
            rows.append(("microphone audio received", f"{wc['audio_s']:.1f} s"))
    if st.get("alerts"):
        rows.append(("standing alerts", "; ".join(st["alerts"])))
    body = "\n".join(f"| {k} | {v.replace('|', '/')} |" for k, v in rows)
    return "| status | value |\n|---|---|\n" + body


def latency_frame(points: list[tuple[float, float]]):
    """A DataFrame for the latency plot: stream time (s) vs chunk latency (ms)."""
    import pandas as pd

    return pd.DataFrame({"stream time (s)": [p[0] for p in points],
                         "chunk latency (ms)": [p[1] for p in points]})
