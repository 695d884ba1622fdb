"""Scoring one stream's memory against a question without decoding (``Fleet.ask_all``).

Scores must compare across streams, so every candidate of a stream — its long-term entries and the
chunks still in its window — is scored by one function: the cosine of text embeddings (entry text =
time marker + OCR + commentary) when the stream keeps a text retriever, else the internal retriever's
mean per-layer cosine between the question's query vectors and the chunk's key summary.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from memory.longterm import wall_overlaps
from memory.segment import VISION
from vstream.engine.evidence import evidence_source, wall_fields, window_evidence
from vstream.types import Evidence

logger = logging.getLogger(__name__)


def stream_evidence(engine, question: str, k: int, wall_range: tuple[float, float] | None = None) -> list[Evidence]:
    """Up to ``k`` pieces of evidence of one stream for ``question``, best first (window and long-term).

    ``wall_range`` (UTC epoch seconds, half-open): only what was recorded in it (none at all: [], no model
    call)."""
    snap = engine.snapshot()
    lt = engine.long_term
    live = [s for s in snap.live if s.kind == VISION and wall_overlaps(s, wall_range)]
    if wall_range is not None and not live and (lt is None or lt.count_in_range(wall_range) == 0):
        return []
    index = lt.index if lt is not None else None
    n = k if wall_range is None or lt is None else max(k, len(lt))  # a range: search them all, keep those in it
    out: list[Evidence] = []
    if index is not None and index.use_text and index.embedder is not None:
        q = index.embedder.encode([question])[0]  # [dim], unit norm
        if len(lt) and index.text is not None:
            ids, scores = index.text.search(q, n)
            out += [e for e in (_long_term(lt, int(i), float(sc), wall_range) for i, sc in zip(ids, scores)) if e]
        texts = [s.text for s in live]
        if texts:
            vecs = index.embedder.encode(texts)  # [n, dim], unit norm
            out += [Evidence(start_s=s.start_s, end_s=s.end_s, score=float(v @ q), tier="window",
                             thumbnail=s.thumbnail, text=s.text, **wall_fields(s)) for s, v in zip(live, vecs)]
    else:
        a = engine.adapter
        with torch.inference_mode():
            qmeans = engine._query_means(a.embed_text(a.question_text(question)), snap)  # [L, H_kv*D]
        if index is not None and len(lt) and index.use_internal:
            out += [e for e in (_long_term(lt, i, sc, wall_range) for i, sc in index.search(query_means=qmeans, k=n))
                    if e]
        out += window_evidence(live, qmeans, top=k)
    out = [e for e in out if np.isfinite(e.score)]
    out.sort(key=lambda e: -e.score)
    return out[:k]


def _long_term(lt, entry_id: int, score: float, wall_range: tuple[float, float] | None = None) -> Evidence | None:
    try:
        info = lt.store.info(entry_id)
    except KeyError:  # deleted by retention since the search
        return None
    if not wall_overlaps(info, wall_range):
        return None
    return Evidence(start_s=info.start_s, end_s=info.end_s, score=float(score), tier="long_term",
                    entry_id=entry_id, thumbnail=info.thumbnail, text=info.text,
                    source=evidence_source(info), **wall_fields(info))
