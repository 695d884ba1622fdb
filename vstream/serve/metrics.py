"""Prometheus text exposition (format 0.0.4) of a RayFleet's ``stats()``: per stream and per worker."""
from __future__ import annotations

import math
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# name, type, help, how to read it from one stream's stats
_STREAM_METRICS = [
    ("vstream_stream_chunks_total", "counter", "Chunks ingested by the stream's current placement",
     lambda v: v.get("chunks")),
    ("vstream_stream_chunks_per_second", "gauge", "Chunks ingested per second since the stream was placed",
     lambda v: v["chunks"] / v["uptime_s"] if v.get("uptime_s") else None),
    ("vstream_stream_chunks_dropped_total", "counter", "Chunks dropped because perception was behind (realtime)",
     lambda v: v.get("chunks_dropped")),
    ("vstream_stream_frames_dropped_total", "counter", "Frames dropped (sampler, backlog, source)",
     lambda v: v.get("frames_dropped")),
    ("vstream_stream_up", "gauge", "1 when the stream is up, 0 when stalled or down", lambda v: float(v.get("state") == "up")),
    ("vstream_stream_time_seconds", "gauge", "Stream time reached", lambda v: v.get("stream_time_s")),
    ("vstream_stream_context_tokens", "gauge", "Tokens in the stream's KV window", lambda v: v.get("context_tokens")),
    ("vstream_stream_queries_answered_total", "counter", "Questions answered", lambda v: v.get("queries_answered")),
]


def _esc(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(x: Any) -> str | None:
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        return "NaN"
    return "+Inf" if x == math.inf else "-Inf" if x == -math.inf else repr(x)


def render(stats: dict[str, Any]) -> str:
    """The text a Prometheus server scrapes from ``GET /metrics``."""
    lines: list[str] = []

    def family(name: str, kind: str, help_: str, samples: list[tuple[dict[str, Any], Any]]) -> None:
        rows = [(lab, _num(val)) for lab, val in samples]
        rows = [(lab, val) for lab, val in rows if val is not None]
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for lab, val in rows:
            ls = ",".join(f'{k}="{_esc(v)}"' for k, v in lab.items())
            lines.append(f"{name}{{{ls}}} {val}" if ls else f"{name} {val}")

    streams = {sid: v for sid, v in stats.get("streams", {}).items() if "chunks" in v}
    for name, kind, help_, get in _STREAM_METRICS:
        family(name, kind, help_, [({"stream": sid, "worker": v.get("worker", "")}, get(v)) for sid, v in streams.items()])
    family("vstream_stream_ttft_seconds", "gauge", "Answer time to first token (quantiles over recent answers)",
           [({"stream": sid, "quantile": q}, v.get(key)) for sid, v in streams.items()
            for q, key in (("0.5", "ttft_p50"), ("0.95", "ttft_p95"))])
    family("vstream_stream_chunk_latency_seconds", "gauge", "Per-chunk perception latency (quantiles)",
           [({"stream": sid, "quantile": q}, v.get(key)) for sid, v in streams.items()
            for q, key in (("0.5", "chunk_latency_p50"), ("0.95", "chunk_latency_p95"))])
    family("vstream_stream_memory_bytes", "gauge", "Memory held per tier (device: KV window; ram, disk: long-term)",
           [({"stream": sid, "tier": tier}, v["memory_bytes"].get(tier)) for sid, v in streams.items()
            for tier in ("device", "ram", "disk")])
    workers = stats.get("workers", {})
    family("vstream_worker_up", "gauge", "1 for a live worker actor", [({"worker": w}, float(bool(v.get("alive"))))
                                                                       for w, v in workers.items()])
    family("vstream_worker_chunks_per_second", "gauge", "Chunks per second of a worker's fleet since it started",
           [({"worker": w}, v.get("chunks_per_s")) for w, v in workers.items() if v.get("alive")])
    family("vstream_worker_rss_bytes", "gauge", "Resident memory of a worker process",
           [({"worker": w}, v.get("process_rss_bytes")) for w, v in workers.items() if v.get("alive")])
    t = stats.get("total", {})
    family("vstream_chunks_per_second", "gauge", "Aggregate chunks per second over all workers", [({}, t.get("chunks_per_s"))])
    family("vstream_streams", "gauge", "Streams placed", [({}, t.get("streams"))])
    family("vstream_worker_deaths_total", "counter", "Workers found dead (their streams were re-placed)",
           [({}, t.get("worker_deaths"))])
    family("vstream_events_total", "counter", "Events in the fleet's log", [({}, t.get("events"))])
    family("vstream_events_deduplicated_total", "counter", "Events received twice and logged once",
           [({}, t.get("events_deduplicated"))])
    return "\n".join(lines) + "\n"
