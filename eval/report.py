"""Efficiency report: ``vstream bench`` JSON results -> one Markdown file + one PNG.

The reader is tolerant: it accepts a JSON object or list, or JSON lines, and finds inside them
(at any depth) per-chunk rows ``{"mode", "chunk", "latency_s", "rss_bytes", ...}`` and time-to-
first-token series (a list of numbers under a key containing "ttft", a ``{label: [..]}`` dict under
such a key, or rows carrying ``ttft_s``). Panels: latency vs stream length per mode (engine / full
attention / recompute), memory vs stream length, and the TTFT distribution.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from eval.runner import markdown_table

logger = logging.getLogger(__name__)

MODE_LABELS = {"engine": "vstream engine (bounded window)", "full": "full attention",
               "recompute": "sliding window + recompute"}
MODE_ORDER = ("engine", "full", "recompute")


@dataclass
class BenchData:
    """Rows and TTFT series gathered from one or more bench result files."""

    rows: list[dict[str, Any]] = field(default_factory=list)  # normalised per-chunk rows
    ttft: dict[str, list[float]] = field(default_factory=dict)  # label -> seconds
    meta: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    @property
    def modes(self) -> list[str]:
        seen = list(dict.fromkeys(r["mode"] for r in self.rows))
        return [m for m in MODE_ORDER if m in seen] + [m for m in seen if m not in MODE_ORDER]


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _is_numbers(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(_num(x) is not None for x in v)


def _is_rows(v: Any) -> bool:
    return (isinstance(v, list) and bool(v) and all(isinstance(r, dict) for r in v)
            and any("mode" in r and ("latency_s" in r or "latency" in r) for r in v))


def _load_any(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: neither JSON nor JSON lines ({e.msg})") from None
        return rows


def load_bench_results(paths: Sequence[str | os.PathLike]) -> BenchData:
    """Read bench result files (JSON or JSONL) into one BenchData; files or directories of *.json."""
    data = BenchData()
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(list(p.glob("*.json")) + list(p.glob("*.jsonl")))
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"bench result not found: {p}; run `vstream bench ...` first or fix the path")
    if not files:
        raise ValueError(f"no *.json bench results in {', '.join(map(str, paths))}")
    for f in files:
        obj = _load_any(f)
        data.sources.append(str(f))
        chunk_s = 1.0
        if isinstance(obj, dict):
            chunk_s = _num(obj.get("chunk_seconds")) or 1.0
            for k in ("model", "window", "frames_per_chunk", "frame_size", "bench"):
                if k in obj and not isinstance(obj[k], (dict, list)):
                    data.meta.setdefault(k, obj[k])
            env = obj.get("env")
            if isinstance(env, dict):
                data.meta.setdefault("device", env.get("device"))
                data.meta.setdefault("commit", env.get("commit"))
        _walk(obj, [], data, chunk_s, f.stem)
    return data


_GENERIC = {"ttft", "ttft_s", "values", "samples", "series", "data"}


def _walk(obj: Any, path: list[str], data: BenchData, chunk_s: float, file_label: str,
          ttft_ctx: list[str] | None = None) -> None:
    """Collect per-chunk rows anywhere, and number lists at or below a key that mentions "ttft"."""
    if _is_rows(obj):
        for i, r in enumerate(obj):
            _add_row(r, i, data, chunk_s)
        return
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            if isinstance(v, (dict, list)):
                _walk(v, path + [str(i)], data, chunk_s, file_label, ttft_ctx)
        return
    if not isinstance(obj, dict):
        return
    # in a dict that names some series "ttft...", the other number lists (token counts...) are not TTFT
    named = any("ttft" in str(k).lower() for k in obj)
    for k, v in obj.items():
        key = str(k)
        ctx = ttft_ctx
        if "ttft" in key.lower():
            ctx = [p for p in path if not p.isdigit()][-1:] if ctx is None else ctx
        elif named and _is_numbers(v):
            continue
        if ctx is not None and _is_numbers(v):
            parts = [p for p in ctx + [key] if p.lower() not in _GENERIC]
            label = "/".join(parts) or file_label
            data.ttft.setdefault(label, []).extend(float(x) for x in v)
        elif isinstance(v, (dict, list)):
            _walk(v, path + [key], data, chunk_s, file_label, None if ctx is None else ctx + [key])


def _add_row(r: dict[str, Any], i: int, data: BenchData, chunk_s: float) -> None:
    mode = str(r.get("mode", "run"))
    chunk = _num(r.get("chunk", r.get("index", i)))
    chunk = int(chunk) if chunk is not None else i
    stream = _num(r.get("stream_s", r.get("stream_time_s", r.get("t"))))
    row = {"mode": mode, "chunk": chunk, "stream_s": stream if stream is not None else (chunk + 1) * chunk_s,
           "latency_s": _num(r.get("latency_s", r.get("latency"))),
           "rss_bytes": _num(r.get("rss_bytes", r.get("rss"))),
           "device_bytes": _num(r.get("device_bytes", r.get("gpu_bytes"))),
           "oom": bool(r.get("oom", False))}
    data.rows.append(row)
    ttft = _num(r.get("ttft_s"))
    if ttft is not None:
        data.ttft.setdefault(mode, []).append(ttft)


# ---- rendering ----------------------------------------------------------------------------------

def _pct(xs: Iterable[float], q: float) -> float | None:
    a = np.asarray([x for x in xs if x is not None], dtype=float)
    return float(np.percentile(a, q)) if a.size else None


def mode_table(data: BenchData) -> list[tuple]:
    """Per mode: chunks, stream length, latency p50/p95/max (ms), late/early ratio, peak memory, OOM."""
    out = []
    for m in data.modes:
        rs = [r for r in data.rows if r["mode"] == m]
        lat = [r["latency_s"] * 1000 for r in rs if r["latency_s"] is not None]
        n = len(lat)
        early = _pct(lat[: max(1, n // 10)], 50) if n else None
        late = _pct(lat[-max(1, n // 10):], 50) if n else None
        rss = [r["rss_bytes"] for r in rs if r["rss_bytes"] is not None]
        dev = [r["device_bytes"] for r in rs if r["device_bytes"]]
        oom = next((r["chunk"] for r in rs if r["oom"]), None)
        out.append((MODE_LABELS.get(m, m), n, max((r["stream_s"] for r in rs), default=None), _pct(lat, 50),
                    _pct(lat, 95), max(lat) if lat else None, (late / early) if (early and late) else None,
                    (max(rss) - rss[0]) / 2 ** 20 if rss else None, max(dev) / 2 ** 20 if dev else None,
                    oom if oom is not None else "-"))
    return out


def _smooth(y: np.ndarray) -> np.ndarray:
    k = max(1, len(y) // 100)
    if k == 1:
        return y
    pad = np.pad(y, (k // 2, k - 1 - k // 2), mode="edge")
    return np.convolve(pad, np.ones(k) / k, mode="valid")


def plot_report(data: BenchData, path: str | os.PathLike) -> Path:
    """Three panels: latency vs stream length, memory vs stream length, TTFT distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 4.8))
    for m in data.modes:
        rs = sorted((r for r in data.rows if r["mode"] == m), key=lambda r: r["stream_s"])
        lab = MODE_LABELS.get(m, m)
        pts = [(r["stream_s"], r["latency_s"] * 1000) for r in rs if r["latency_s"] is not None]
        if pts:
            x, y = np.array(pts).T
            line, = ax1.plot(x, _smooth(y), label=lab)
            oom = [r for r in rs if r["oom"]]
            if oom:
                ax1.plot([oom[0]["stream_s"]], [y[-1]], "x", color=line.get_color(), markersize=10,
                         label=f"{lab}: out of memory")
        mem = [(r["stream_s"], r["rss_bytes"] / 2 ** 20) for r in rs if r["rss_bytes"] is not None]
        if mem:
            x, y = np.array(mem).T
            # growth since the mode started: benchmark modes run one after another in one process
            line, = ax2.plot(x, y - y[0], label=f"{lab} (process RSS growth)")
            dev = [(r["stream_s"], r["device_bytes"] / 2 ** 20) for r in rs if r["device_bytes"]]
            if dev:
                dx, dy = np.array(dev).T
                ax2.plot(dx, dy, "--", color=line.get_color(), label=f"{lab} (GPU)")
    ax1.set(xlabel="stream length (s)", ylabel="per-chunk latency (ms)", title="latency vs stream length")
    ax2.set(xlabel="stream length (s)", ylabel="memory growth (MiB)", title="memory vs stream length")
    for ax in (ax1, ax2):
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no per-chunk rows", ha="center", va="center", transform=ax.transAxes)
    labels = [k for k, v in data.ttft.items() if v]
    if labels:
        ax3.boxplot([np.asarray(data.ttft[k]) * 1000 for k in labels], showfliers=True)
        ax3.set_xticks(range(1, len(labels) + 1))
        ax3.set_xticklabels(labels, rotation=20, fontsize=8)
    else:
        ax3.text(0.5, 0.5, "no time-to-first-token data", ha="center", va="center", transform=ax3.transAxes)
    ax3.set(ylabel="time to first token (ms)", title="time-to-first-token distribution")
    title = " — ".join(str(x) for x in (data.meta.get("model"), data.meta.get("device")) if x)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def render_report(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                  name: str = "efficiency") -> tuple[Path, Path]:
    """Write ``<out>/<name>.md`` and ``<out>/<name>.png`` from bench result files; returns both paths."""
    data = load_bench_results(inputs)
    if not data.rows and not data.ttft:
        raise ValueError(f"no per-chunk rows or TTFT series found in {', '.join(data.sources)}; "
                         "give the JSON written by `vstream bench`")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_report(data, out / f"{name}.png")
    md = ["# Efficiency report\n",
          "Sources: " + ", ".join(f"`{os.path.basename(s)}`" for s in data.sources) + ".  ",
          "Setup: " + ", ".join(f"{k}={v}" for k, v in data.meta.items() if v is not None) + ".\n",
          f"![latency, memory and TTFT]({png.name})\n"]
    if data.rows:
        md += ["## Per-chunk latency and memory\n",
               markdown_table(["mode", "chunks", "stream s", "p50 ms", "p95 ms", "max ms", "late/early",
                               "RSS growth MiB", "peak GPU MiB", "OOM at chunk"], mode_table(data))]
    if data.ttft:
        md += ["## Time to first token\n",
               markdown_table(["series", "n", "p50 ms", "p95 ms", "max ms"],
                              [(k, len(v), _ms(_pct(v, 50)), _ms(_pct(v, 95)), _ms(max(v) if v else None))
                               for k, v in data.ttft.items()])]
    mdp = out / f"{name}.md"
    mdp.write_text("\n".join(md), encoding="utf-8")
    logger.info("wrote %s and %s", mdp, png)
    return mdp, png


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000
