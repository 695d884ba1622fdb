"""`vstream bench fleet`: many streams on one model, batched (Fleet) vs separate sessions in one process.

For each stream count N, the same N synthetic streams (``chunks`` chunks each, decoded as fast as they
come, not paced) are ingested twice on one loaded model:

- **batched**: one ``Fleet`` (a reader per stream, one perception thread ingesting the ready chunks of
  all streams together: one vision pass and one padded prefill per step);
- **separate**: N ``Session`` objects (``agent.watch`` in the background), each with its own perception
  thread, all running at once in the process.

Reported per N and mode: aggregate chunks/s (all streams' chunks / wall time from start until every
stream has ended), chunks per CPU-second of this process (all its threads; other processes on a shared
machine do not count), per-chunk latency p50 / p95 over all streams (the wall time of the step that
ingested the chunk), and memory per stream (active-context K/V bytes + long-term RAM tier, and the process
RSS growth divided by N). Each (N, mode) runs ``repeats`` times, the modes alternating, and the median run
(by chunks/s) is reported. The headline is the ratio batched / separate of aggregate chunks/s.
"""
from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import psutil

from vstream.bench.common import environment, new_figure, save_png, write_json

logger = logging.getLogger(__name__)

DEFAULT_STREAMS = (1, 2, 4, 8, 16)


def _source(i: int, chunks: int, size: int):
    from vstream.sources import SyntheticSource

    return SyntheticSource(seed=100 + i, duration_s=float(chunks), fps=4.0, size=(size, size), n_shapes=2)


def _cpu_s() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def _pct(xs: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(xs, float), q)) if len(xs) else None


def _run_batched(agent, n: int, chunks: int, size: int, max_batch: int) -> dict[str, Any]:
    from vstream.fleet.core import Fleet

    rss0 = psutil.Process().memory_info().rss
    t0, c0 = time.perf_counter(), _cpu_s()
    with Fleet(agent, max_batch=max_batch) as fleet:
        for i in range(n):
            fleet.add(f"s{i}", _source(i, chunks, size), realtime=False)
        for i in range(n):  # waits on each stream's condition (no polling that would take CPU from perception)
            fleet.stream(f"s{i}").wait_chunks(chunks)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
        st = fleet.stats()
        lat = [r.latency_s for sid in fleet.streams for r in fleet.stream(sid).reports]
        rss = psutil.Process().memory_info().rss - rss0
    per = st["streams"].values()
    total = sum(v["chunks"] for v in per)
    return {"mode": "batched", "streams": n, "chunks": total, "wall_s": wall, "chunks_per_s": total / wall,
            "cpu_s": cpu, "chunks_per_cpu_s": total / cpu,
            "latency_p50_s": _pct(lat, 50), "latency_p95_s": _pct(lat, 95),
            "mean_batch": st["total"]["mean_batch"],
            "kv_bytes_per_stream": float(np.mean([v["memory_bytes"]["device"] + v["memory_bytes"]["ram"] for v in per])),
            "rss_growth_per_stream": rss / n}


def _run_separate(agent, n: int, chunks: int, size: int) -> dict[str, Any]:
    rss0 = psutil.Process().memory_info().rss
    t0, c0 = time.perf_counter(), _cpu_s()
    sessions = [agent.watch(_source(i, chunks, size), background=True, realtime=False) for i in range(n)]
    try:
        for s in sessions:
            s.run_to_end()
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
        stats = [s.stats() for s in sessions]
        lat = [r.latency_s for s in sessions for r in s.reports]
        rss = psutil.Process().memory_info().rss - rss0
    finally:
        for s in sessions:
            s.close()
    total = sum(v["chunks"] for v in stats)
    return {"mode": "separate", "streams": n, "chunks": total, "wall_s": wall, "chunks_per_s": total / wall,
            "cpu_s": cpu, "chunks_per_cpu_s": total / cpu,
            "latency_p50_s": _pct(lat, 50), "latency_p95_s": _pct(lat, 95), "mean_batch": 1.0,
            "kv_bytes_per_stream": float(np.mean([v["memory_bytes"]["device"] + v["memory_bytes"]["ram"] for v in stats])),
            "rss_growth_per_stream": rss / n}


def bench_fleet(streams: Sequence[int] = DEFAULT_STREAMS, model: str = "small-llava-onevision", chunks: int = 24,
                window: int = 8, size: int = 64, max_batch: int = 16, device: str = "auto",
                repeats: int = 3) -> dict[str, Any]:
    """Aggregate chunks/s, latency and memory per stream, batched vs separate, for each stream count."""
    from vstream.api import Agent

    if not streams or min(streams) < 1:
        raise ValueError(f"streams must be counts >= 1, got {streams!r}")
    if chunks < 2:
        raise ValueError("chunks must be >= 2 per stream")
    agent = Agent.from_pretrained(model, device=device, **{"memory.window_chunks": window})
    _run_batched(agent, 2, 3, size, max_batch)  # warm-up: first calls allocate and initialise kernels
    _run_separate(agent, 2, 3, size)
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    rows, runs = [], []
    for n in streams:
        got: dict[str, list[dict]] = {"separate": [], "batched": []}
        for _ in range(repeats):
            for run in (_run_separate, _run_batched):
                gc.collect()
                row = run(agent, n, chunks, size, max_batch) if run is _run_batched else run(agent, n, chunks, size)
                logger.info("fleet bench %s x%d: %.1f chunks/s", row["mode"], n, row["chunks_per_s"])
                got[row["mode"]].append(row)
                runs.append(row)
        for mode in ("separate", "batched"):
            ordered = sorted(got[mode], key=lambda r: r["chunks_per_s"])
            rows.append({**ordered[len(ordered) // 2], "runs_chunks_per_s": [r["chunks_per_s"] for r in got[mode]]})
    summary = {}
    for n in streams:
        b = next(r for r in rows if r["streams"] == n and r["mode"] == "batched")
        s = next(r for r in rows if r["streams"] == n and r["mode"] == "separate")
        summary[str(n)] = {"batched_chunks_per_s": b["chunks_per_s"], "separate_chunks_per_s": s["chunks_per_s"],
                           "speedup": b["chunks_per_s"] / s["chunks_per_s"],
                           "speedup_per_cpu_s": b["chunks_per_cpu_s"] / s["chunks_per_cpu_s"]}
    return {"bench": "fleet", "model": model, "chunks_per_stream": chunks, "window": window, "frame_size": size,
            "max_batch": max_batch, "repeats": repeats, "env": environment(), "rows": rows, "all_runs": runs,
            "summary": summary}


def plot_fleet(result: dict[str, Any], path: Path) -> None:
    """Aggregate chunks/s and per-chunk latency against the stream count, batched and separate."""
    fig, (ax1, ax2) = new_figure(1, 2, figsize=(12, 4.5))
    for mode, style in (("batched", "o-"), ("separate", "s--")):
        rs = [r for r in result["rows"] if r["mode"] == mode]
        ns = [r["streams"] for r in rs]
        ax1.plot(ns, [r["chunks_per_s"] for r in rs], style, label=mode)
        ax2.plot(ns, [r["latency_p50_s"] for r in rs], style, label=f"{mode} p50")
        ax2.plot(ns, [r["latency_p95_s"] for r in rs], style, alpha=0.5, label=f"{mode} p95")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("streams on one model")
        ax.legend()
    ax1.set_ylabel("aggregate chunks / s")
    ax1.set_title(f"{result['model']} ({result['env']['device']})")
    ax2.set_ylabel("per-chunk latency (s)")
    save_png(fig, path)


def run(args) -> dict[str, Any]:
    """``vstream bench fleet``: run, write fleet.json and fleet.png under ``--out``; returns what to print."""
    res = bench_fleet(tuple(int(x) for x in args.streams.split(",") if x), args.model, args.chunks, args.window,
                      args.size, args.max_batch, args.device, args.repeats)
    out = Path(args.out)
    p = write_json(res, out, "fleet")
    plot_fleet(res, out / "fleet.png")
    return {"json": str(p), "png": str(out / "fleet.png"), "summary": res["summary"]}
