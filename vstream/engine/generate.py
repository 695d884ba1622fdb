"""Model-agnostic prefill and decoding (no ``model.generate`` in the hot path).

All functions take an adapter (vstream.models.base.ModelAdapter), a DynamicCache that they extend,
and explicit positions.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from transformers import DynamicCache

from vstream.config import GenerationConfig
from vstream.models.base import ModelAdapter, Tokens

if TYPE_CHECKING:
    from vstream.engine.static_decode import StaticDecoder

logger = logging.getLogger(__name__)


def prefill(adapter: ModelAdapter, cache: DynamicCache, tokens: Tokens, start: int, logits: str = "last"
            ) -> torch.Tensor | None:
    """Run ``tokens`` through the LM at positions ``start + rel_pos``, appending to ``cache``.

    Returns the last position's logits [1, V] (fp32) for logits="last".
    """
    return adapter.forward(tokens.inputs_embeds, adapter.position_ids(tokens.rel_pos, start), cache, logits=logits,
                           **tokens.lm_inputs)


def decode_one_token(adapter: ModelAdapter, cache: DynamicCache, token_id: int, pos: int) -> torch.Tensor:
    """Feed one token at position ``pos``; returns next-token logits [1, V] (fp32). No attention mask."""
    return prefill(adapter, cache, adapter.embed_ids([token_id]), pos)


def sample_token(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
                 generator: torch.Generator | None = None) -> int:
    """Greedy when temperature == 0, else temperature + nucleus sampling. logits: [1, V]."""
    if temperature <= 0:
        return int(logits[0].argmax().item())
    probs = torch.softmax(logits[0].float() / temperature, dim=-1)  # [V]
    if top_p < 1.0:
        sorted_p, idx = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter_(0, idx[keep], sorted_p[keep])
        probs = probs / probs.sum()
    return int(torch.multinomial(probs.cpu(), 1, generator=generator).item())


@dataclass
class DecodeResult:
    token_ids: list[int]  # generated tokens, stop token excluded
    stopped: str  # "stop" | "length" | "cancelled"
    ttft_s: float | None  # set by callers that time the first token
    next_pos: int  # position after the last token fed into the cache
    pending_token: int | None  # last sampled token not yet fed into the cache (None after a stop token)


class TextStreamer:
    """Turns a growing list of token ids into text pieces, holding back incomplete UTF-8."""

    def __init__(self, adapter: ModelAdapter) -> None:
        self.adapter = adapter
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.adapter.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.emitted = text[len(self.emitted):], text
        return piece


def decode_n_tokens(adapter: ModelAdapter, cache: DynamicCache, first_logits: torch.Tensor, pos: int,
                    gen: GenerationConfig, *, max_new_tokens: int | None = None,
                    stop_ids: Sequence[int] | None = None,
                    on_token: Callable[[int], None] | None = None,
                    cancel: threading.Event | None = None,
                    generator: torch.Generator | None = None,
                    feed_last: bool = False, static: "StaticDecoder | None" = None) -> DecodeResult:
    """Sample up to ``max_new_tokens`` tokens starting from ``first_logits`` (the prefill's last logits).

    Each sampled token is passed to ``on_token`` and then fed back at the next position. A stop token
    ends decoding and is not returned. With ``feed_last`` the final sampled token is also fed so the
    cache holds every returned token; otherwise it is returned as ``pending_token``. ``static``: feed
    through that ``StaticDecoder`` (fixed shapes, CUDA graphs on a GPU); the tokens fed are appended to
    ``cache`` at the end, as the dynamic path leaves it.
    """
    n = max_new_tokens or gen.max_new_tokens
    if static is None:
        return _decode_loop(lambda tok, pos: decode_one_token(adapter, cache, tok, pos), adapter, first_logits,
                            pos, gen, n, stop_ids, on_token, cancel, generator, feed_last)
    static.begin(cache, n)
    try:
        return _decode_loop(static.step, adapter, first_logits, pos, gen, n, stop_ids, on_token, cancel, generator,
                            feed_last)
    finally:
        static.finish(cache)


def _decode_loop(feed: Callable[[int, int], torch.Tensor], adapter: ModelAdapter, first_logits: torch.Tensor,
                 pos: int, gen: GenerationConfig, n: int, stop_ids: Sequence[int] | None,
                 on_token: Callable[[int], None] | None, cancel: threading.Event | None,
                 generator: torch.Generator | None, feed_last: bool) -> DecodeResult:
    """The sampling loop of ``decode_n_tokens``; ``feed(token, pos)`` returns the next logits [1, V]."""
    stops = set(adapter.eos_token_ids if stop_ids is None else stop_ids)
    out: list[int] = []
    logits = first_logits
    for i in range(n):
        if cancel is not None and cancel.is_set():
            return DecodeResult(out, "cancelled", None, pos, None)
        tok = sample_token(logits, gen.temperature, gen.top_p, generator)
        if tok in stops:
            return DecodeResult(out, "stop", None, pos, None)
        out.append(tok)
        if on_token is not None:
            on_token(tok)
        if i == n - 1 and not feed_last:
            return DecodeResult(out, "length", None, pos, tok)
        logits = feed(tok, pos)
        pos += 1
    return DecodeResult(out, "length", None, pos, None)
