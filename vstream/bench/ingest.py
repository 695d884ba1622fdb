"""`vstream bench ingest`: per-chunk latency and process memory against stream position for (a) this
engine (bounded window), (b) full attention (nothing evicted) and (c) a sliding window recomputed from
scratch each chunk (the sinks stay cached; the window is re-prefilled in one call).
"""
from __future__ import annotations

import collections
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from vstream.bench.common import (PhaseClock, device_mem, environment, median_or_none, new_figure, random_chunks,
                                  save_png, sync, timed_methods)

logger = logging.getLogger(__name__)


def _window_median(rows: list[dict], mode: str, center: int, half: int = 10) -> float | None:
    xs = [r["latency_s"] for r in rows if r["mode"] == mode and abs(r["chunk"] - center) <= half]
    return median_or_none(xs)


def bench_ingest(model: str = "small-llava-onevision", chunks: int = 1000, window: int = 16, frames: int = 2,
                 size: int | None = None, modes=("engine", "full", "recompute"), device: str = "auto",
                 full_max_chunks: int | None = None, recompute_chunks: int | None = 200,
                 progress: bool = True) -> dict[str, Any]:
    """Per-chunk latency and memory against stream position for the three strategies.

    The steady state starts once the window is full: ``chunks`` (and ``recompute_chunks`` for the recompute
    baseline) must exceed ``window``; checked before the model loads.
    """
    from tqdm import tqdm

    if window < 1:
        raise ValueError(f"--window must be >= 1, got {window}")
    if chunks <= window:
        raise ValueError(f"--chunks {chunks} is not above --window {window}: the steady state starts once the "
                         f"window is full; use e.g. --chunks {max(2 * window, window + 10)}")
    if "recompute" in modes and recompute_chunks and recompute_chunks <= window:
        raise ValueError(f"--recompute-chunks {recompute_chunks} is not above --window {window}; use e.g. "
                         f"--recompute-chunks {window + 10}")

    from vstream.config import from_name
    from vstream.engine.core import Engine
    from memory.manager import fill_cache
    from vstream.models.registry import load_model

    adapter = load_model(model, device=device)
    side = size or int(getattr(adapter, "frame_size", None) or 64)
    rows: list[dict] = []
    for mode in modes:
        n = chunks if mode != "full" or not full_max_chunks else min(chunks, full_max_chunks)
        cfg = from_name("default").replace(**{"memory.window_chunks": window if mode != "full" else 10 ** 9,
                                              "memory.long_term": False})
        eng = Engine(adapter, cfg)
        eng.start()
        recent: collections.deque = collections.deque(maxlen=window)
        sink_tokens = adapter.embed_text(adapter.system_text(cfg.system_prompt))
        sinks = eng.snapshot()
        sink_kv = (sinks.keys, sinks.values)
        if mode == "recompute" and recompute_chunks:
            n = min(n, recompute_chunks)
        it = random_chunks(n, frames, side)
        bar = tqdm(it, total=n, desc=f"bench ingest [{mode}]", disable=None if progress else True, leave=False)
        for ch in bar:
            try:
                sync()
                t0 = time.perf_counter()
                if mode == "recompute":
                    # the baseline at its best: the sinks stay cached, the window is re-prefilled in one call
                    with torch.inference_mode():
                        recent.append(adapter.embed_chunk(ch.marker, ch.frames))
                        cache = fill_cache(adapter.new_cache(), *sink_kv)
                        embeds = torch.cat([t.inputs_embeds for t in recent], dim=1)  # [1, W*S, D]
                        rel, off = [], 0
                        for t in recent:
                            rel.append(t.rel_pos + off)
                            off += t.span
                        adapter.forward(embeds, adapter.position_ids(torch.cat(rel, dim=1), sink_tokens.span),
                                        cache, logits="none")
                    ctx = cache.get_seq_length()
                else:
                    rep = eng.ingest(ch)
                    ctx = rep.context_tokens
                sync()
                dt = time.perf_counter() - t0
            except torch.OutOfMemoryError:
                logger.warning("%s ran out of device memory at chunk %d", mode, ch.index)
                rows.append({"mode": mode, "chunk": ch.index, "latency_s": None, "oom": True})
                break
            rows.append({"mode": mode, "chunk": ch.index, "latency_s": dt, "context_tokens": ctx,
                         "rss_bytes": psutil.Process().memory_info().rss, "device_bytes": device_mem()})
        del eng
    summary: dict[str, Any] = {}
    early = 50
    for mode in modes:
        last = max(r["chunk"] for r in rows if r["mode"] == mode)
        late = max(early, last - 10)
        e, l_ = _window_median(rows, mode, early), _window_median(rows, mode, late)
        summary[mode] = {"latency_at_50_s": e, "late_chunk": late, "latency_late_s": l_,
                         "late_over_early": (l_ / e) if (e and l_) else None}
    if "engine" in modes and "recompute" in modes:
        eng_med = statistics.median([r["latency_s"] for r in rows if r["mode"] == "engine" and r["chunk"] >= window])
        rec_med = statistics.median([r["latency_s"] for r in rows if r["mode"] == "recompute" and r["chunk"] >= window])
        summary["recompute_over_engine"] = rec_med / eng_med
    return {"bench": "ingest", "model": model, "chunks": chunks, "window": window, "frames_per_chunk": frames,
            "frame_size": side, "env": environment(), "summary": summary, "rows": rows}


def measure_ingest_split(adapter, config, chunks, progress: bool = True) -> dict[str, Any]:
    """Pure ingest (no commentary) on one engine: frames per second, then the per-chunk time split.

    Pass 1 times the whole stream (one synchronize per chunk): ingest FPS = frames / wall seconds. Pass 2,
    on a fresh engine, times the phases of each chunk: ``vision`` (``embed_chunk``: preprocessing and the
    vision tower), ``prefill`` (the LLM forward over the chunk) and ``bookkeeping`` (the rest: K/V extraction,
    eviction, re-rotation, thumbnail, long-term store), with CUDA events on a GPU. The first two chunks of
    each pass warm up and are not counted.
    """
    from tqdm import tqdm

    from vstream.engine.core import Engine

    if len(chunks) < 3:
        raise ValueError(f"need at least 3 chunks (2 warm up), got {len(chunks)}")
    eng = Engine(adapter, config)
    eng.start()
    for ch in chunks[:2]:
        eng.ingest(ch)
    sync()
    t0 = time.perf_counter()
    lat = []
    for ch in tqdm(chunks[2:], desc="ingest fps", disable=None if progress else True, leave=False):
        t1 = time.perf_counter()
        eng.ingest(ch)
        sync()
        lat.append(time.perf_counter() - t1)
    wall = time.perf_counter() - t0
    frames = sum(len(ch) for ch in chunks[2:])
    del eng
    clock = PhaseClock(adapter.device)
    eng = Engine(adapter, config)
    eng.start()
    rows: list[dict[str, Any]] = []
    with timed_methods(adapter, clock, {"embed_chunk": "vision", "forward": "prefill"}):
        for ch in tqdm(chunks, desc="ingest split", disable=None if progress else True, leave=False):
            sync()
            t1 = time.perf_counter()
            rep = eng.ingest(ch)
            phases = clock.collect()  # synchronises
            total = time.perf_counter() - t1
            vis, pre = phases.get("vision", 0.0), phases.get("prefill", 0.0)
            rows.append({"chunk": ch.index, "frames": len(ch), "tokens": rep.n_tokens, "total_s": total,
                         "vision_s": vis, "prefill_s": pre, "bookkeeping_s": max(0.0, total - vis - pre),
                         "evicted": rep.evicted, "context_tokens": rep.context_tokens, "device_bytes": device_mem()})
    del eng
    steady = rows[2:]
    split = {k: median_or_none([r[k] for r in steady]) for k in ("total_s", "vision_s", "prefill_s", "bookkeeping_s")}
    return {"rows": rows, "summary": {
        "chunks_timed": len(lat), "frames": frames, "wall_s": wall, "ingest_fps": frames / wall if wall > 0 else None,
        "chunk_s_p50": median_or_none(lat), "tokens_per_chunk": rows[-1]["tokens"],
        **{f"split_{k}_p50": v for k, v in split.items()},
        "split_shares": {k: (split[f"{k}_s"] / split["total_s"]) if split["total_s"] else None
                         for k in ("vision", "prefill", "bookkeeping")}}}


def plot_ingest(result: dict[str, Any], path: Path) -> None:
    """Latency (moving mean) and RSS growth against stream position, one line per mode (PNG)."""
    fig, (ax1, ax2) = new_figure(1, 2, figsize=(12, 4.5))
    labels = {"engine": f"vstream (W={result['window']})", "full": "full attention",
              "recompute": f"sliding window + recompute (W={result['window']})"}
    for mode in ("engine", "full", "recompute"):
        rs = [r for r in result["rows"] if r["mode"] == mode and r.get("latency_s") is not None]
        if not rs:
            continue
        x = np.array([r["chunk"] for r in rs])
        y = np.array([r["latency_s"] for r in rs]) * 1000
        k = max(1, len(y) // 100)
        ys = np.convolve(y, np.ones(k) / k, mode="same") if k > 1 else y
        ax1.plot(x, ys, label=labels[mode])
        rss = np.array([r["rss_bytes"] for r in rs], dtype=float)
        ax2.plot(x, (rss - rss[0]) / 2 ** 20, label=labels[mode])  # growth: modes share one process
    ax1.set_xlabel("stream position (chunk)")
    ax1.set_ylabel("per-chunk latency (ms, moving mean)")
    ax1.set_title(f"ingest latency — {result['model']} on {result['env']['device']}")
    ax1.legend()
    ax2.set_xlabel("stream position (chunk)")
    ax2.set_ylabel("process RSS growth since the mode started (MiB)")
    ax2.set_title("memory")
    ax2.legend()
    save_png(fig, path)
