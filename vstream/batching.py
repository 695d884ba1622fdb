"""Batched perception: chunks ready on several streams go through the model together.

One call encodes every chunk's frames in one vision pass (``adapter.embed_chunks``) and prefills all
chunks in one padded LLM forward, each row against its own stream's cache:

    row b:  | pad (N - n_b) | stream b's cache (n_b) | chunk b (s_b) | pad (S - s_b) |

Positions are per row (``start_b + rel_pos``; [3, B, S] for M-RoPE), and a 4-D boolean mask lets a
chunk token attend to its own stream's cache and to the earlier tokens of its own chunk only, so
every row computes what the single-stream prefill computes. The new K/V of each row are then
committed by that stream's engine (``Engine.ingest_prefilled``): evictions and long-term memory
work exactly as for one stream.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from memory.manager import fill_cache
from vstream.models.base import ModelAdapter, Tokens
from vstream.types import ChunkReport

logger = logging.getLogger(__name__)


@dataclass
class Prefilled:
    """One row of a batched prefill: the chunk's K/V as the single-stream prefill would append them."""

    keys: tuple[torch.Tensor, ...]  # per layer [1, H_kv, s_b, D], post-RoPE at start_b + rel_pos
    values: tuple[torch.Tensor, ...]  # per layer [1, H_kv, s_b, D]
    key_summary: torch.Tensor | None  # [L, H_kv * D] fp32: per-layer mean of the pre-RoPE keys


def _padded_layer(caches: Sequence, li: int, n_max: int, which: str) -> torch.Tensor:
    """Layer ``li`` of every cache, left-padded with zeros to ``n_max`` tokens: [B, H_kv, n_max, D]."""
    rows = []
    for c in caches:
        t = getattr(c.layers[li], which)  # [1, H, n_b, D]
        pad = n_max - int(t.shape[-2])
        if pad:
            t = torch.cat([t.new_zeros(t.shape[0], t.shape[1], pad, t.shape[3]), t], dim=-2)
        rows.append(t)
    return torch.cat(rows, dim=0)


def batch_mask(past: Sequence[int], new: Sequence[int], device: torch.device) -> torch.Tensor:
    """[B, 1, S, N + S] bool: query i of row b sees its cache (the last ``past[b]`` of N slots) and chunk
    tokens 0..i; a padded query (i >= new[b]) sees only itself (its output is discarded)."""
    n_max, s_max = max(past), max(new)
    b = len(past)
    q = torch.arange(s_max, device=device).view(1, s_max, 1)  # [1, S, 1]
    k = torch.arange(n_max + s_max, device=device).view(1, 1, -1)  # [1, 1, N + S]
    p = torch.as_tensor(list(past), device=device).view(b, 1, 1)
    s = torch.as_tensor(list(new), device=device).view(b, 1, 1)
    in_cache = (k >= n_max - p) & (k < n_max)
    in_chunk = (k >= n_max) & (k - n_max <= q)
    real = q < s  # [B, S, 1]
    mask = (real & (in_cache | in_chunk)) | (~real & (k - n_max == q))
    return mask.unsqueeze(1)  # [B, 1, S, N + S]


def prefill_batch(adapter: ModelAdapter, caches: Sequence, tokens: Sequence[Tokens], starts: Sequence[int]
                  ) -> list[Prefilled]:
    """Prefill ``tokens[b]`` at ``starts[b] + rel_pos`` against ``caches[b]`` for every b in one forward.

    The caches are read, never changed. Returns each row's new K/V and key summary.
    """
    if not (len(caches) == len(tokens) == len(starts)) or not caches:
        raise ValueError("prefill_batch needs one cache, one Tokens and one start per row (at least one row)")
    dev = adapter.device
    b = len(tokens)
    past = [c.get_seq_length() for c in caches]
    new = [t.n_tokens for t in tokens]
    n_max, s_max = max(past), max(new)
    d = tokens[0].inputs_embeds.shape[-1]
    emb = tokens[0].inputs_embeds.new_zeros(b, s_max, d)  # [B, S, D]
    pdims = adapter.pos_dims
    pos = torch.zeros(pdims, b, s_max, dtype=torch.long, device=dev)  # [P, B, S]
    for i, (t, st) in enumerate(zip(tokens, starts)):
        emb[i, :t.n_tokens] = t.inputs_embeds[0]
        pos[:, i, :t.n_tokens] = t.rel_pos.to(dev) + int(st)
        if t.n_tokens < s_max:  # padding continues the row's positions (never attended by real tokens)
            last = int(pos[:, i, t.n_tokens - 1].max()) if t.n_tokens else int(st)
            pos[:, i, t.n_tokens:] = torch.arange(last + 1, last + 1 + s_max - t.n_tokens, device=dev)
    position_ids = pos if pdims > 1 else pos[0]  # [3, B, S] or [B, S]
    n_layers = adapter.num_layers
    if n_max:
        keys = [_padded_layer(caches, li, n_max, "keys") for li in range(n_layers)]
        values = [_padded_layer(caches, li, n_max, "values") for li in range(n_layers)]
        cache = fill_cache(adapter.new_cache(), keys, values)
    else:
        cache = adapter.new_cache()
    mask = batch_mask(past, new, dev)
    rows = torch.arange(s_max, device=dev).view(1, -1) < torch.as_tensor(new, device=dev).view(-1, 1)  # [B, S]
    with torch.inference_mode(), adapter.capture_projection_rows("k", rows) as kmeans:
        adapter.forward_batch(emb, position_ids, cache, mask)
    out = []
    for i, s in enumerate(new):
        ks = tuple(l.keys[i:i + 1, :, n_max:n_max + s].clone() for l in cache.layers)  # [1, H, s, D]
        vs = tuple(l.values[i:i + 1, :, n_max:n_max + s].clone() for l in cache.layers)
        summ = torch.stack([m[i].cpu() for m in kmeans]) if kmeans and kmeans[0] is not None else None  # [L, HD]
        out.append(Prefilled(ks, vs, summ))
    return out


def perceive_batch(engines: Sequence, chunks: Sequence, max_batch: int | None = None) -> list[ChunkReport]:
    """Ingest ``chunks[b]`` into ``engines[b]`` (all on one adapter) with one vision pass and one prefill.

    Same result per engine as ``engines[b].ingest(chunks[b])``. The caller holds each engine's writer role
    (nothing else writes those memories meanwhile). ``max_batch`` splits larger sets into several passes.
    Each report's ``latency_s`` is the wall time of the whole batched step.
    """
    if len(engines) != len(chunks):
        raise ValueError("perceive_batch needs one chunk per engine")
    if not engines:
        return []
    if len({id(e) for e in engines}) != len(engines):
        raise ValueError("perceive_batch takes at most one chunk per engine per call (chunks of one stream "
                         "depend on each other)")
    adapter = engines[0].adapter
    if any(e.adapter is not adapter for e in engines):
        raise ValueError("all engines of a batch must share one model adapter")
    step = max_batch or len(engines)
    reports: list[ChunkReport] = []
    for lo in range(0, len(engines), step):
        es, cs = engines[lo:lo + step], chunks[lo:lo + step]
        t0 = time.perf_counter()
        with torch.inference_mode():
            tokens = adapter.embed_chunks([(c.marker, c.frames) for c in cs])
            starts = [e.memory.next_pos for e in es]
            rows = prefill_batch(adapter, [e.memory.cache for e in es], tokens, starts)
        if adapter.device.type == "cuda":
            torch.cuda.synchronize(adapter.device)  # engines commit on their own CUDA streams
        for e, c, t, st, r in zip(es, cs, tokens, starts, rows):
            reports.append(e.ingest_prefilled(c, t, st, r.keys, r.values, r.key_summary, t0=t0))
    return reports
