"""Qwen2.5-VL adapter: streaming prefill == HF's own full forward, delta rotation, loading, preprocessing."""
from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
import torch

from vstream.models.qwen2_5_vl import CLIP_MEAN, CLIP_STD, Qwen25VLAdapter
from vstream.models.qwen_vl import QWEN_FIRST_SPECIAL_ID, QWEN_SPECIAL_TOKENS, real_id_tokenizer

TOL = 1e-4


@pytest.fixture(scope="module")
def adapter() -> Qwen25VLAdapter:
    return Qwen25VLAdapter.random("tiny", device="cpu", dtype=torch.float32, seed=0)


def _frames(seed: int, n: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _pieces(adapter: Qwen25VLAdapter) -> list:
    # 4 frames (2 temporal patches), 3 frames (odd: last repeated), 2 frames; non-square and portrait sizes.
    return [
        adapter.system_text("You watch a stream."),
        ("Time=0.0-1.0s", _frames(1, 4, 40, 60)),
        ("Time=1.0-2.0s", _frames(2, 3, 48, 48)),
        ("Time=2.0-3.0s", _frames(3, 2, 64, 40)),
        adapter.question_text("what happened?"),
    ]


def _stream(adapter: Qwen25VLAdapter, pieces: list, start: int = 0):
    """Feed pieces one at a time into one cache; return (last logits [V], cache, token list, starts)."""
    cache = adapter.new_cache()
    toks, starts = [], []
    logits = None
    for p in pieces:
        t = adapter.embed_text(p) if isinstance(p, str) else adapter.embed_chunk(*p)
        logits = adapter.forward(t.inputs_embeds, adapter.position_ids(t.rel_pos, start), cache)
        toks.append(t)
        starts.append(start)
        start += t.span
    return logits[0], cache, toks, starts


@pytest.mark.parametrize("frame_size", [None, 84])
def test_streaming_equals_full_forward(adapter, frame_size):
    adapter.frame_size = frame_size
    try:
        pieces = _pieces(adapter)
        logits, _, toks, starts = _stream(adapter, pieces)
        ref = adapter.reference_logits(pieces)
        assert logits.shape == ref.shape == (adapter.text_config.vocab_size,)
        assert (logits - ref).abs().max().item() <= TOL

        # The chunk positions, shifted by their start, are HF's own whole-sequence positions.
        ids = torch.cat([t.input_ids for t in toks], dim=1)  # [1, S]
        ours = torch.cat([t.rel_pos + s for t, s in zip(toks, starts)], dim=1)  # [3, S]
        grids = torch.stack([adapter.preprocess(p[1])[1] for p in pieces if isinstance(p, tuple)])
        spg = torch.full((len(grids),), adapter.second_per_grid())
        hf, _ = adapter.model.model.get_rope_index(ids, mm_token_type_ids=(ids == adapter.video_token_id).int() * 2,
                                                   video_grid_thw=grids, second_per_grid_ts=spg)
        assert torch.equal(ours, hf[:, 0])
        # the 4-frame chunk really has two distinct temporal positions, spaced tokens_per_second * 2 / fps
        vis = toks[1].input_ids[0] == adapter.video_token_id
        assert toks[1].rel_pos[0, vis].unique().tolist() == [toks[1].rel_pos[0, vis].min().item() + k
                                                             for k in (0, 2)]
        assert toks[1].n_vision == int(vis.sum())
    finally:
        adapter.frame_size = None


def test_streaming_respects_fps(adapter):
    adapter.fps = 1.0  # temporal spacing 4 instead of 2: streaming and reference must still agree
    adapter.frame_size = 224
    adapter.min_pixels = 112 * 112  # merged grids of >= 4 per side: the spacing stays within each chunk's extent
    try:
        pieces = _pieces(adapter)
        logits, _, toks, _ = _stream(adapter, pieces)
        assert (logits - adapter.reference_logits(pieces)).abs().max().item() <= TOL
        vis = toks[1].input_ids[0] == adapter.video_token_id
        t = toks[1].rel_pos[0, vis]
        assert t.max() - t.min() == 4
    finally:
        adapter.fps = 2.0
        adapter.frame_size = None
        adapter.min_pixels = 56 * 56


def test_delta_rotation(adapter):
    pieces = _pieces(adapter)
    d = 37
    _, c0, _, _ = _stream(adapter, pieces, start=0)
    _, cd, _, _ = _stream(adapter, pieces, start=d)
    assert len(c0.layers) == adapter.num_layers
    for l0, ld in zip(c0.layers, cd.layers):
        assert (adapter.rotate_keys(l0.keys, d) - ld.keys).abs().max().item() <= TOL
        assert (l0.values - ld.values).abs().max().item() <= TOL
    # a rotation that does nothing would not pass this: keys at 0 and at d really differ
    assert (c0.layers[0].keys - cd.layers[0].keys).abs().max().item() > 1e-3


def test_from_pretrained_roundtrip(adapter, tmp_path):
    adapter.model.save_pretrained(tmp_path)
    adapter.tokenizer.save_pretrained(tmp_path)
    pp = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "patch_size": 14, "merge_size": 2,
          "temporal_patch_size": 2, "max_pixels": 56 * 56}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(pp))
    loaded = Qwen25VLAdapter.from_pretrained(str(tmp_path), device="cpu", dtype=torch.float32)
    assert loaded.target_side == 56  # the checkpoint's pixel budget caps the default frame size
    assert torch.allclose(loaded.image_mean, torch.tensor(pp["image_mean"]))
    assert torch.allclose(loaded.image_std, torch.tensor(pp["image_std"]))
    assert loaded.eos_token_ids == adapter.eos_token_ids
    same = Qwen25VLAdapter(adapter.model, adapter.tokenizer, name="same", default_frame_size=56,
                           image_mean=pp["image_mean"], image_std=pp["image_std"])
    chunk = ("Time=0.0-1.0s", _frames(7, 2, 56, 56))
    out = []
    for a in (same, loaded):
        t = a.embed_chunk(*chunk)
        out.append(a.forward(t.inputs_embeds, a.position_ids(t.rel_pos, 0), a.new_cache())[0])
    assert (out[0] - out[1]).abs().max().item() <= 1e-6  # same weights; loaded tensors may differ by an ulp
    # the mean/std really matter: CLIP normalisation gives other logits
    t = adapter.embed_chunk(*chunk)
    clip = adapter.forward(t.inputs_embeds, adapter.position_ids(t.rel_pos, 0), adapter.new_cache())[0]
    assert (clip - out[0]).abs().max().item() > 1e-4

    with pytest.raises(ValueError) as e:
        Qwen25VLAdapter.from_pretrained(str(tmp_path / "missing"), device="cpu", dtype=torch.float32)
    assert "\n" not in str(e.value) and "missing" in str(e.value)


def test_tiny_builds_fast_and_rejects_bad_input(adapter):
    t0 = time.perf_counter()
    a = Qwen25VLAdapter.random("tiny", device="cpu", dtype=torch.float32, seed=3)
    assert time.perf_counter() - t0 < 15.0
    assert a.family == "qwen2.5-vl" and a.pos_dims == 3
    assert a.tokenizer.convert_tokens_to_ids("<|im_end|>") in a.eos_token_ids
    assert a.tokenizer.convert_tokens_to_ids("<|endoftext|>") in a.eos_token_ids
    assert len(a.tokenizer) <= a.text_config.vocab_size
    good = _frames(0, 2, 28, 28)
    for bad in (good.astype(np.float32), good[0], good[..., :2], good[:0], np.zeros((1, 0, 28, 3), np.uint8)):
        with pytest.raises(ValueError):
            a.embed_chunk("Time=0.0-1.0s", bad)
    with pytest.raises(ValueError):
        Qwen25VLAdapter.random("13b", device="cpu", dtype=torch.float32)
    assert [a.frames_per_chunk(f, 1.0) for f in (0.5, 1.0, 2.0, 3.0, 4.0)] == [2, 2, 2, 4, 4]
    a.fps = 0.0
    with pytest.raises(ValueError):
        a.embed_chunk("Time=0.0-1.0s", good)
    with pytest.raises(ValueError):
        a.reference_logits([3])


def test_preprocess_layout(adapter):
    """Patch rows follow Qwen2-VL's video processor layout; odd frame counts repeat the last frame."""
    frames = _frames(5, 3, 56, 84)
    pix, grid = adapter.preprocess(frames)
    gt, gh, gw = grid.tolist()
    assert adapter.resized_hw(56, 84) == (28, 56) and (gt, gh, gw) == (2, 2, 4)
    assert pix.shape == (gt * gh * gw, 3 * 2 * 14 * 14)
    pix4, grid4 = adapter.preprocess(np.concatenate([frames, frames[-1:]]))
    assert torch.equal(pix, pix4) and torch.equal(grid, grid4)
    # independent reconstruction: PIL's bicubic resize + normalise, then read each patch straight from the image
    from PIL import Image

    resized = np.stack([np.asarray(Image.fromarray(f).resize((56, 28), Image.BICUBIC)) for f in frames])
    x = torch.from_numpy(np.concatenate([resized, resized[-1:]])).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    row = 0
    for t in range(gt):
        for bh in range(gh // 2):
            for bw in range(gw // 2):
                for mh in range(2):
                    for mw in range(2):
                        y0, x0 = (bh * 2 + mh) * 14, (bw * 2 + mw) * 14
                        patch = x[2 * t:2 * t + 2, :, y0:y0 + 14, x0:x0 + 14].permute(1, 0, 2, 3)  # [C, tp, p, p]
                        assert torch.allclose(pix[row], patch.reshape(-1), atol=1e-6), row
                        row += 1
    ids = adapter.chunk_ids("T", grid)
    assert ids.count(adapter.video_token_id) == gt * gh * gw // 4
    assert ids[-1] == adapter.vision_end_id and ids[-2 - gt * gh * gw // 4] == adapter.vision_start_id


def test_long_chunk_on_tiny_frames_warns(adapter, caplog):
    a = Qwen25VLAdapter(adapter.model, adapter.tokenizer, name="w", default_frame_size=56)
    with caplog.at_level(logging.WARNING, logger="vstream.models.qwen2_5_vl"):
        a.embed_chunk("T", _frames(0, 4, 56, 56))  # temporal 0, 2 within the 2x2 grid: fine
        assert not caplog.records
        a.embed_chunk("T", _frames(0, 6, 56, 56))  # temporal 0, 2, 4 outrun it
    assert any("temporal positions" in r.getMessage() for r in caplog.records)


def test_published_configs_use_real_token_ids():
    tok = real_id_tokenizer()
    for i, t in enumerate(QWEN_SPECIAL_TOKENS):
        assert tok.convert_tokens_to_ids(t) == QWEN_FIRST_SPECIAL_ID + i
    assert tok.decode(tok("Time=1.0-2.0s ok")["input_ids"]) == "Time=1.0-2.0s ok"
    expect = {"3b": (2048, 36, 16, 2, 11008, 151936, True), "7b": (3584, 28, 28, 4, 18944, 152064, False)}
    for size, (hid, layers, heads, kv, inter, vocab, tie) in expect.items():
        cfg = Qwen25VLAdapter.published_config(size)
        tc, vc = cfg.text_config, cfg.vision_config
        assert (tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads, tc.num_key_value_heads,
                tc.intermediate_size, tc.vocab_size, cfg.tie_word_embeddings) == (hid, layers, heads, kv, inter,
                                                                                  vocab, tie)
        assert tc.rope_parameters["mrope_section"] == [16, 24, 24] and tc.rope_parameters["rope_theta"] == 1e6
        assert (vc.depth, vc.hidden_size, vc.num_heads, vc.intermediate_size, vc.out_hidden_size) == (
            32, 1280, 16, 3420, hid)
        assert (vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size, vc.window_size,
                list(vc.fullatt_block_indexes), vc.tokens_per_second) == (14, 2, 2, 112, [7, 15, 23, 31], 2)
        assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
        assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
        assert cfg.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
        assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
        assert len(tok) <= tc.vocab_size
