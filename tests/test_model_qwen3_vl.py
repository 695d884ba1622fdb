"""Qwen3-VL adapter: streaming prefill == HF's own full forward (interleaved M-RoPE, DeepStack, timestamps)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vstream.models.qwen3_vl import Qwen3VLAdapter, patch_times
from vstream.models.qwen_vl import QWEN_SPECIAL_TOKENS, real_id_tokenizer

TOL = 1e-4


@pytest.fixture(scope="module")
def adapter() -> Qwen3VLAdapter:
    return Qwen3VLAdapter.random("tiny", device="cpu", dtype=torch.float32, seed=0)


def _frames(seed: int, n: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _pieces(adapter) -> list:
    # 2 frames, 4 frames (two temporal patches), 3 frames (odd: last repeated); square, wide and portrait
    return [
        adapter.system_text("You watch a stream."),
        ("Time=0.0-1.0s", _frames(1, 2, 64, 64)),
        ("Time=1.0-2.0s", _frames(2, 4, 80, 130)),
        ("Time=2.0-3.0s", _frames(3, 3, 100, 64)),
        adapter.question_text("what happened?"),
    ]


def _stream(adapter, pieces, start: int = 0, deepstack: bool = True):
    cache = adapter.new_cache()
    toks, starts, logits = [], [], None
    for p in pieces:
        t = adapter.embed_text(p) if isinstance(p, str) else adapter.embed_chunk(*p)
        extra = t.lm_inputs if deepstack else {}
        logits = adapter.forward(t.inputs_embeds, adapter.position_ids(t.rel_pos, start), cache, **extra)
        toks.append(t)
        starts.append(start)
        start += t.span
    return logits[0], cache, toks, starts


def test_streaming_equals_full_forward(adapter):
    pieces = _pieces(adapter)
    logits, _, toks, starts = _stream(adapter, pieces)
    ref = adapter.reference_logits(pieces)
    assert (logits - ref).abs().max().item() <= TOL
    # DeepStack matters: the same stream without the injected features is far from HF's forward
    no_ds, _, _, _ = _stream(adapter, pieces, deepstack=False)
    assert (no_ds - ref).abs().max().item() > 100 * TOL
    # positions: each chunk's, shifted by its start, are HF's own whole-sequence positions
    ids = torch.cat([t.input_ids for t in toks], dim=1)  # [1, S]
    ours = torch.cat([t.rel_pos + s for t, s in zip(toks, starts)], dim=1)  # [3, S]
    grids = torch.stack([adapter.preprocess(p[1])[1] for p in pieces if isinstance(p, tuple)])
    hf, _ = adapter.model.model.get_rope_index(ids, mm_token_type_ids=(ids == adapter.video_token_id).int() * 2,
                                               video_grid_thw=grids)
    assert torch.equal(ours, hf[:, 0])
    # the next segment starts where HF puts the token after the chunk
    for t, s, nxt in zip(toks[:-1], starts[:-1], starts[1:]):
        assert nxt == s + t.span


def test_chunk_layout_has_timestamps_per_temporal_patch(adapter):
    t = adapter.embed_chunk("Time=4.0-6.0s", _frames(5, 4, 64, 96))
    text = adapter.tokenizer.decode(t.input_ids[0].tolist())
    per = text.count("<|video_pad|>") // 2
    assert text == ("<4.2 seconds><|vision_start|>" + "<|video_pad|>" * per + "<|vision_end|>"
                    "<5.2 seconds><|vision_start|>" + "<|video_pad|>" * per + "<|vision_end|>")
    assert t.n_vision == 2 * per and t.lm_inputs["visual_pos_masks"].sum() == t.n_vision
    assert len(t.lm_inputs["deepstack_visual_embeds"]) == adapter.deepstack_layers == 2
    assert all(d.shape == (t.n_vision, adapter.hidden_size) for d in t.lm_inputs["deepstack_visual_embeds"])
    # the processor's rule: mean of each patch's first and last frame time; an odd count repeats the last frame
    assert patch_times("Time=0.0-1.0s", 3, 2, 2.0) == pytest.approx([(0 + 1 / 3) / 2, 2 / 3])
    with pytest.raises(ValueError):
        adapter.embed_chunk("chunk 3", _frames(0, 2, 64, 64))


def test_delta_rotation_matches_model_rope(adapter):
    """Keys computed at p, rotated by d, equal keys computed at p + d (the model's own interleaved RoPE)."""
    pieces = _pieces(adapter)[:3]
    d = 41
    _, c0, _, _ = _stream(adapter, pieces, start=0)
    _, cd, _, _ = _stream(adapter, pieces, start=d)
    for l0, ld in zip(c0.layers, cd.layers):
        assert (adapter.rotate_keys(l0.keys, d) - ld.keys).abs().max().item() <= TOL
        assert (l0.values - ld.values).abs().max().item() <= TOL
    assert (c0.layers[0].keys - cd.layers[0].keys).abs().max().item() > 1e-3


def test_published_configs():
    tok = real_id_tokenizer()
    # Qwen/Qwen3-VL-{2B,4B,8B}-Instruct config.json: (hidden, layers, heads, kv, intermediate, tie,
    # vision depth, vision hidden, vision intermediate, deepstack layers)
    expect = {"2b": (2048, 28, 16, 8, 6144, True, 24, 1024, 4096, [5, 11, 17]),
              "4b": (2560, 36, 32, 8, 9728, True, 24, 1024, 4096, [5, 11, 17]),
              "8b": (4096, 36, 32, 8, 12288, False, 27, 1152, 4304, [8, 16, 24])}
    for size, want in expect.items():
        cfg = Qwen3VLAdapter.published_config(size)
        tc, vc = cfg.text_config, cfg.vision_config
        got = (tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads, tc.num_key_value_heads,
               tc.intermediate_size, cfg.tie_word_embeddings, vc.depth, vc.hidden_size, vc.intermediate_size,
               list(vc.deepstack_visual_indexes))
        assert got == want, size
        assert tc.head_dim == 128 and tc.vocab_size == 151936 and vc.out_hidden_size == tc.hidden_size
        assert tc.rope_parameters["mrope_section"] == [24, 20, 20] and tc.rope_parameters["rope_theta"] == 5e6
        assert (vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size, vc.num_position_embeddings) == (
            16, 2, 2, 2304)
        for t in ("<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"):
            key = {"<|video_pad|>": "video_token_id", "<|vision_start|>": "vision_start_token_id",
                   "<|vision_end|>": "vision_end_token_id", "<|image_pad|>": "image_token_id"}[t]
            assert getattr(cfg, key) == tok.convert_tokens_to_ids(t)
    assert tok.convert_tokens_to_ids("<|video_pad|>") == 151656 and "<|video_pad|>" in QWEN_SPECIAL_TOKENS


def test_from_pretrained_roundtrip(adapter, tmp_path):
    import json

    adapter.model.save_pretrained(tmp_path)
    adapter.tokenizer.save_pretrained(tmp_path)
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(
        {"size": {"longest_edge": 64 * 64 * 8, "shortest_edge": 64 * 64}, "patch_size": 16, "temporal_patch_size": 2,
         "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    loaded = Qwen3VLAdapter.from_pretrained(str(tmp_path), device="cpu", dtype=torch.float32)
    assert loaded.family == "qwen3-vl" and loaded.min_pixels == 64 * 64 and loaded.target_side == 160
    loaded.frame_size = adapter.target_side
    chunk = ("Time=0.0-1.0s", _frames(7, 2, 64, 64))
    a, b = adapter.embed_chunk(*chunk), loaded.embed_chunk(*chunk)
    assert torch.equal(a.input_ids, b.input_ids)
    la = adapter.forward(a.inputs_embeds, adapter.position_ids(a.rel_pos, 0), adapter.new_cache(), **a.lm_inputs)
    lb = loaded.forward(b.inputs_embeds, loaded.position_ids(b.rel_pos, 0), loaded.new_cache(), **b.lm_inputs)
    assert (la - lb).abs().max().item() <= 1e-5
    with pytest.raises(ValueError) as e:
        Qwen3VLAdapter.from_pretrained(str(tmp_path / "missing"), device="cpu", dtype=torch.float32)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("ragged", [True, False])
def test_batched_prefill_carries_deepstack(ragged):
    """Several streams prefilled in one batch (vstream.engine.batching) equal each stream ingested alone."""
    from conftest import make_chunks
    from vstream.engine.batching import perceive_batch
    from vstream.config import from_name
    from vstream.engine.core import Engine

    a = Qwen3VLAdapter.random("tiny", device="cpu", dtype=torch.float32, seed=0)  # its own: ragged changes attn
    cfg = from_name("tiny").replace(**{"memory.window_chunks": 100, "memory.long_term": False})
    streams = [make_chunks(2, frames=2, seed=s) for s in (1, 2, 3)]
    streams[1][1] = make_chunks(1, frames=4, seed=9, start_index=1)[0]  # rows of different lengths
    alone, batched = [Engine(a, cfg) for _ in streams], [Engine(a, cfg) for _ in streams]
    for e in alone + batched:
        e.start()
    for step in range(2):
        for e, s in zip(alone, streams):
            e.ingest(s[step])
        perceive_batch(batched, [s[step] for s in streams], ragged=ragged)
    for e1, e2 in zip(alone, batched):
        for l1, l2 in zip(e1.memory.cache.layers, e2.memory.cache.layers):
            assert l1.keys.shape == l2.keys.shape
            assert (l1.keys - l2.keys).abs().max().item() <= TOL and (l1.values - l2.values).abs().max() <= TOL
    assert a.batch_lm_inputs([], torch.zeros(0, 0, dtype=torch.bool)) == {}  # text-only batches: nothing to add
