"""`vstream bench ...`: efficiency benchmarks written as JSON + PNG (never asserted in tests).

ingest   per-chunk latency and process memory vs stream position for (a) this engine (bounded window),
         (b) full attention (nothing evicted) and (c) a sliding window recomputed from scratch each chunk.
memory   FAISS search latency, KV bytes per hour, time to first token with 0 vs N stored entries.
realtime highest frame rate sustained with commentary on; TTFT mid-stream vs on an idle session.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

logger = logging.getLogger(__name__)


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Where a benchmark ran."""
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"device": dev, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "commit": _git_commit(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _device_mem() -> int:
    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


def random_chunks(n: int, frames: int, size: int, seed: int = 0, chunk_seconds: float = 1.0):
    """Yield ``n`` chunks of random frames (no decoding cost in the measurement)."""
    from vstream.sources import Chunk

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(8, size, size, 3), dtype=np.uint8)
    for i in range(n):
        fr = np.roll(base[i % 8: i % 8 + 1].repeat(frames, 0), i, axis=1)  # [F, H, W, 3]
        ts = [i * chunk_seconds + j * chunk_seconds / frames for j in range(frames)]
        yield Chunk(index=i, start_s=i * chunk_seconds, end_s=(i + 1) * chunk_seconds, frames=fr, timestamps=ts)


def _window_median(rows: list[dict], mode: str, center: int, half: int = 10) -> float | None:
    xs = [r["latency_s"] for r in rows if r["mode"] == mode and abs(r["chunk"] - center) <= half]
    return statistics.median(xs) if xs else None


def bench_ingest(model: str = "small-llava-onevision", chunks: int = 1000, window: int = 16, frames: int = 2,
                 size: int | None = None, modes=("engine", "full", "recompute"), device: str = "auto",
                 full_max_chunks: int | None = None, recompute_chunks: int | None = 200,
                 progress: bool = True) -> dict[str, Any]:
    """Per-chunk latency and memory against stream position for the three strategies."""
    from tqdm import tqdm

    from vstream.config import from_name
    from vstream.engine import Engine
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
                _sync()
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
                _sync()
                dt = time.perf_counter() - t0
            except torch.OutOfMemoryError:
                logger.warning("%s ran out of device memory at chunk %d", mode, ch.index)
                rows.append({"mode": mode, "chunk": ch.index, "latency_s": None, "oom": True})
                break
            rows.append({"mode": mode, "chunk": ch.index, "latency_s": dt, "context_tokens": ctx,
                         "rss_bytes": psutil.Process().memory_info().rss, "device_bytes": _device_mem()})
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


def plot_ingest(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write(result: dict[str, Any], out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    p = out / f"{name}.json"
    p.write_text(json.dumps(result, indent=1))
    return p


def add_parser(sub) -> None:
    b = sub.add_parser("bench", help="efficiency benchmarks -> JSON + PNG")
    bs = b.add_subparsers(dest="bench", required=True)
    i = bs.add_parser("ingest", help="per-chunk latency/memory: engine vs full attention vs recompute")
    i.add_argument("--model", default="small-llava-onevision")
    i.add_argument("--chunks", type=int, default=1000)
    i.add_argument("--recompute-chunks", type=int, default=200,
                   help="chunks for the recompute baseline (its per-chunk cost is flat once the window is full)")
    i.add_argument("--window", type=int, default=16)
    i.add_argument("--frames", type=int, default=2, help="frames per chunk")
    i.add_argument("--size", type=int, default=None, help="frame side in pixels (default: the model's)")
    i.add_argument("--modes", default="engine,full,recompute")
    i.add_argument("--full-max-chunks", type=int, default=None, help="stop full attention early (it grows)")
    i.add_argument("--device", default="auto")
    i.add_argument("--out", default="bench_out")
    i.set_defaults(func=_cli_ingest)
    m = bs.add_parser("memory", help="FAISS latency, KV bytes per hour, TTFT with 0 vs N stored entries")
    m.add_argument("--model", default="small-llava-onevision", help="model for the TTFT comparison")
    m.add_argument("--sizes", default="10000,100000", help="index sizes; add 1000000 for the 1M figure (slow build)")
    m.add_argument("--entries", type=int, default=10_000, help="stored entries for the TTFT comparison")
    m.add_argument("--device", default="auto")
    m.add_argument("--out", default="bench_out")
    m.set_defaults(func=_cli_memory)
    r = bs.add_parser("realtime", help="sustained FPS with commentary; TTFT mid-stream vs idle")
    r.add_argument("--models", default="tiny-qwen2.5-vl,tiny-llava-onevision,tiny-smolvlm")
    r.add_argument("--chunks", type=int, default=60)
    r.add_argument("--fps", type=float, default=2.0)
    r.add_argument("--commentary-tokens", type=int, default=20)
    r.add_argument("--max-visual-tokens", type=int, default=None, help="cap visual tokens per chunk (frame size)")
    r.add_argument("--device", default="auto")
    r.add_argument("--out", default="bench_out")
    r.set_defaults(func=_cli_realtime)
    from vstream.bench_fleet import add_parser as add_fleet_parser

    add_fleet_parser(bs)
    from vstream.bench_serve import add_parser as add_serve_parser

    add_serve_parser(bs)


def run_cli(args: argparse.Namespace) -> int:
    return int(args.func(args) or 0)


def _cli_ingest(args) -> int:
    res = bench_ingest(args.model, args.chunks, args.window, args.frames, args.size,
                       tuple(m for m in args.modes.split(",") if m), args.device, args.full_max_chunks,
                       args.recompute_chunks)
    out = Path(args.out)
    p = _write(res, out, "ingest")
    plot_ingest(res, out / "ingest.png")
    print(json.dumps({"json": str(p), "png": str(out / "ingest.png"), "summary": res["summary"]}, indent=1))
    return 0


def _cli_memory(args) -> int:
    from vstream.bench_memory_ttft import bench_ttft_entries

    res: dict[str, Any] = {"bench": "memory", "env": environment()}
    try:
        from eval import bench_memory
    except ImportError as e:
        raise RuntimeError(f"eval.bench_memory is missing ({e}); reinstall vstream") from None
    sizes = tuple(int(s) for s in args.sizes.split(",") if s)
    res["faiss"] = bench_memory.faiss_latency(sizes=sizes)
    res["kv_bytes_per_hour"] = bench_memory.kv_table()
    res["ttft"] = bench_ttft_entries(args.model, n_entries=args.entries, device=args.device)
    out = Path(args.out)
    p = _write(res, out, "memory")
    print(json.dumps({"json": str(p), "ttft": res["ttft"]["summary"]}, indent=1))
    return 0


def _cli_realtime(args) -> int:
    from vstream.bench_realtime import bench_realtime

    res = bench_realtime([m for m in args.models.split(",") if m], chunks=args.chunks, fps=args.fps,
                         commentary_tokens=args.commentary_tokens, device=args.device,
                         max_visual_tokens=args.max_visual_tokens)
    from vstream.bench_realtime import plot_realtime

    res["env"] = environment()
    out = Path(args.out)
    p = _write(res, out, "realtime")
    plot_realtime(res, out / "realtime.png")
    print(json.dumps({"json": str(p), "png": str(out / "realtime.png"), "summary": res["summary"]}, indent=1))
    return 0
