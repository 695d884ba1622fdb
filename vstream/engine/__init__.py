"""Perception and answering on one model: a chunk becomes tokens, is prefilled against the bounded
KV memory and committed (``core.Engine``); prefill/decode as free functions (``generate``); batched
prefill over many streams (``batching``); visual token drop (``tokendrop``); the long-term store opened
from a model and config (``longterm``).
"""
from __future__ import annotations

from vstream import lazy_exports

_EXPORTS = {"Engine": "core", "LongTermMemory": "longterm", "evidence_source": "evidence", "make_thumbnail": "core", "prefill": "generate", "decode_one_token": "generate", "decode_n_tokens": "generate", "DecodeResult": "generate", "TextStreamer": "generate", "perceive_batch": "batching", "prefill_batch": "batching", "TokenDrop": "tokendrop", "open_long_term": "longterm"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
