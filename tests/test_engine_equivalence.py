"""The engine against slow, obviously-correct references, per model family (fp32, CPU, tiny presets).

1. Nothing evicted: streaming chunk by chunk gives the logits of one full forward pass of the HF model.
2. After evictions: the engine's cache equals a reference built from the same per-chunk K/V, un-rotated
   with the model's own cos/sin at their original positions and rotated again at contiguous positions;
   the next-token logits match.
3. With retrieved long-term entries: | sinks | retrieved | live | gives the reference's logits.
"""
from __future__ import annotations

import pytest
import torch

from conftest import make_chunks, tiny_adapter
from memory.manager import fill_cache
from vstream.config import from_name
from memory.types import Retrieved
from vstream.engine.core import Engine
from vstream.models.base import rotate_half

TOL = 1e-4
FAMILIES = ["tiny-qwen2.5-vl", "tiny-qwen3-vl", "tiny-llava-onevision", "tiny-smolvlm"]
QUESTION = "What happened in the video?"


def _engine(adapter, window: int, text_tokens: int = 64) -> Engine:
    cfg = from_name("tiny").replace(**{"memory.window_chunks": window, "memory.long_term": False,
                                       "memory.text_window_tokens": text_tokens})
    eng = Engine(adapter, cfg)
    return eng


class Recorder:
    """Wraps adapter.forward to keep every prefill's raw K/V and the position ids it ran at."""

    def __init__(self, adapter) -> None:
        self.adapter = adapter
        self.records: list[tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]] = []
        self._orig = adapter.forward

        def forward(inputs_embeds, position_ids, cache, logits="last", **lm_inputs):
            out = self._orig(inputs_embeds, position_ids, cache, logits, **lm_inputs)
            n = inputs_embeds.shape[1]
            self.records.append(([l.keys[:, :, -n:].clone() for l in cache.layers],
                                 [l.values[:, :, -n:].clone() for l in cache.layers], position_ids.clone()))
            return out

        adapter.forward = forward

    def close(self) -> None:
        del self.adapter.forward  # back to the class method


def ingest_recorded(adapter, eng: Engine, chunks) -> list:
    """Start the engine and ingest ``chunks`` while recording every prefill's raw K/V and positions."""
    rec = Recorder(adapter)
    try:
        eng.start()
        for ch in chunks:
            eng.ingest(ch)
    finally:
        rec.close()
    assert len(rec.records) == 1 + len(chunks)  # sinks + one prefill per chunk
    return rec.records


def _cos_sin(adapter, position_ids: torch.Tensor):
    dummy = torch.zeros(1, dtype=torch.float32)
    cos, sin = adapter.rotary()(dummy, position_ids)  # [1, S, D] each, the model's own RoPE tables
    return cos.unsqueeze(1), sin.unsqueeze(1)  # [1, 1, S, D]


def reposition(adapter, keys: torch.Tensor, old_pos: torch.Tensor, new_pos: torch.Tensor) -> torch.Tensor:
    """Slow reference: undo the model's RoPE at old_pos, apply it at new_pos (keys [1, H, S, D])."""
    cos, sin = _cos_sin(adapter, old_pos)
    raw = keys * cos - rotate_half(keys) * sin  # rotation by -theta
    cos2, sin2 = _cos_sin(adapter, new_pos)
    return raw * cos2 + rotate_half(raw) * sin2


def _span(pos: torch.Tensor) -> int:
    p = pos.reshape(pos.shape[0], -1) if pos.dim() == 3 else pos
    return int((p - p[..., :1]).max().item()) + 1


def reference_cache(adapter, parts):
    """parts: list of (keys, values, original position ids) placed contiguously from position 0."""
    L = adapter.num_layers
    ks, vs = [[] for _ in range(L)], [[] for _ in range(L)]
    start = 0
    for keys, values, pos in parts:
        rel = pos - pos.reshape(pos.shape[0], -1)[:, :1].reshape(*([pos.shape[0]] + [1] * (pos.dim() - 1)))
        new = rel + start
        for l in range(L):
            ks[l].append(reposition(adapter, keys[l], pos, new))
            vs[l].append(values[l])
        start += _span(pos)
    keys = [torch.cat(k, dim=-2) for k in ks]
    values = [torch.cat(v, dim=-2) for v in vs]
    return keys, values, start


def _question_logits_on(adapter, keys, values, start):
    cache = fill_cache(adapter.new_cache(), keys, values)
    tokens = adapter.embed_text(adapter.question_text(QUESTION))
    return adapter.forward(tokens.inputs_embeds, adapter.position_ids(tokens.rel_pos, start), cache)


@pytest.mark.parametrize("name", FAMILIES)
def test_streaming_equals_full_forward(name):
    adapter = tiny_adapter(name)
    eng = _engine(adapter, window=100)
    eng.start()
    chunks = make_chunks(4, frames=2, seed=1)
    for ch in chunks:
        eng.ingest(ch)
    _, _, logits, _, _ = eng.prepare(QUESTION, eng.snapshot())
    pieces = [adapter.system_text(eng.config.system_prompt)] + [(c.marker, c.frames) for c in chunks] \
        + [adapter.question_text(QUESTION)]
    ref = adapter.reference_logits(pieces)
    diff = (logits[0] - ref).abs().max().item()
    assert diff <= TOL, f"{name}: streaming vs full forward differ by {diff}"
    # the comparison can fail: a different last chunk changes the reference
    other = make_chunks(4, frames=2, seed=2)
    ref2 = adapter.reference_logits(pieces[:-2] + [(other[-1].marker, other[-1].frames), pieces[-1]])
    assert (ref2 - ref).abs().max().item() > 100 * TOL


@pytest.mark.parametrize("name", FAMILIES)
def test_evicted_cache_equals_reference(name):
    adapter = tiny_adapter(name)
    W = 3
    eng = _engine(adapter, window=W)
    chunks = make_chunks(8, frames=2, seed=3)
    records = ingest_recorded(adapter, eng, chunks)
    sinks, chunk_recs = records[0], records[1:]
    keys, values, next_pos = reference_cache(adapter, [sinks] + chunk_recs[-W:])
    mm = eng.memory
    assert [s.chunk_index for s in mm.live] == [c.index for c in chunks[-W:]]
    assert mm.next_pos == next_pos
    for l in range(adapter.num_layers):
        assert mm.cache.layers[l].keys.shape == keys[l].shape
        assert (mm.cache.layers[l].keys - keys[l]).abs().max().item() <= TOL
        assert torch.equal(mm.cache.layers[l].values, values[l])
    _, _, logits, _, _ = eng.prepare(QUESTION, eng.snapshot())
    ref = _question_logits_on(adapter, keys, values, next_pos)
    assert (logits - ref).abs().max().item() <= TOL
    # and the reference is sensitive to positions: a one-position gap is detectably different
    gapped = _question_logits_on(adapter, keys, values, next_pos + 1)
    assert (gapped - ref).abs().max().item() > 10 * TOL


@pytest.mark.parametrize("name", FAMILIES)
def test_retrieved_context_equals_reference(name):
    adapter = tiny_adapter(name)
    W = 2
    eng = _engine(adapter, window=W)
    evicted = []
    eng.memory.on_evict = evicted.append
    records = ingest_recorded(adapter, eng, make_chunks(7, frames=2, seed=4))
    assert [s.chunk_index for s in evicted] == [0, 1, 2, 3, 4]
    pick = [evicted[3], evicted[1]]  # given out of order: assembly must sort them chronologically
    forced = [Retrieved(segment=s, score=1.0, entry_id=i) for i, s in enumerate(pick)]
    _, _, logits, used, _ = eng.prepare(QUESTION, eng.snapshot(), retrieved=forced)
    sinks, chunk_recs = records[0], records[1:]
    parts = [sinks, chunk_recs[1], chunk_recs[3]] + chunk_recs[-W:]
    keys, values, next_pos = reference_cache(adapter, parts)
    ref = _question_logits_on(adapter, keys, values, next_pos)
    assert (logits - ref).abs().max().item() <= TOL
    assert len(used) == 2


@pytest.mark.parametrize("name", FAMILIES)
def test_retrieved_from_store_equals_reference(name, tmp_path):
    """Entries go to the real long-term store (disk + RAM tiers) and come back by id, exactly."""
    from vstream.engine.longterm import open_long_term

    adapter = tiny_adapter(name)
    W = 2
    cfg = from_name("tiny").replace(**{"memory.window_chunks": W, "memory.ram_bytes": 0})  # force the disk tier
    lt = open_long_term(adapter, cfg.memory, tmp_path / "mem")
    eng = Engine(adapter, cfg, lt)
    records = ingest_recorded(adapter, eng, make_chunks(6, frames=2, seed=6))
    assert len(lt) == 4
    forced = [Retrieved(segment=lt.store.get(i, device=adapter.device), score=0.0, entry_id=i) for i in (2, 0)]
    _, _, logits, _, _ = eng.prepare(QUESTION, eng.snapshot(), retrieved=forced)
    sinks, chunk_recs = records[0], records[1:]
    keys, values, next_pos = reference_cache(adapter, [sinks, chunk_recs[0], chunk_recs[2]] + chunk_recs[-W:])
    ref = _question_logits_on(adapter, keys, values, next_pos)
    assert (logits - ref).abs().max().item() <= TOL
    lt.close()
