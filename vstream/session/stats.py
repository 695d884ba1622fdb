"""The statistics every watched stream reports (``Session.stats`` and ``FleetStream.stats`` add their own)."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np


def percentile(xs, q: float) -> float | None:
    """The ``q``-th percentile of ``xs`` (None when empty)."""
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if len(xs) else None


def stream_stats(engine, pipeline, responder, long_term, reports: Iterable) -> dict[str, Any]:
    """Frames in / kept / dropped, chunk latencies, TTFTs, tokens/s, context and memory bytes per tier,
    answered / rejected questions: from a stream's engine, pipeline, responder, long-term memory (or None)
    and chunk reports."""
    lat = [r.latency_s for r in list(reports)]  # copy: perception appends concurrently
    eng, pipe, resp, lt = engine, pipeline, responder, long_term
    return {
        "stream_time_s": eng.stream_time_s,
        **pipe.frame_counts(),  # frames_in, frames_decoded, frames_converted, frames_kept, frames_dropped
        "chunks": eng.chunks_ingested,
        "chunks_dropped": pipe.chunks_dropped,
        "stage_s": pipe.stage_seconds(),  # busy seconds: decode, convert, preprocess, model
        "chunk_latency_p50": percentile(lat, 50),
        "chunk_latency_p95": percentile(lat, 95),
        "chunk_latency_p99": percentile(lat, 99),
        "ttft_p50": percentile(resp.ttfts, 50),
        "ttft_p95": percentile(resp.ttfts, 95),
        "tokens_per_s": resp.tokens_per_s,
        "context_tokens": eng.context_tokens,
        "visual_tokens_kept": eng.visual_tokens_kept,
        "visual_tokens_dropped": eng.visual_tokens_dropped,
        "queries_pending": resp.pending,
        "queries_answered": resp.answered,
        "queries_rejected": resp.rejected,
        "memory_bytes": {"device": eng.device_bytes(), "ram": lt.ram_bytes() if lt else 0,
                         "disk": lt.disk_bytes() if lt else 0},
        "long_term_entries": len(lt) if lt else 0,
    }
