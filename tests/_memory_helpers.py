"""Shared helpers for the long-term memory tests: deterministic segments and a tiny offline text embedder."""
from __future__ import annotations

import hashlib
import re

import numpy as np
import torch

from memory.segment import Segment
from memory.types import StoreMeta

L, H, D = 2, 2, 8


def meta(model: str = "tiny-test", dtype: str = "float32", layers: int = L, heads: int = H, head_dim: int = D,
         pos_dims: int = 1) -> StoreMeta:
    return StoreMeta(model=model, family="test", num_layers=layers, num_kv_heads=heads, head_dim=head_dim,
                     pos_dims=pos_dims, dtype=dtype)


def make_segment(eid: int, m: StoreMeta | None = None, tokens: int = 6, text: str | None = None,
                 summary: bool = True) -> Segment:
    """A segment whose every byte is a deterministic function of ``eid``."""
    m = m or meta()
    g = torch.Generator().manual_seed(1000 + eid)
    shape = (1, m.num_kv_heads, tokens, m.head_dim)
    dt = m.torch_dtype
    keys = tuple((torch.randn(shape, generator=g) * (1 + l)).to(dt) for l in range(m.num_layers))
    values = tuple(torch.randn(shape, generator=g).to(dt) for _ in range(m.num_layers))
    rel = torch.arange(tokens).unsqueeze(0).expand(m.pos_dims, -1).contiguous()
    ks = (torch.stack([k[0].float().mean(1).reshape(-1) for k in keys]) if summary else None)  # [L, H*D]
    return Segment("vision", keys, values, rel, start_s=float(eid), end_s=float(eid) + 1.0,
                   text=f"chunk {eid}" if text is None else text, key_summary=ks,
                   thumbnail=hashlib.sha256(str(eid).encode()).digest() + bytes([eid % 256]), chunk_index=eid)


def same_kv(a: Segment, b: Segment) -> bool:
    return (len(a.keys) == len(b.keys) and all(torch.equal(x, y) for x, y in zip(a.keys, b.keys))
            and all(torch.equal(x, y) for x, y in zip(a.values, b.values)) and torch.equal(a.rel_pos, b.rel_pos))


class HashEmbedder:
    """Bag-of-words hashing embedder: deterministic and offline (the real MiniLM is tested elsewhere)."""

    name = "hash-bow"
    dim = 64

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z0-9]+", t.lower()):
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
        n = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(n, 1e-12)
