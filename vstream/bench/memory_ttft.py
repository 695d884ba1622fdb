"""Time to first token with 0 vs N long-term entries stored (part of `vstream bench memory`).

The N entries are real-shaped: copies of chunks the engine ingested (their K/V, positions, summaries
perturbed per entry), written through the real store and index, so the measurement covers the FAISS
search, loading K/V from the RAM/disk tiers, the assembly and the longer prefill.
"""
from __future__ import annotations

import logging
import statistics
import tempfile
import time
from typing import Any

import torch

from vstream.bench.common import random_chunks

logger = logging.getLogger(__name__)


def _ttft(engine, question: str, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        snap = engine.snapshot()
        t0 = time.perf_counter()
        ans = engine.answer(question, snap, max_new_tokens=1)
        out.append(ans.ttft_s if ans.tokens else time.perf_counter() - t0)
    return out


def bench_ttft_entries(model: str = "small-llava-onevision", n_entries: int = 10_000, device: str = "auto",
                       window: int = 8, repeats: int = 7, progress: bool = True, *, size: int | None = None,
                       frames: int = 2, chunk_seconds: float = 1.0, ram_bytes: int = 256 << 20,
                       quantize: str = "none", add_budget_s: float | None = None) -> dict[str, Any]:
    """Median TTFT of a question with an empty long-term store and with ``n_entries`` stored.

    ``size``: frame side of the ingested chunks (default: the adapter's); ``ram_bytes``: the RAM tier's
    budget (entries beyond it live on disk only); ``quantize``: the cold tier's codec. ``add_budget_s``
    stops storing entries after that many seconds (the summary says how many were stored).
    """
    if n_entries < 0 or frames < 1 or not chunk_seconds > 0:
        raise ValueError(f"need n_entries >= 0, frames >= 1, chunk_seconds > 0; got {n_entries}, {frames}, "
                         f"{chunk_seconds}")
    from tqdm import tqdm

    from memory.segment import Segment
    from vstream.config import from_name
    from vstream.engine.core import Engine
    from vstream.engine.longterm import open_long_term
    from vstream.models.registry import load_model

    adapter = load_model(model, device=device)
    cfg = from_name("default").replace(**{"memory.window_chunks": window, "memory.retrieve_k": 4,
                                          "memory.ram_bytes": int(ram_bytes), "memory.quantize": quantize})
    side = int(size or getattr(adapter, "frame_size", None) or 64)
    question = "What happened at the start of the stream?"
    with tempfile.TemporaryDirectory(prefix="vstream-bench-") as tmp:
        lt = open_long_term(adapter, cfg.memory, tmp)
        eng = Engine(adapter, cfg, lt)
        eng.start()
        for ch in random_chunks(window, frames, side, chunk_seconds=chunk_seconds):
            eng.ingest(ch)
        assert len(lt) == 0
        _ttft(eng, question, 2)  # warm-up
        empty = _ttft(eng, question, repeats)
        templates = [s for s in eng.memory.live if s.kind == "vision"]
        g = torch.Generator().manual_seed(0)
        t_add = time.perf_counter()
        stored = 0
        for i in tqdm(range(n_entries), desc="storing entries", disable=None if progress else True, leave=False):
            if add_budget_s is not None and time.perf_counter() - t_add > add_budget_s:
                logger.warning("stored %d of %d entries in the %.0f s budget", i, n_entries, add_budget_s)
                break
            src = templates[i % len(templates)]
            summ = src.key_summary + 0.05 * torch.randn(src.key_summary.shape, generator=g)
            seg = Segment(kind="vision", keys=src.keys, values=src.values, rel_pos=src.rel_pos,
                          start_s=-1e6 + i * chunk_seconds, end_s=-1e6 + (i + 1) * chunk_seconds, text=f"entry {i}",
                          key_summary=summ, thumbnail=src.thumbnail, chunk_index=-1)
            lt.on_evict(seg)
            stored += 1
        add_s = time.perf_counter() - t_add
        _ttft(eng, question, 2)
        full = _ttft(eng, question, repeats)
        stats = {"ram_bytes": lt.ram_bytes(), "disk_bytes": lt.disk_bytes(), "entries": len(lt)}
        lt.close()
    m0, m1 = statistics.median(empty), statistics.median(full)
    return {"model": model, "window": window, "retrieve_k": cfg.memory.retrieve_k, "frame_size": side,
            "frames_per_chunk": frames, "chunk_seconds": chunk_seconds, "quantize": quantize,
            "tokens_per_entry": int(templates[0].keys[0].shape[-2]) if templates else None,
            "ttft_empty_s": empty, "ttft_full_s": full, "store": stats, "add_seconds": add_s,
            "summary": {"entries": stored, "entries_asked": n_entries, "ttft_median_empty_s": m0,
                        "ttft_median_full_s": m1, "ratio": m1 / m0 if m0 > 0 else None,
                        "adds_per_s": stored / add_s if add_s > 0 else None,
                        "memory_hours": stored * chunk_seconds / 3600.0,
                        "ram_tier_over_disk": stats["ram_bytes"] / max(1, stats["disk_bytes"])}}  # the rest: disk only
