"""Decoding with a preallocated cache and fixed shapes, replayed as a CUDA graph on a GPU (gpt-fast style).

``generation.decode = "dynamic"`` (the default) feeds each sampled token through the language model with
the growing cache of the context. ``"static"`` copies the context's K/V once into buffers of a fixed
capacity (a multiple of ``BUCKET`` tokens, kept between calls) and runs every step with the same shapes:
one token, attention over the whole buffer with the slots not yet written masked out. ``"graphs"`` also
captures that step once per capacity as a CUDA graph and replays it, so a token costs one graph launch
instead of a few hundred kernel launches; off a GPU it is ``"static"``. When decoding ends, the K/V of
the tokens fed are appended to the caller's cache, which then holds what the dynamic path leaves.

The step is the model's own modules (embedding, RoPE tables, decoder layers, norm, head) called with a
cache object whose ``update`` writes at the slot held in a tensor, and a mask computed from that tensor:
nothing in it depends on a Python value that changes from token to token.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from vstream.engine.batching import RAGGED

logger = logging.getLogger(__name__)

#: Capacity granularity (tokens): a context that grows within a bucket reuses the buffers and the graph.
BUCKET = 256
#: Decode modes of ``GenerationConfig.decode``.
DECODE_MODES = ("dynamic", "static", "graphs")


class _SlotCache:
    """What a decoder layer's attention calls ``update`` on: writes one token's K/V at ``slot`` (a [1] long
    tensor) of per-layer buffers [1, H_kv, C, D] and returns the whole buffers."""

    def __init__(self, shapes: list[tuple[int, ...]], dtype: torch.dtype, device: torch.device) -> None:
        self.keys = [torch.zeros(s, dtype=dtype, device=device) for s in shapes]  # [1, H_kv, C, D] each
        self.values = [torch.zeros(s, dtype=dtype, device=device) for s in shapes]
        self.slot = torch.zeros(1, dtype=torch.long, device=device)  # where the next token's K/V go

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """key_states, value_states [1, H_kv, 1, D] -> the layer's buffers [1, H_kv, C, D]."""
        self.keys[layer_idx].index_copy_(2, self.slot, key_states)
        self.values[layer_idx].index_copy_(2, self.slot, value_states)
        return self.keys[layer_idx], self.values[layer_idx]


class StaticDecoder:
    """Fixed-shape decoding steps for one adapter (one caller at a time: the engine keeps one per thread
    that decodes, answers and commentary). ``graphs``: capture the step as a CUDA graph on a GPU."""

    def __init__(self, adapter: Any, *, graphs: bool = False) -> None:
        check_static(adapter)
        self.adapter = adapter
        self.graphs = bool(graphs) and torch.device(adapter.device).type == "cuda"
        self.capacity = 0
        self.kv: _SlotCache | None = None
        self.graph: Any = None  # torch.cuda.CUDAGraph of the step at this capacity
        self.graph_failed = False
        self.captures = 0  # graphs captured so far (a new capacity captures again)
        self.start = self.n = 0  # slot of the first token fed since begin(); of the next one

    # ---- the step: fixed shapes, state in tensors ------------------------------------------------------
    def _alloc(self, capacity: int, like: list[torch.Tensor]) -> None:
        a = self.adapter
        dev = like[0].device
        self.capacity = capacity
        self.kv = _SlotCache([(1, k.shape[1], capacity, k.shape[3]) for k in like], like[0].dtype, dev)
        self.tok = torch.zeros(1, 1, dtype=torch.long, device=dev)  # [1, 1] the token fed
        self.pos = torch.zeros((a.pos_dims, 1, 1) if a.pos_dims > 1 else (1, 1), dtype=torch.long, device=dev)
        self.ar = torch.arange(capacity, device=dev)  # [C] slot numbers
        self.graph, self.out = None, None

    @torch.inference_mode()
    def _step(self) -> torch.Tensor:
        """Next-token logits [1, V] fp32 after feeding ``self.tok`` at ``self.pos`` into slot ``kv.slot``."""
        a, kv = self.adapter, self.kv
        lm = a.language_model()
        h = lm.embed_tokens(self.tok)  # [1, 1, D]
        pe = lm.rotary_emb(h, self.pos)  # the model's own RoPE tables at this position
        low = torch.finfo(h.dtype).min
        mask = torch.where(self.ar <= kv.slot, 0.0, low).to(h.dtype).view(1, 1, 1, -1)  # [1, 1, 1, C] additive
        for layer in a.decoder_layers():
            h = layer(h, attention_mask=mask, position_embeddings=pe, position_ids=None, cache=kv, use_cache=True)
        h = lm.norm(h)
        return a.lm_head()(h[:, -1]).float()  # [1, V]

    def _capture(self) -> None:
        """Record the step as a CUDA graph (after warm-up runs on a side stream); on failure, stay eager."""
        slot = self.kv.slot.clone()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.out = self._step()
            self.graph = graph
            self.captures += 1
        except Exception as exc:  # noqa: BLE001 - a module that cannot be captured: eager steps still work
            self.graph, self.graph_failed = None, True
            logger.warning("CUDA graph capture of the decode step failed (%s); decoding with the static cache "
                           "without graphs", exc)
        self.kv.slot.copy_(slot)  # warm-up and capture wrote scratch K/V at this slot: it is written again

    # ---- one decode -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def begin(self, cache: Any, max_tokens: int) -> None:
        """Copy ``cache``'s K/V (every layer [1, H_kv, L, D]) into the buffers, room for ``max_tokens`` more."""
        keys = [layer.keys for layer in cache.layers]
        values = [layer.values for layer in cache.layers]
        n = int(keys[0].shape[-2])
        need = n + max_tokens
        if self.kv is None or need > self.capacity or any(
                k.shape[1] != b.shape[1] or k.shape[3] != b.shape[3] or k.dtype != b.dtype
                for k, b in zip(keys, self.kv.keys)):
            self._alloc(-(-need // BUCKET) * BUCKET, keys)
        for buf, k in zip(self.kv.keys, keys):
            buf[:, :, :n].copy_(k)
        for buf, v in zip(self.kv.values, values):
            buf[:, :, :n].copy_(v)
        self.kv.slot.fill_(n)
        self.start = self.n = n

    @torch.inference_mode()
    def step(self, token_id: int, pos: int) -> torch.Tensor:
        """Feed ``token_id`` at position ``pos`` into the next slot; next-token logits [1, V] (fp32)."""
        if self.n >= self.capacity:
            raise RuntimeError(f"static decode cache is full ({self.capacity} tokens); begin() with more room")
        self.tok.fill_(token_id)
        self.pos.fill_(pos)
        if self.graphs and self.graph is None and not self.graph_failed:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            logits = self.out.clone()
        else:
            logits = self._step()
        self.kv.slot.add_(1)
        self.n += 1  # kv.slot's value, known here without reading it back from the device
        return logits

    @torch.inference_mode()
    def finish(self, cache: Any) -> int:
        """Append the K/V of the tokens fed since ``begin`` to ``cache`` (as the dynamic path leaves it);
        returns how many. The cache copies what it is given (``update`` concatenates or writes into its
        own buffers), so the next decode may overwrite these slots."""
        end = self.n
        n = end - self.start
        if n > 0:
            for i in range(len(self.kv.keys)):
                cache.update(self.kv.keys[i][:, :, self.start:end], self.kv.values[i][:, :, self.start:end], i)
        return n


def check_static(adapter: Any) -> None:
    """Raise ValueError when this model cannot decode with a static cache (the reason and the fix)."""
    lm = adapter.language_model()
    cfg = getattr(lm, "config", None)
    impl = getattr(cfg, "_attn_implementation", "sdpa")
    if impl not in ("sdpa", "eager", RAGGED):  # RAGGED (batched prefill) is SDPA outside a batch
        raise ValueError(f"static decoding needs sdpa or eager attention, the model uses {impl!r}; "
                         "set generation.decode=dynamic")
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        raise ValueError("static decoding does not support sliding-window layers; set generation.decode=dynamic")


def static_decoders(adapter: Any, mode: str) -> dict[str, StaticDecoder]:
    """One ``StaticDecoder`` per decoding thread ("answer", "commentary") for ``generation.decode`` = ``mode``;
    none (``{}``) for "dynamic". Raises ValueError for an unknown mode or a model that cannot."""
    if mode not in DECODE_MODES:
        raise ValueError(f"generation.decode must be one of {', '.join(DECODE_MODES)}, got {mode!r}")
    if mode == "dynamic":
        return {}
    graphs = mode == "graphs"
    if graphs and torch.device(adapter.device).type != "cuda":
        logger.info("generation.decode=graphs: CUDA graphs need a CUDA GPU; decoding with the static cache only")
    return {"answer": StaticDecoder(adapter, graphs=graphs), "commentary": StaticDecoder(adapter, graphs=graphs)}
