"""Token drop (memory.token_drop) against obviously-correct references, per model family (fp32, CPU).

1. At threshold 1.0 nothing is dropped: cache and logits are exactly those of the engine without token drop.
2. With dropping: the engine's cache and next-token logits equal one full HF forward over the kept tokens
   at their original positions (1-D: positions of the whole undropped sequence; Qwen2.5-VL: HF's own
   get_rope_index over the whole undropped sequence), then the kept columns.
3. After evictions: the cache equals the recorded per-chunk K/V re-rotated with the model's own RoPE tables
   to the contiguous layout (tests/test_engine_equivalence.py's reference), logits too.
4. The decision rule on hand-made embeddings; a scene cut keeps every token; a frozen frame keeps only the floor.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import tiny_adapter
from test_engine_equivalence import QUESTION, TOL, _question_logits_on, ingest_recorded, reference_cache
from vstream.config import from_name
from vstream.engine.core import Engine
from vstream.sources import Chunk
from vstream.engine.tokendrop import TokenDrop

FAMILIES = ["tiny-qwen2.5-vl", "tiny-llava-onevision", "tiny-smolvlm"]
#: thresholds at which the partly-changing scene below drops some tokens and keeps others (tiny random models)
MIXED = {"tiny-qwen2.5-vl": 0.7, "tiny-llava-onevision": 0.8, "tiny-smolvlm": 0.8}


def _engine(adapter, threshold, window=100, floor=0.1) -> Engine:
    cfg = from_name("tiny").replace(**{"memory.window_chunks": window, "memory.long_term": False,
                                       "memory.token_drop": threshold, "memory.token_drop_floor": floor})
    return Engine(adapter, cfg)


def scene_chunks(n: int, seed: int, frames: int = 2) -> list[Chunk]:
    """A fixed background with one 16x16 square of fresh noise per frame (part of every frame changes)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = []
    for i in range(n):
        fr = np.repeat(base[None], frames, axis=0).copy()  # [F, 32, 32, 3]
        for j in range(frames):
            y, x = rng.integers(0, 16, 2)
            fr[j, y:y + 16, x:x + 16] = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        out.append(Chunk(index=i, start_s=float(i), end_s=float(i + 1), frames=fr,
                         timestamps=[i + j / frames for j in range(frames)]))
    return out


def _ingest(eng, chunks):
    eng.start()
    reports, masks = [], []
    for ch in chunks:
        reports.append(eng.ingest(ch))
        masks.append(eng.last_keep.clone() if eng.last_keep is not None else None)
    return reports, masks


# ---- 1. nothing dropped ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_threshold_one_equals_engine_without_drop(name):
    adapter = tiny_adapter(name)
    chunks = scene_chunks(3, seed=1)
    chunks.append(Chunk(index=3, start_s=3.0, end_s=4.0, frames=chunks[2].frames.copy(), timestamps=[3.0, 3.5]))
    plain, dropping = _engine(adapter, None), _engine(adapter, 1.0)
    rp, _ = _ingest(plain, chunks)
    rd, masks = _ingest(dropping, chunks)  # the last chunk repeats the one before: similarity 1.0, still kept
    assert all(bool(m.all()) for m in masks)
    assert [r.visual_dropped for r in rd] == [0] * 4 and [r.n_tokens for r in rd] == [r.n_tokens for r in rp]
    assert dropping.visual_tokens_dropped == 0 and dropping.visual_tokens_kept == plain.visual_tokens_kept > 0
    for lp, ld in zip(plain.memory.cache.layers, dropping.memory.cache.layers):
        assert torch.equal(lp.keys, ld.keys) and torch.equal(lp.values, ld.values)
    _, _, lg_p, _, _ = plain.prepare(QUESTION, plain.snapshot())
    _, _, lg_d, _, _ = dropping.prepare(QUESTION, dropping.snapshot())
    assert torch.equal(lg_p, lg_d)


# ---- 2. dropping, nothing evicted: one full HF forward over the kept tokens ----------------------------------

def _full_positions(adapter, ids: torch.Tensor, chunk_tokens) -> torch.Tensor:
    """Positions HF gives the whole undropped sequence: [1, L] (1-D) or [3, 1, L] (Qwen2.5-VL, get_rope_index)."""
    if adapter.pos_dims == 1:
        return torch.arange(ids.shape[1]).unsqueeze(0)
    grids = torch.stack([g for g in chunk_tokens])  # [n_videos, 3]
    types = (ids == adapter.video_token_id).to(torch.int) * 2
    spg = torch.full((grids.shape[0],), adapter.second_per_grid())
    pos, _ = adapter.model.model.get_rope_index(ids, mm_token_type_ids=types, video_grid_thw=grids,
                                                second_per_grid_ts=spg)
    return pos  # [3, 1, L]


@pytest.mark.parametrize("name", FAMILIES)
def test_dropped_equals_full_forward_over_kept_tokens(name):
    adapter = tiny_adapter(name)
    chunks = scene_chunks(4, seed=2)
    eng = _engine(adapter, MIXED[name])
    reports, masks = _ingest(eng, chunks)
    dropped = sum(r.visual_dropped for r in reports)
    assert dropped > 0 and sum(r.visual_kept for r in reports[1:]) > len(reports[1:])  # a real mix
    # the whole undropped sequence: sinks, chunks, question (embeddings as the adapter feeds them)
    sink = adapter.embed_text(adapter.system_text(eng.config.system_prompt))
    question = adapter.embed_text(adapter.question_text(QUESTION))
    full = [adapter.embed_chunk(c.marker, c.frames) for c in chunks]
    grids = [adapter.preprocess(c.frames)[1] for c in chunks] if adapter.pos_dims == 3 else []
    ids = torch.cat([sink.input_ids] + [t.input_ids for t in full] + [question.input_ids], dim=1)  # [1, L]
    emb = torch.cat([sink.inputs_embeds] + [t.inputs_embeds for t in full] + [question.inputs_embeds], dim=1)
    pos = _full_positions(adapter, ids, grids)
    keep = torch.cat([torch.ones(sink.n_tokens, dtype=torch.bool)] + masks
                     + [torch.ones(question.n_tokens, dtype=torch.bool)])  # [L]
    assert int((~keep).sum()) == dropped

    def forward(p):
        out = adapter.model(inputs_embeds=emb[:, keep], position_ids=p, use_cache=True)
        return out.logits[0, -1].float(), out.past_key_values

    ref_logits, ref_cache = forward(pos[..., keep])
    n_ctx = int(keep.sum()) - question.n_tokens
    assert eng.memory.context_tokens == n_ctx
    for l, layer in enumerate(eng.memory.cache.layers):
        assert (layer.keys - ref_cache.layers[l].keys[:, :, :n_ctx]).abs().max().item() <= TOL
        assert (layer.values - ref_cache.layers[l].values[:, :, :n_ctx]).abs().max().item() <= TOL
    _, _, logits, _, _ = eng.prepare(QUESTION, eng.snapshot())
    assert (logits[0] - ref_logits).abs().max().item() <= TOL
    # the reference can fail: the same kept tokens packed at contiguous positions give other logits
    packed = torch.arange(int(keep.sum())).unsqueeze(0)
    packed = packed.unsqueeze(0).expand(3, 1, -1) if adapter.pos_dims == 3 else packed
    assert (forward(packed)[0] - ref_logits).abs().max().item() > 10 * TOL


# ---- 3. dropping, after evictions: re-rotated reference -----------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_dropped_after_eviction_equals_rerotated_reference(name):
    adapter = tiny_adapter(name)
    W = 2
    eng = _engine(adapter, MIXED[name], window=W)
    evicted = []
    eng.memory.on_evict = evicted.append
    chunks = scene_chunks(6, seed=3)
    records = ingest_recorded(adapter, eng, chunks)
    assert eng.visual_tokens_dropped > 0
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
    # evicted segments hold fewer tokens but the span of the undropped chunk (what the next start is computed from)
    for seg in evicted:
        whole = adapter.embed_chunk(chunks[seg.chunk_index].marker, chunks[seg.chunk_index].frames)
        assert seg.span == whole.span and seg.n_tokens <= whole.n_tokens
    assert any(seg.n_tokens < adapter.embed_chunk(chunks[seg.chunk_index].marker,
                                                   chunks[seg.chunk_index].frames).n_tokens for seg in evicted)


@pytest.mark.parametrize("name", FAMILIES)
def test_dropped_entries_from_store_equal_reference(name, tmp_path):
    """Dropped chunks go through the real long-term store (gapped rel_pos on disk) and come back exactly."""
    from memory.types import Retrieved
    from vstream.engine.longterm import open_long_term

    adapter = tiny_adapter(name)
    W = 2
    cfg = from_name("tiny").replace(**{"memory.window_chunks": W, "memory.ram_bytes": 0,
                                       "memory.token_drop": MIXED[name]})
    lt = open_long_term(adapter, cfg.memory, tmp_path / "mem")
    eng = Engine(adapter, cfg, lt)
    records = ingest_recorded(adapter, eng, scene_chunks(6, seed=5))
    assert len(lt) == 4 and eng.visual_tokens_dropped > 0
    forced = [Retrieved(segment=lt.store.get(i, device=adapter.device), score=0.0, entry_id=i) for i in (2, 0)]
    _, _, logits, _, _ = eng.prepare(QUESTION, eng.snapshot(), retrieved=forced)
    sinks, chunk_recs = records[0], records[1:]
    keys, values, next_pos = reference_cache(adapter, [sinks, chunk_recs[0], chunk_recs[2]] + chunk_recs[-W:])
    ref = _question_logits_on(adapter, keys, values, next_pos)
    assert (logits - ref).abs().max().item() <= TOL
    lt.close()


# ---- 4. the decision rule -----------------------------------------------------------------------------------

def test_rule_on_hand_made_embeddings():
    """Two cells, three frames; hand-computed cosines decide; the reference is the last *kept* token."""
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0],  # frame 0: no reference yet -> kept
                      [1.0, 0.3], [0.0, -1.0],  # frame 1: cos 0.958 (dropped at 0.9), cos -1 (kept)
                      [1.0, 0.6], [0.1, -1.0]])  # frame 2: vs kept frame-0 cell 0: cos 0.857 -> kept; 0.995 dropped
    frame = torch.tensor([0, 0, 1, 1, 2, 2])
    cell = torch.tensor([0, 1, 0, 1, 0, 1])
    td = TokenDrop(0.9, floor=0.0)
    res = td.keep(e, frame, cell, 2)
    assert res.keep.tolist() == [True, True, False, True, True, False] and (res.kept, res.dropped) == (4, 2)
    # across the chunk boundary the references are frame 2's cell 0 and frame 1's cell 1
    nxt = td.keep(torch.tensor([[1.0, 0.6], [0.0, 1.0], [5.0, 5.0]]), torch.tensor([0, 0, -1]),
                  torch.tensor([0, 1, -1]), 2)
    assert nxt.keep.tolist() == [False, True, True] and (nxt.kept, nxt.dropped) == (1, 1)  # non-grid token kept
    # the floor brings back the least similar dropped tokens
    td2 = TokenDrop(0.5, floor=0.5)
    td2.keep(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), torch.tensor([0, 1]), 2)
    again = td2.keep(torch.tensor([[1.0, 0.1], [0.2, 1.0]]), torch.tensor([0, 0]), torch.tensor([0, 1]), 2)
    assert again.keep.tolist() == [False, True]  # cos 0.995 vs 0.981: the second is less similar


def _still(index: int, img: np.ndarray, frames: int) -> Chunk:
    return Chunk(index=index, start_s=float(index), end_s=float(index + 1), frames=np.repeat(img[None], frames, 0),
                 timestamps=[index + j / frames for j in range(frames)])


@pytest.mark.parametrize("name", FAMILIES)
def test_scene_cut_keeps_all_and_frozen_frame_keeps_floor(name):
    adapter = tiny_adapter(name)
    rng = np.random.default_rng(7)
    a_img, b_img = (rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2))
    frames = 2 if adapter.pos_dims == 3 else 1  # one grid frame per chunk (Qwen: a temporal patch of 2 frames)
    floor = 0.1
    eng = _engine(adapter, 0.9, floor=floor)
    reports, _ = _ingest(eng, [_still(0, a_img, frames), _still(1, b_img, frames), _still(2, b_img, frames),
                               _still(3, b_img, frames)])
    n_vis = reports[0].visual_kept + reports[0].visual_dropped
    _, _, n_cells = adapter.visual_cells(adapter.embed_chunk("x", _still(0, a_img, frames).frames))
    assert reports[0].visual_dropped == 0  # first frame: nothing to compare with
    assert reports[1].visual_dropped == 0  # scene cut: every token changed
    want = max(1, math.ceil(floor * n_cells))
    for r in reports[2:]:  # frozen: only the floor survives, chunk after chunk
        assert r.visual_dropped == n_cells - want
        assert r.visual_kept == n_vis - n_cells + want  # LLaVA's newline is never dropped
    # thumbnail and time span unchanged by dropping
    from vstream.engine.core import make_thumbnail

    seg = eng.memory.live[-1]
    last = _still(3, b_img, frames).frames
    assert (seg.start_s, seg.end_s) == (3.0, 4.0)
    assert seg.thumbnail == make_thumbnail(last[len(last) // 2], eng.config.memory.thumbnail_px)


def test_unsupported_threshold_and_family():
    with pytest.raises(ValueError, match="cosine similarity"):
        TokenDrop(1.5)
    from vstream.models.registry import PRESETS

    if "tiny-qwen3-vl" in PRESETS:  # deepstack inputs per visual token: refused when the engine is built
        with pytest.raises(ValueError, match="not supported"):
            _engine(tiny_adapter("tiny-qwen3-vl"), 0.9)
    with pytest.raises(ValueError, match="token_drop"):
        from_name("tiny").replace(**{"memory.token_drop": 2.0}).validate()


def test_watch_token_drop_json_stats(capsys):
    """`vstream watch --token-drop T --json`: the stats line carries the totals; chunk reports add up to them."""
    import json

    from vstream.cli.main import main

    src = "synthetic:seed=2,duration=5,fps=2,size=64x64"
    code = main(["watch", src, "--model", "tiny-smolvlm", "--token-drop", "0.9", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    stats = [json.loads(l) for l in out.splitlines() if l.strip() and json.loads(l)["type"] == "stats"]
    assert len(stats) == 1
    st = stats[0]
    adapter = tiny_adapter("tiny-smolvlm")
    assert st["visual_tokens_kept"] + st["visual_tokens_dropped"] == st["chunks"] * 2 * adapter.image_seq_len
    assert st["visual_tokens_dropped"] > 0 and st["visual_tokens_kept"] >= st["chunks"]



@pytest.mark.parametrize("ragged", [True, False], ids=["ragged", "padded"])
@pytest.mark.parametrize("name", FAMILIES)
def test_batched_perception_with_token_drop_equals_each_stream_alone(name, ragged):
    """The fleet's batched path drops the same tokens and leaves the same caches as Engine.ingest alone."""
    from vstream.engine.batching import perceive_batch

    adapter = tiny_adapter(name)
    adapter.language_model().config._attn_implementation = "sdpa"
    streams = [scene_chunks(4, seed=11), scene_chunks(4, seed=12), scene_chunks(4, seed=13)]
    alone = [_engine(adapter, MIXED[name], window=2) for _ in streams]
    together = [_engine(adapter, MIXED[name], window=2) for _ in streams]
    for e in alone + together:
        e.start()
    reps_alone, reps_together = [], []
    for i in range(4):
        reps_alone += [e.ingest(s[i]) for e, s in zip(alone, streams)]
        reps_together += perceive_batch(together, [s[i] for s in streams], ragged=ragged)
    assert [(r.visual_kept, r.visual_dropped) for r in reps_alone] == \
        [(r.visual_kept, r.visual_dropped) for r in reps_together]
    assert sum(r.visual_dropped for r in reps_alone) > 0
    for ea, eb in zip(alone, together):
        assert ea.memory.next_pos == eb.memory.next_pos
        for la, lb in zip(ea.memory.cache.layers, eb.memory.cache.layers):
            assert la.keys.shape == lb.keys.shape
            assert (la.keys - lb.keys).abs().max().item() <= TOL
            assert (la.values - lb.values).abs().max().item() <= TOL
