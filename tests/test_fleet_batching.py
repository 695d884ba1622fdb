"""Batched perception equals each stream run alone through the single-stream engine (per family, fp32).

Three streams with different context lengths (one has extra text, one has more chunks, one has frames of
another size), both attention paths (ragged: per-row attention registered with transformers; padded: a
4-D mask over left-padded caches), a 2-chunk window so chunks are evicted into long-term memory, then questions that retrieve
from it. The reference is every stream ingested alone with ``Engine.ingest``, whose equivalence to HF's
full forward is proven in test_engine_equivalence.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_chunks, tiny_adapter
from vstream.engine.batching import batch_mask, perceive_batch
from vstream.config import from_name
from vstream.engine.core import Engine
from vstream.engine.longterm import open_long_term

TOL = 1e-4
QUESTION = "What happened in the video?"


def _engine(adapter) -> Engine:
    cfg = from_name("tiny").replace(**{"memory.window_chunks": 2, "memory.retrieve_k": 2,
                                       "memory.text_window_tokens": 64})
    lt = open_long_term(adapter, cfg.memory, None)
    eng = Engine(adapter, cfg, lt)
    eng.start()
    return eng


def _streams():
    """Per stream: chunks before batching (alone), extra text, chunks ingested batched."""
    a = make_chunks(6, seed=1)
    b = make_chunks(4, seed=2, size=48)  # another frame size (another grid for Qwen2.5-VL)
    c = make_chunks(5, seed=3)
    return [(a[:2], None, a[2:]), ([], "an earlier remark about the scene", b), (c[:1], None, c[1:])]


def _run(adapter, batched: bool, ragged: bool | None = None) -> tuple[list[Engine], list[int]]:
    engines = []
    plans = _streams()
    for pre, text, _ in plans:
        eng = _engine(adapter)
        for ch in pre:
            eng.ingest(ch)
        if text:
            eng.add_text(text, at_s=0.0)
        engines.append(eng)
    rest = [list(p[2]) for p in plans]
    first = [e.memory.context_tokens for e in engines]
    while any(rest):
        live = [i for i in range(len(rest)) if rest[i]]
        if batched:
            perceive_batch([engines[i] for i in live], [rest[i].pop(0) for i in live], ragged=ragged)
        else:
            for i in live:
                engines[i].ingest(rest[i].pop(0))
    return engines, first


@pytest.mark.parametrize("ragged", [True, False], ids=["ragged", "padded"])
@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-llava-onevision", "tiny-smolvlm"])
def test_batched_perception_equals_each_stream_alone(name, ragged):
    torch.manual_seed(0)
    adapter = tiny_adapter(name)
    adapter.language_model().config._attn_implementation = "sdpa"  # the reference runs on plain SDPA
    alone, lengths = _run(adapter, batched=False)
    together, _ = _run(adapter, batched=True, ragged=ragged)
    assert len(set(lengths)) == 3, "the three streams must enter the first batch with different context lengths"
    for ea, eb in zip(alone, together):
        ma, mb = ea.memory, eb.memory
        assert ma.evicted_total > 0 and ma.evicted_total == mb.evicted_total
        assert ma.next_pos == mb.next_pos and len(ea.long_term) == len(eb.long_term) > 0
        for la, lb in zip(ma.cache.layers, mb.cache.layers):
            assert la.keys.shape == lb.keys.shape
            assert (la.keys - lb.keys).abs().max().item() <= TOL
            assert (la.values - lb.values).abs().max().item() <= TOL
        for sa, sb in zip(ma.live, mb.live):
            if sa.key_summary is not None:
                assert (sa.key_summary - sb.key_summary).abs().max().item() <= TOL
        # the question retrieves the same long-term entries and gets the same next-token logits
        _, _, la_, ra, _ = ea.prepare(QUESTION, ea.snapshot())
        _, _, lb_, rb, _ = eb.prepare(QUESTION, eb.snapshot())
        assert [r.entry_id for r in ra] == [r.entry_id for r in rb] and ra
        assert (la_ - lb_).abs().max().item() <= TOL
    for e in alone + together:
        e.long_term.close()


def test_batch_mask_by_hand():
    # row 0: 2 cached of 3 slots, 2 new of 3; row 1: 3 cached, 3 new
    m = batch_mask([2, 3], [2, 3], torch.device("cpu"))[:, 0].int().numpy()
    want0 = np.array([[0, 1, 1, 1, 0, 0],
                      [0, 1, 1, 1, 1, 0],
                      [0, 0, 0, 0, 0, 1]])  # padded query: itself only
    want1 = np.array([[1, 1, 1, 1, 0, 0],
                      [1, 1, 1, 1, 1, 0],
                      [1, 1, 1, 1, 1, 1]])
    assert (m[0] == want0).all() and (m[1] == want1).all()


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-llava-onevision", "tiny-smolvlm"])
def test_fleet_memories_equal_sessions_on_the_same_sources(name):
    """End to end: a Fleet over three synthetic streams leaves each stream's memory as a Session on that
    stream alone does (readers, chunking, batching, evictions)."""
    from vstream.api import Agent
    from vstream.fleet.core import Fleet
    from vstream.sources import SyntheticSource

    adapter = tiny_adapter(name)
    adapter.language_model().config._attn_implementation = "sdpa"
    agent = Agent(adapter, from_name("tiny").replace(**{"memory.window_chunks": 2}))

    def src(i):
        return SyntheticSource(seed=i, duration_s=3 + i, fps=4, size=(40 + 8 * i, 32))

    alone = []
    for i in range(3):
        with agent.watch(src(i), background=False) as s:
            s.run_to_end()
            alone.append(([l.keys for l in s.engine.memory.cache.layers], s.engine.memory.chunks_ingested))
    with Fleet(agent) as fleet:
        for i in range(3):
            fleet.add(f"s{i}", src(i))
        for i in range(3):
            assert fleet.stream(f"s{i}").wait_chunks(3 + i, timeout=60)
        assert fleet.stats()["total"]["mean_batch"] > 1
        for i, (keys, n) in enumerate(alone):
            mm = fleet.stream(f"s{i}").engine.memory
            assert mm.chunks_ingested == n == 3 + i
            for k, layer in zip(keys, mm.cache.layers):
                assert k.shape == layer.keys.shape and (k - layer.keys).abs().max().item() <= TOL
