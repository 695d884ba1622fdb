"""`vstream bench ...`: efficiency benchmarks written as JSON + PNG (never asserted in tests).

ingest   per-chunk latency and process memory vs stream position for (a) this engine (bounded window),
         (b) full attention (nothing evicted) and (c) a sliding window recomputed from scratch each chunk.
memory   FAISS search latency, KV bytes per hour, time to first token with 0 vs N stored entries.
realtime highest frame rate sustained with commentary on; TTFT mid-stream vs on an idle session.
tokens   token drop (kept share, chunk latency and KV/h, drop on vs off) per source and threshold; cold-tier
         KV/h at 7B shapes for every format; which key channels the k2v1.58 tier stores at 1 bit.
asr      speech recognition on a clip: real-time factor, WER, timestamp error, and per-chunk perception
         latency with ASR on over off in one run.
pipeline real 720p/1080p H.264 clips through ``Agent.watch``: ingest time over ffmpeg's decode time, stage
         shares, frames converted per kept frame (``render_clip``, ``ingest_over_decode``).
gpu      the whole GPU suite in one run sized for one H100 in 9 minutes (``gpu`` runs the steps of
         ``gpu_steps`` each in its own process with a time budget; ``--smoke``: tiny presets on CPU).

Modules: ``common`` (device sync and memory, random chunks, environment facts, JSON/PNG writing),
``ingest``, ``memory_ttft``, ``realtime``, ``asr``, ``ops``, ``pipeline`` (one benchmark each), ``gpu`` /
``gpu_steps`` (the GPU suite, built on the others) and ``commands`` (the argparse wiring).

Which way imports go: the benches are a top-layer command like the CLI. ``commands`` imports the three
benchmark modules and ``eval.bench_memory`` (FAISS latency and KV bytes per hour); the benchmark modules
import ``common`` and the library (``vstream.api``, ``vstream.engine.core``, ``memory`` ...); ``common``
imports no other bench module. Nothing in the library imports ``vstream.bench``; only ``vstream.cli.main`` does.
"""
from __future__ import annotations

from typing import Any

from vstream.bench.commands import add_parser, run_cli

__all__ = ["add_parser", "run_cli", "bench_ingest", "plot_ingest", "bench_ttft_entries", "bench_realtime",
           "plot_realtime", "environment", "random_chunks"]


def __getattr__(name: str) -> Any:  # lazy: building the CLI parser does not import torch
    if name in ("bench_ingest", "plot_ingest"):
        from vstream.bench import ingest as mod
    elif name == "bench_ttft_entries":
        from vstream.bench import memory_ttft as mod
    elif name in ("bench_realtime", "plot_realtime"):
        from vstream.bench import realtime as mod
    elif name in ("environment", "random_chunks"):
        from vstream.bench import common as mod
    else:
        raise AttributeError(f"module 'vstream.bench' has no attribute {name!r}")
    return getattr(mod, name)
