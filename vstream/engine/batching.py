"""Batched perception: chunks ready on several streams go through the model together.

One call encodes every chunk's frames in one vision pass (``adapter.embed_chunks``) and prefills all
chunks in one LLM forward over a batch [B, S] of chunks (right-padded to the longest), each row against
its own stream's cache. Two attention paths:

- **ragged** (models on SDPA attention): an attention function registered with transformers
  (``"vstream_ragged"``) attends row by row to that stream's own cache followed by its chunk, never
  padding or copying the caches. The per-row K/V it concatenates are the streams' new caches, so
  the batch costs the same cache traffic as one stream at a time, while every projection, MLP and
  norm runs once over all rows. Outside a batched prefill the function is plain SDPA (the same
  masks, registered for the same name), so other threads using the model are unaffected.
- **padded** (any other attention): the caches are left-padded to the longest and a 4-D boolean mask
  lets each chunk token see its own cache and the earlier tokens of its own chunk only::

      row b:  | pad (N - n_b) | stream b's cache (n_b) | chunk b (s_b) | pad (S - s_b) |

Positions are per row (``start_b + rel_pos``; [3, B, S] for M-RoPE), so every row computes what the
single-stream prefill computes. Each stream's engine then commits its row (``Engine.ingest_prefilled``):
evictions and long-term memory work exactly as for one stream.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from memory.manager import fill_cache
from vstream.models.base import ModelAdapter, Tokens
from vstream.types import ChunkReport

logger = logging.getLogger(__name__)


RAGGED = "vstream_ragged"
_tls = threading.local()  # the ragged state of the batched prefill running on this thread, if any
_register_lock = threading.Lock()


@dataclass
class Prefilled:
    """One row of a batched prefill: the stream's cache with its chunk appended, as a prefill leaves it."""

    keys: tuple[torch.Tensor, ...]  # per layer [1, H_kv, n_b + s_b, D]: the old cache, then the chunk post-RoPE
    values: tuple[torch.Tensor, ...]  # per layer [1, H_kv, n_b + s_b, D]
    key_summary: torch.Tensor | None  # [L, H_kv * D] fp32: per-layer mean of the chunk's pre-RoPE keys


class _RaggedCache(DynamicCache):
    """The batch's "cache" in the ragged path: ``update`` appends each row's chunk K/V [1, H, s_b, D] to that
    row's own cache (one concatenation per row, as a one-stream prefill does) and keeps the result; the
    attention function reads them from here. Nothing is padded."""

    def __init__(self, caches: Sequence, new: Sequence[int]) -> None:
        super().__init__()
        self.rows = [(tuple(l.keys for l in c.layers), tuple(l.values for l in c.layers)) for c in caches]
        self.new = list(new)
        n_layers = len(self.rows[0][0])
        self.keys: list[list[torch.Tensor | None]] = [[None] * n_layers for _ in caches]
        self.values: list[list[torch.Tensor | None]] = [[None] * n_layers for _ in caches]

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):  # [B, H, S, D] each
        for b, s in enumerate(self.new):
            pk, pv = self.rows[b][0][layer_idx], self.rows[b][1][layer_idx]  # [1, H, n_b, D]
            self.keys[b][layer_idx] = torch.cat([pk, key_states[b:b + 1, :, :s]], dim=-2)
            self.values[b][layer_idx] = torch.cat([pv, value_states[b:b + 1, :, :s]], dim=-2)
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def attend(self, layer_idx: int, query: torch.Tensor, scaling: float | None) -> torch.Tensor:
        """query [B, Hq, S, D] -> attention output [B, S, Hq, D] (padded query rows stay zero)."""
        b_, hq, s_max, d = query.shape
        out = query.new_zeros(b_, s_max, hq, d)
        for b, s in enumerate(self.new):
            k, v = self.keys[b][layer_idx], self.values[b][layer_idx]  # [1, H, n_b + s_b, D]
            n = int(k.shape[-2]) - s
            q_pos = torch.arange(s, device=query.device).view(-1, 1) + n  # [s, 1]
            mask = torch.arange(n + s, device=query.device).view(1, -1) <= q_pos  # [s, n + s] causal
            o = F.scaled_dot_product_attention(query[b:b + 1, :, :s], k, v, attn_mask=mask, scale=scaling,
                                               enable_gqa=k.shape[1] != hq)  # [1, Hq, s, D]
            out[b, :s] = o[0].transpose(0, 1)
        return out


def _ragged_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Registered as "vstream_ragged": per-row attention inside a batched prefill, else plain SDPA."""
    state = getattr(_tls, "state", None)
    if state is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return state.attend(module.layer_idx, query, scaling), None


def use_ragged(adapter: ModelAdapter) -> bool:
    """Switch the adapter's language model to the ragged attention (idempotent); False when it does not use
    SDPA (eager, flash...), whose batches then take the padded path."""
    cfg = adapter.language_model().config
    with _register_lock:
        impl = getattr(cfg, "_attn_implementation", None)
        if impl == RAGGED:
            return True
        if impl != "sdpa":
            return False
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(RAGGED, _ragged_attention)
        AttentionMaskInterface.register(RAGGED, sdpa_mask)  # outside a batch: SDPA's own masks
        cfg._attn_implementation = RAGGED
        logger.info("batched prefill: ragged attention on %s", adapter.name)
        return True


def prefill_ragged(adapter: ModelAdapter, caches: Sequence, tokens: Sequence[Tokens], starts: Sequence[int]
                   ) -> list[Prefilled]:
    """Like ``prefill_batch`` but without padding the caches (needs ``use_ragged(adapter)``)."""
    dev = adapter.device
    new = [t.n_tokens for t in tokens]
    emb, position_ids, rows = _batch_inputs(adapter, tokens, starts)
    state = _RaggedCache(caches, new)
    dummy = torch.ones(len(new), 1, 1, 1, dtype=torch.bool, device=dev)  # 4-D: transformers builds no mask
    _tls.state = state
    try:
        with torch.inference_mode(), adapter.capture_projection_rows("k", rows) as kmeans:
            adapter.language_model()(inputs_embeds=emb, position_ids=position_ids, attention_mask=dummy,
                                     cache=state, use_cache=True, **adapter.batch_lm_inputs(tokens, rows))
    finally:
        _tls.state = None
    return [Prefilled(tuple(state.keys[i]), tuple(state.values[i]), _summary(kmeans, i)) for i in range(len(new))]


def _batch_inputs(adapter: ModelAdapter, tokens: Sequence[Tokens], starts: Sequence[int]):
    """Right-padded embeddings [B, S, D], per-row positions ([B, S] or [P, B, S]) and the real-token mask [B, S]."""
    dev = adapter.device
    b = len(tokens)
    new = [t.n_tokens for t in tokens]
    s_max = max(new)
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
    rows = torch.arange(s_max, device=dev).view(1, -1) < torch.as_tensor(new, device=dev).view(-1, 1)  # [B, S]
    return emb, (pos if pdims > 1 else pos[0]), rows


def _summary(kmeans: list, i: int) -> torch.Tensor | None:
    return torch.stack([m[i].cpu() for m in kmeans]) if kmeans and kmeans[0] is not None else None  # [L, HD]


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
    past = [c.get_seq_length() for c in caches]
    new = [t.n_tokens for t in tokens]
    n_max = max(past)
    emb, position_ids, rows = _batch_inputs(adapter, tokens, starts)
    n_layers = adapter.num_layers
    if n_max:
        keys = [_padded_layer(caches, li, n_max, "keys") for li in range(n_layers)]
        values = [_padded_layer(caches, li, n_max, "values") for li in range(n_layers)]
        cache = fill_cache(adapter.new_cache(), keys, values)
    else:
        cache = adapter.new_cache()
    mask = batch_mask(past, new, dev)
    with torch.inference_mode(), adapter.capture_projection_rows("k", rows) as kmeans:
        adapter.forward_batch(emb, position_ids, cache, mask, **adapter.batch_lm_inputs(tokens, rows))
    out = []
    for i, (c, s) in enumerate(zip(caches, new)):
        ks = tuple(torch.cat([old.keys, l.keys[i:i + 1, :, n_max:n_max + s]], dim=-2)
                   for old, l in zip(c.layers, cache.layers))  # [1, H, n_b + s_b, D]
        vs = tuple(torch.cat([old.values, l.values[i:i + 1, :, n_max:n_max + s]], dim=-2)
                   for old, l in zip(c.layers, cache.layers))
        out.append(Prefilled(ks, vs, _summary(kmeans, i)))
    return out


def perceive_batch(engines: Sequence, chunks: Sequence, max_batch: int | None = None,
                   ragged: bool | None = None) -> list[ChunkReport]:
    """Ingest ``chunks[b]`` into ``engines[b]`` (all on one adapter) with one vision pass and one prefill.

    Same result per engine as ``engines[b].ingest(chunks[b])``. The caller holds each engine's writer role
    (nothing else writes those memories meanwhile). ``max_batch`` splits larger sets into several passes.
    Each report's ``latency_s`` is the wall time of the whole batched step. ``ragged``: force the ragged
    (True) or the padded (False) attention path; None picks ragged whenever the model runs on SDPA.
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
    if ragged is None:
        ragged = use_ragged(adapter)
    elif ragged and not use_ragged(adapter):
        raise ValueError(f"ragged batching needs SDPA attention; {adapter.name} uses another implementation")
    step = max_batch or len(engines)
    reports: list[ChunkReport] = []
    for lo in range(0, len(engines), step):
        es, cs = engines[lo:lo + step], chunks[lo:lo + step]
        t0 = time.perf_counter()
        for e, c, (t, st, r) in zip(es, cs, compute_batch(es, cs, ragged)):
            reports.append(e.ingest_prefilled(c, t, st, r.keys, r.values, r.key_summary, t0=t0))
    return reports


def compute_batch(engines: Sequence, chunks: Sequence, ragged: bool) -> list[tuple[Tokens, int, Prefilled]]:
    """The model work of one batched step, nothing committed: per engine (tokens, start, prefilled row).

    The caller commits each row with ``engine.ingest_prefilled(chunk, tokens, start, row.keys, row.values,
    row.key_summary)``; a failure here leaves every memory as it was.
    """
    adapter = engines[0].adapter
    prefill = prefill_ragged if ragged else prefill_batch
    with torch.inference_mode():
        tokens = adapter.embed_chunks([(adapter.chunk_marker(c), c.frames) for c in chunks])
        tokens = [e.drop_tokens(t) for e, t in zip(engines, tokens)]  # memory.token_drop (no-op when off)
        starts = [e.memory.next_pos for e in engines]
        rows = prefill(adapter, [e.memory.cache for e in engines], tokens, starts)
    if adapter.device.type == "cuda":
        torch.cuda.synchronize(adapter.device)  # engines commit on their own CUDA streams
    return list(zip(tokens, starts, rows))
