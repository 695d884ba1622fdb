"""Eviction bookkeeping of the active context: exact order, sinks kept, contiguous positions, bounds."""
from __future__ import annotations

import pytest
import torch

from _kv_reference import reposition
from conftest import make_chunks, tiny_adapter
from memory.manager import MemoryManager, concat_text, slice_text
from memory.segment import SINK, TEXT, VISION, Segment
from memory.window import WindowPolicy
from vstream.config import from_name
from vstream.engine.core import Engine

# Positions are checked with a real model's RoPE tables (its HF rotary module's cos/sin), the manager
# rotates with the adapter's delta rotation: the expected keys never come from the code under test.
MODEL = tiny_adapter("tiny-llava-onevision")
L, H, D = 2, 2, MODEL.head_dim


def rotate(keys, delta):
    return MODEL.rotate_keys(keys, delta)


def at(keys: torch.Tensor, pos: int, frm: int = 0) -> torch.Tensor:
    """Keys [1, H, n, D] at positions frm..frm+n-1 moved to pos..pos+n-1 by the model's tables."""
    n = keys.shape[-2]
    rel = torch.arange(n).unsqueeze(0)
    return reposition(MODEL, keys, rel + frm, rel + pos)


def seg(kind: str, n: int, idx: int | None = None, t: float | None = None) -> Segment:
    g = torch.Generator().manual_seed(1000 + (idx or 0) * 7 + n)
    ks = tuple(torch.randn(1, H, n, D, generator=g) for _ in range(L))
    vs = tuple(torch.randn(1, H, n, D, generator=g) for _ in range(L))
    rel = torch.arange(n).unsqueeze(0)
    return Segment(kind=kind, keys=ks, values=vs, rel_pos=rel, chunk_index=idx, start_s=t, end_s=None if t is None
                   else t + 1, token_ids=tuple(range(100 * (idx or 0), 100 * (idx or 0) + n))
                   if kind != VISION else ())


def manager(W=4, text=10, head=3, tail=3, evicted=None) -> MemoryManager:
    from transformers import DynamicCache

    mm = MemoryManager(rotate=rotate, new_cache=DynamicCache, window_chunks=W, text_window_tokens=text,
                       prev_text_head=head, prev_text_tail=tail,
                       on_evict=(evicted.append if evicted is not None else None))
    return mm


def _append(mm: MemoryManager, s: Segment, sink: bool = False):
    """What the engine does: prefill puts the segment's keys at next_pos at the end of the cache, then commit."""
    start = mm.next_pos
    keys = [at(k, start) for k in s.keys]
    for l in range(L):
        mm.cache.update(keys[l], s.values[l], l)
    return mm.commit_sink(s) if sink else mm.commit(s)


def test_policy_exact_eviction_order():
    p = WindowPolicy(window_chunks=2, text_window_tokens=5)
    v = [seg(VISION, 3, i) for i in range(4)]
    t = [seg(TEXT, 2, 10 + i) for i in range(4)]
    live = [v[0], t[0], v[1], t[1], v[2], t[2], v[3], t[3]]
    out = p.evictions(live)
    # oldest vision beyond W=2, and text beyond 5 tokens newest-first (t3, t2 fit = 4 tokens; t1 would make 6)
    assert out == [v[0], t[0], v[1], t[1]]
    with pytest.raises(ValueError):
        WindowPolicy(0, 5)


@pytest.mark.parametrize("n_chunks", [1, 4, 5, 40])  # 1, W, W+1, 10·W with W = 4
def test_bookkeeping_after_n_chunks(n_chunks):
    W = 4
    evicted: list[Segment] = []
    mm = manager(W=W, evicted=evicted)
    sink = seg(SINK, 5)
    _append(mm, sink, sink=True)
    chunks = [seg(VISION, 3 + (i % 2), i, float(i)) for i in range(n_chunks)]
    for c in chunks:
        _append(mm, c)
    kept = chunks[-W:]
    assert [s.chunk_index for s in mm.live] == [c.chunk_index for c in kept]
    assert [s.chunk_index for s in evicted] == [c.chunk_index for c in chunks[:-W]]
    assert mm.sinks == [sink]
    # contiguous positions: the cache equals every segment placed back to back from 0
    assert mm.next_pos == sink.span + sum(c.span for c in kept)
    assert mm.context_tokens == sink.n_tokens + sum(c.n_tokens for c in kept)
    pos = 0
    for s in [sink] + kept:
        for l in range(L):
            got = mm.cache.layers[l].keys[:, :, pos:pos + s.n_tokens]
            assert torch.allclose(got, at(s.keys[l], pos), atol=1e-5)
            assert torch.equal(mm.cache.layers[l].values[:, :, pos:pos + s.n_tokens], s.values[l])
        pos += s.n_tokens
    assert mm.evicted_total == max(0, n_chunks - W)


def test_text_window_moves_to_bounded_previous_text():
    mm = manager(W=2, text=4, head=3, tail=3)
    _append(mm, seg(SINK, 2), sink=True)
    texts = []
    for i in range(6):
        _append(mm, seg(VISION, 3, i, float(i)))
        t = seg(TEXT, 2, 100 + i, float(i))
        texts.append(t)
        _append(mm, t)
        assert sum(s.n_tokens for s in mm.live if s.kind == TEXT) <= 4
        assert sum(s.n_tokens for s in mm.prev_text) <= 6
    # text that left: texts[0..3] (8 tokens) -> head keeps the first 3, tail the last 3
    assert mm.prev_head.token_ids == texts[0].token_ids + texts[1].token_ids[:1]
    assert mm.prev_tail.token_ids == texts[2].token_ids[1:] + texts[3].token_ids
    # previous text K/V is the original K/V, only re-positioned: the head's third token is text 1's first,
    # now at position 2 of the block; the tail starts inside text 2; and the cache holds the block from
    # position 2 (after the sinks), then the live window
    for l in range(L):
        head_k = torch.cat([texts[0].keys[l], at(texts[1].keys[l][:, :, :1], 2)], dim=-2)
        tail_k = torch.cat([at(texts[2].keys[l][:, :, 1:], 0, frm=1), at(texts[3].keys[l], 1)], dim=-2)
        assert torch.allclose(mm.prev_head.keys[l], head_k, atol=1e-5)
        assert torch.allclose(mm.prev_tail.keys[l], tail_k, atol=1e-5)
        assert torch.equal(mm.prev_head.values[l], torch.cat([texts[0].values[l], texts[1].values[l][:, :, :1]], -2))
        assert torch.equal(mm.prev_tail.values[l], torch.cat([texts[2].values[l][:, :, 1:], texts[3].values[l]], -2))
        got = mm.cache.layers[l].keys
        assert torch.allclose(got[:, :, 2:5], at(head_k, 2), atol=1e-5)
        assert torch.allclose(got[:, :, 5:8], at(tail_k, 5), atol=1e-5)
        pos = 8
        for s in mm.live:
            assert torch.allclose(got[:, :, pos:pos + s.n_tokens], at(s.keys[l], pos), atol=1e-5)
            pos += s.n_tokens
        assert pos == got.shape[-2] == mm.next_pos


def test_slice_and_concat_keep_kv_exact():
    a, b = seg(TEXT, 4, 1), seg(TEXT, 3, 2)
    ab = concat_text([a, b], rotate)
    assert ab.n_tokens == 7 and ab.span == 7
    back = slice_text(ab, 4, 7, rotate)
    for l in range(L):
        assert torch.allclose(ab.keys[l][:, :, :4], a.keys[l], atol=1e-5)
        assert torch.allclose(ab.keys[l][:, :, 4:], at(b.keys[l], 4), atol=1e-5)  # b follows a
        assert torch.allclose(back.keys[l], b.keys[l], atol=1e-5)
        assert torch.equal(back.values[l], b.values[l])
    mid = slice_text(ab, 2, 6, rotate)  # a's last two tokens and b's first two, restarting at 0
    for l in range(L):
        want = torch.cat([at(a.keys[l][:, :, 2:], 0, frm=2), at(b.keys[l][:, :, :2], 2)], dim=-2)
        assert torch.allclose(mid.keys[l], want, atol=1e-5)
    assert mid.token_ids == a.token_ids[2:] + b.token_ids[:2]
    with pytest.raises(ValueError):
        slice_text(ab, 3, 3, rotate)


def test_engine_cache_bound_after_20W_chunks():
    """Bound: after 20·W chunks the cache holds sinks + W chunks + text window, no more."""
    adapter = tiny_adapter("tiny-llava-onevision")
    W = 3
    cfg = from_name("tiny").replace(**{"memory.window_chunks": W, "memory.long_term": False,
                                       "memory.text_window_tokens": 40})
    eng = Engine(adapter, cfg)
    eng.start()
    sink_tokens = eng.memory.context_tokens
    per_chunk = None
    for i, ch in enumerate(make_chunks(20 * W, frames=2, size=16, seed=5)):
        rep = eng.ingest(ch)
        per_chunk = rep.n_tokens
        if i % 7 == 0:
            eng.add_text(f"note {i}: something was said here")
        mm = eng.memory
        text_tokens = sum(s.n_tokens for s in mm.live if s.kind == TEXT)
        assert text_tokens <= 40
        assert sum(1 for s in mm.live if s.kind == VISION) <= W
        bound = sink_tokens + W * per_chunk + 40 + cfg.memory.prev_text_head + cfg.memory.prev_text_tail
        assert mm.context_tokens <= bound
    mm = eng.memory
    assert [s.chunk_index for s in mm.live if s.kind == VISION] == list(range(20 * W - W, 20 * W))
    assert mm.context_tokens == sink_tokens + sum(s.n_tokens for s in mm.prev_text) + sum(
        s.n_tokens for s in mm.live)
