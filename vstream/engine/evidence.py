"""What an answer shows as its evidence: window chunks and speech that match the question, with both times.

Long-term evidence is built where entries are retrieved (``Engine.answer``); this module scores the live
window (key-space cosine, the internal retriever's score) and recent speech (MiniLM cosine), and maps a
Segment or EntryInfo to its source name and wall-clock fields.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch

from memory.index import pool_layers
from memory.longterm import wall_overlaps
from memory.segment import VISION, Segment
from vstream.types import Evidence

logger = logging.getLogger(__name__)


def evidence_source(seg) -> str:
    """"vision" (a chunk), "speech" (recognised audio) or "text", for a Segment or an EntryInfo."""
    return "vision" if seg.kind == VISION else ("speech" if seg.source == "speech" else "text")


def wall_fields(seg) -> dict:
    """The wall-clock fields of a Segment or EntryInfo for Evidence ({} without wall time)."""
    w = getattr(seg, "wall_s", None)
    if w is None or w != w:  # None or NaN
        return {}
    return {"wall_s": float(w), "wall_end_s": getattr(seg, "wall_end_s", None), "tz": getattr(seg, "tz", "") or ""}


def wall_at(ref: tuple[float, float, str] | None, start_s: float | None, end_s: float | None) -> dict:
    """``wall_s``/``wall_end_s``/``tz`` of stream times ``[start_s, end_s]`` from a clock reference ``ref`` =
    (stream s, wall s, tz) of a chunk start ({} without a reference)."""
    if ref is None or start_s is None:
        return {}
    t0, w0, tz = ref
    end = start_s if end_s is None else end_s
    return {"wall_s": w0 + (start_s - t0), "wall_end_s": w0 + (end - t0), "tz": tz}


def recorded_in(live: Sequence[Segment], long_term, wall_range: tuple[float, float] | None) -> int:
    """Live chunks (and tagged text) plus stored entries whose wall-clock span overlaps ``wall_range``: what
    a time-range question can be answered from (no model call)."""
    n = sum(1 for s in live if (s.kind == VISION or s.source) and wall_overlaps(s, wall_range))
    return n + (long_term.count_in_range(wall_range) if long_term is not None else 0)


def long_term_evidence(retrieved) -> list[Evidence]:
    """Evidence of the retrieved long-term entries (``memory.types.Retrieved``), in their order."""
    return [Evidence(start_s=r.segment.start_s, end_s=r.segment.end_s, score=float(r.score), tier="long_term",
                     entry_id=r.entry_id, thumbnail=r.segment.thumbnail, source=evidence_source(r.segment),
                     text=r.segment.text, **wall_fields(r.segment)) for r in retrieved]


def window_evidence(live_vision: Sequence[Segment], qmeans: torch.Tensor | None, top: int = 3) -> list[Evidence]:
    """The window chunks most similar to the question (same key-space score as the internal retriever)."""
    scored = []
    q = pool_layers(qmeans.numpy()) if qmeans is not None else None
    for s in live_vision:
        # the internal retriever's score (mean per-layer cosine): comparable with long-term evidence
        score = float(pool_layers(s.key_summary.numpy()) @ q) if (q is not None and s.key_summary is not None) \
            else 0.0
        scored.append((score, s))
    scored.sort(key=lambda x: -x[0])
    return [Evidence(start_s=s.start_s, end_s=s.end_s, score=sc, tier="window", thumbnail=s.thumbnail,
                     text=s.text, **wall_fields(s)) for sc, s in scored[:top]]


def speech_evidence(embedder, question: str, speech: Sequence[Segment], top: int = 2) -> list[Evidence]:
    """Speech in the text window that the question matches (MiniLM cosine), when a text embedder exists."""
    if not speech or embedder is None:
        return []
    v = embedder.encode([question] + [s.text for s in speech])  # [1 + N, dim], unit rows
    scores = v[1:] @ v[0]
    best = sorted(zip(scores.tolist(), speech), key=lambda x: -x[0])[:top]
    return [Evidence(start_s=s.start_s, end_s=s.end_s, score=float(sc), tier="window", source="speech",
                     thumbnail=s.thumbnail, text=s.text, **wall_fields(s)) for sc, s in best]
