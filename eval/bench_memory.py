"""Long-term memory benchmarks: FAISS search latency by index size, KV bytes stored per hour of video.

The CLI wiring lives in ``vstream bench``; these are plain functions returning rows (list of dicts).

- :func:`faiss_latency` builds ``memory.index.VectorIndex`` (the code path the agent uses) over N
  synthetic vectors and reports the median / p95 per-query latency and, for HNSW, recall@k against the
  exact answer. Building HNSW over 1M vectors takes minutes on a few cores: the CLI default is
  ``CLI_SIZES``; pass sizes=(..., 1_000_000) explicitly for the full table.
- :func:`kv_bytes_per_hour` and :func:`kv_table`: K/V bytes a store keeps per hour of stream for a model
  configuration, optionally int8/int4 (per-channel scales included). ReKV reports 18.8 GB/h for
  LLaVA-OneVision-7B and 4.0 GB/h for 0.5B at 0.5 fps; the formula reproduces both (in GiB).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from memory.index import VectorIndex

CLI_SIZES = (10_000, 100_000)
ALL_SIZES = (10_000, 100_000, 1_000_000)


def _synthetic(n: int, dim: int, rng: np.random.Generator, clusters: int = 1024, latent: int = 32,
               proj: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors [n, dim] with a low intrinsic dimension, like sentence embeddings or key summaries.

    A Gaussian mixture in ``latent`` dimensions, randomly projected to ``dim`` plus a little isotropic
    noise. (Independent Gaussians in 384-d are HNSW's worst case and unlike any real embedding: every
    pair is almost equally far, so "nearest" carries no information.) Returns (vectors, projection).
    """
    if proj is None:
        proj = (rng.standard_normal((latent, dim)) / np.sqrt(latent)).astype(np.float32)
    centres = rng.standard_normal((clusters, latent)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    step = 65_536
    for a in range(0, n, step):
        b = min(n, a + step)
        z = centres[rng.integers(0, clusters, b - a)] + 0.5 * rng.standard_normal((b - a, latent)).astype(np.float32)
        out[a:b] = z @ proj + 0.05 * rng.standard_normal((b - a, dim)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out, proj


def faiss_latency(sizes: tuple[int, ...] = ALL_SIZES, dim: int = 384, kinds: tuple[str, ...] = ("exact", "hnsw"), *,
                  n_queries: int = 100, k: int = 10, hnsw_m: int = 32, seed: int = 0) -> list[dict]:
    """Per-query search latency of exact and HNSW indexes at each size.

    Returns one row per (size, kind): ``{"size", "dim", "kind", "build_s", "median_ms", "p95_ms",
    "recall_at_k", "k", "index_mb"}`` (recall_at_k: overlap with the exact top-k; 1.0 for exact).
    """
    for kind in kinds:
        if kind not in ("exact", "hnsw"):
            raise ValueError(f"unknown index kind {kind!r}; use exact or hnsw")
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    for n in sizes:
        data, _ = _synthetic(int(n), dim, rng)
        # queries: near stored items (a paraphrase lands near its slide), with fresh noise
        queries = data[rng.integers(0, n, n_queries)] + 0.05 * rng.standard_normal((n_queries, dim)).astype(np.float32)
        ids = np.arange(n, dtype=np.int64)
        truth: list[set[int]] | None = None
        for kind in sorted(kinds, key=lambda x: x != "exact"):  # exact first: it is the ground truth
            idx = VectorIndex(dim, exact_max=n + 1 if kind == "exact" else 0, hnsw_m=hnsw_m)
            t0 = time.perf_counter()
            for a in range(0, n, 100_000):
                idx.add(ids[a: a + 100_000], data[a: a + 100_000])
            build = time.perf_counter() - t0
            times, found = [], []
            idx.search(queries[0], k)  # warm-up
            for q in queries:
                t = time.perf_counter()
                got, _ = idx.search(q, k)
                times.append((time.perf_counter() - t) * 1e3)
                found.append(set(got.tolist()))
            if kind == "exact":
                truth = found
            recall = (float(np.mean([len(f & t) / max(1, len(t)) for f, t in zip(found, truth)]))
                      if truth is not None else float("nan"))
            rows.append({"size": int(n), "dim": dim, "kind": kind, "build_s": round(build, 3),
                         "median_ms": round(float(np.median(times)), 4),
                         "p95_ms": round(float(np.percentile(times, 95)), 4),
                         "recall_at_k": round(recall, 4), "k": k,
                         "index_mb": round(n * (dim * 4 + 8 + (2 * hnsw_m * 4 if kind == "hnsw" else 0)) / 2**20, 1)})
            del idx
    return rows


def kv_bytes_per_hour(num_layers: int, num_kv_heads: int, head_dim: int, tokens_per_frame: float, fps: float,
                      dtype_bytes: float = 2, quantize: str = "none", tokens_per_entry: float | None = None) -> float:
    """Bytes of K+V stored per hour of stream.

    ``2 * L * H_kv * D * bytes_per_element * tokens_per_frame * fps * 3600``; with int8 / int4 an element
    takes 1 / 0.5 byte (k4v2: keys 0.5, values 0.25) plus one fp32 scale per (layer, K|V, head, channel) per entry of
    ``tokens_per_entry`` tokens (default: one 1-s chunk, vstream's default entry, and at least one frame).
    """
    if quantize not in ("none", "int8", "int4", "k4v2"):
        raise ValueError(f"quantize must be none, int8, int4 or k4v2, got {quantize!r}")
    if min(num_layers, num_kv_heads, head_dim) < 1 or tokens_per_frame <= 0 or fps <= 0:
        raise ValueError("layers, kv heads, head_dim, tokens_per_frame and fps must be positive")
    channels = 2 * num_layers * num_kv_heads * head_dim  # K and V, every layer
    tokens_per_hour = tokens_per_frame * fps * 3600.0
    if quantize == "none":
        return channels * dtype_bytes * tokens_per_hour
    per_entry = tokens_per_entry or tokens_per_frame * max(1.0, fps)
    elem = {"int8": 1.0, "int4": 0.5, "k4v2": 0.375}[quantize]  # k4v2: mean of 0.5 (keys) and 0.25 (values)
    return channels * (elem + 4.0 / per_entry) * tokens_per_hour


@dataclass(frozen=True)
class KVConfig:
    name: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    tokens_per_frame: float
    fps: float
    note: str = ""


#: Published text-model shapes; tokens per frame at the adapters' default frame sizes.
KV_CONFIGS = (
    KVConfig("llava-onevision-7b", 28, 4, 128, 196, 0.5, "ReKV setting: 384 px, 196 tokens/frame, 0.5 fps"),
    KVConfig("llava-onevision-0.5b", 24, 2, 64, 196, 0.5, "ReKV setting"),
    KVConfig("qwen2.5-vl-7b", 28, 4, 128, 128, 2.0, "448 px: 256 merged tokens per 2 frames; StreamingVLM 2 fps"),
    KVConfig("qwen2.5-vl-3b", 36, 2, 128, 128, 2.0, "448 px, 2 fps"),
    KVConfig("smolvlm2-256m", 30, 3, 64, 64, 2.0, "512 px, 64 tokens/frame, 2 fps"),
    KVConfig("smolvlm2-2.2b", 24, 32, 64, 81, 2.0, "384 px, 81 tokens/frame, 2 fps"),
    KVConfig("tiny-llava-onevision", 2, 2, 16, 16, 2.0, "test preset"),
    KVConfig("tiny-qwen2.5-vl", 2, 2, 16, 2, 2.0, "test preset: 56 px"),
    KVConfig("tiny-smolvlm", 2, 2, 16, 16, 2.0, "test preset"),
)


def kv_table(configs: tuple[KVConfig, ...] = KV_CONFIGS, quantize: tuple[str, ...] = ("none", "int8", "int4", "k4v2"),
             dtype_bytes: float = 2) -> list[dict]:
    """One row per (config, quantisation): bytes and GiB per hour (and per 24 h)."""
    rows = []
    for c in configs:
        for q in quantize:
            b = kv_bytes_per_hour(c.num_layers, c.num_kv_heads, c.head_dim, c.tokens_per_frame, c.fps, dtype_bytes, q)
            rows.append({**asdict(c), "quantize": q, "dtype_bytes": dtype_bytes, "bytes_per_hour": int(round(b)),
                         "gib_per_hour": round(b / 2**30, 3), "gib_per_day": round(24 * b / 2**30, 2)})
    return rows
