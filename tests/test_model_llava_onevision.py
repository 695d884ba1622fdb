"""LLaVA-OneVision adapter: streaming equals HF's full forward, delta rotation, loading, input checks."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from vstream.models.llava_onevision import LlavaOneVisionAdapter


@pytest.fixture(scope="module")
def adapter() -> LlavaOneVisionAdapter:
    return LlavaOneVisionAdapter.random("tiny", device="cpu", dtype=torch.float32, seed=0)


def _frames(seed: int, n: int, h: int = 20, w: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def _pieces(adapter, frame_counts=(2, 2, 2)) -> list:
    chunks = [(f"Time={i}.0-{i + 1}.0s", _frames(10 + i, n)) for i, n in enumerate(frame_counts)]
    return [adapter.system_text("You watch a stream."), *chunks, adapter.question_text("what happened?")]


def _stream(adapter, pieces, start: int = 0):
    """Feed pieces one at a time into one cache; return (last logits [V], cache)."""
    cache = adapter.new_cache()
    pos = start
    logits = None
    for piece in pieces:
        tok = adapter.embed_text(piece) if isinstance(piece, str) else adapter.embed_chunk(*piece)
        logits = adapter.forward(tok.inputs_embeds, adapter.position_ids(tok.rel_pos, pos), cache)
        pos += tok.span
    return logits[0], cache


@pytest.mark.parametrize("frame_counts", [(2, 2, 2), (2, 1, 3)])
def test_streaming_equals_full_forward(adapter, frame_counts):
    pieces = _pieces(adapter, frame_counts)
    streamed, cache = _stream(adapter, pieces)
    ref = adapter.reference_logits(pieces)
    assert streamed.shape == ref.shape == (adapter.model.config.text_config.vocab_size,)
    assert (streamed - ref).abs().max().item() <= 1e-4
    n_text = sum(len(adapter.tokenize(p)) for p in pieces if isinstance(p, str))
    n_chunks = sum(len(adapter.tokenize(p[0])) + adapter.vision_tokens(p[1].shape[0])
                   for p in pieces if not isinstance(p, str))
    assert cache.get_seq_length() == n_text + n_chunks
    # a different chunk must change the answer: the comparison is not vacuous
    other = list(pieces)
    other[2] = (other[2][0], _frames(99, frame_counts[1]))
    assert (adapter.reference_logits(other) - ref).abs().max().item() > 1e-4


def test_chunk_tokens_follow_hf_video_layout(adapter):
    marker = "Time=3.0-4.0s"
    frames = _frames(1, 3)
    tok = adapter.embed_chunk(marker, frames)
    n_marker = len(adapter.tokenize(marker))
    tiny_grid = 28 // 4  # 7 x 7 patches -> ceil(7 / 2)^2 = 16 pooled tokens per frame
    assert adapter.tokens_per_frame == 16 and adapter.grid == tiny_grid
    assert tok.n_vision == 3 * 16 + 1  # + one image_newline per video
    assert tok.n_tokens == n_marker + tok.n_vision
    assert tok.input_ids[0, :n_marker].tolist() == adapter.tokenize(marker)
    assert (tok.input_ids[0, n_marker:] == adapter.video_token_id).all()
    assert tok.rel_pos.tolist() == [list(range(tok.n_tokens))] and tok.span == tok.n_tokens
    # the features are exactly HF's video features (pooling + newline) for the same pixels
    px = adapter.preprocess(frames)
    with torch.no_grad():
        hf = adapter.model.model.get_video_features(pixel_values_videos=px.unsqueeze(0)).pooler_output[0]
    assert torch.allclose(tok.inputs_embeds[0, n_marker:], hf, atol=1e-6)
    assert torch.equal(tok.inputs_embeds[0, -1], adapter.model.model.image_newline.detach())


def test_preprocess_resizes_and_normalises(adapter):
    gray = np.full((1, 40, 30, 3), 255, dtype=np.uint8)
    px = adapter.preprocess(gray)
    assert px.shape == (1, 3, 28, 28)
    assert torch.allclose(px, torch.ones_like(px))  # (1 - 0.5) / 0.5
    black = adapter.preprocess(np.zeros((2, 28, 28, 3), dtype=np.uint8))
    assert torch.allclose(black, -torch.ones_like(black))


def test_delta_rotation_matches_shifted_prefill(adapter):
    pieces = _pieces(adapter, (2, 2))
    d = 37
    _, c0 = _stream(adapter, pieces, start=0)
    _, cd = _stream(adapter, pieces, start=d)
    for layer0, layerd in zip(c0.layers, cd.layers):
        rotated = adapter.rotate_keys(layer0.keys, d)
        assert (rotated - layerd.keys).abs().max().item() <= 1e-4
        assert (layer0.keys - layerd.keys).abs().max().item() > 1e-3  # the shift really moved the keys
        assert torch.allclose(layer0.values, layerd.values, atol=1e-5)


def test_from_pretrained_round_trip(adapter, tmp_path):
    adapter.model.save_pretrained(tmp_path)
    adapter.tokenizer.save_pretrained(tmp_path)
    mean, std = [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": mean, "image_std": std, "size": {"height": 28, "width": 28}, "rescale_factor": 1 / 255}))
    loaded = LlavaOneVisionAdapter.from_pretrained(str(tmp_path), device="cpu", dtype=torch.float32)
    assert loaded.image_mean == tuple(mean) and loaded.image_std == tuple(std)
    assert loaded.video_token_id == adapter.video_token_id and loaded.family == "llava-onevision"
    same_norm = LlavaOneVisionAdapter(adapter.model, adapter.tokenizer, name="orig", image_mean=mean, image_std=std)
    pieces = [("Time=0.0-1.0s", _frames(5, 2))]
    a, b = same_norm.reference_logits(pieces), loaded.reference_logits(pieces)
    assert torch.equal(a, b)
    tok_a, tok_b = same_norm.embed_chunk(*pieces[0]), loaded.embed_chunk(*pieces[0])
    assert torch.equal(tok_a.inputs_embeds, tok_b.inputs_embeds)
    assert not torch.equal(a, adapter.reference_logits(pieces))  # the checkpoint's mean/std were used


def test_from_pretrained_bad_path(tmp_path):
    with pytest.raises(ValueError) as err:
        LlavaOneVisionAdapter.from_pretrained(str(tmp_path / "missing"), device="cpu", dtype=torch.float32)
    assert "\n" not in str(err.value) and "missing" in str(err.value)
    with pytest.raises(ValueError) as err:  # exists but holds no checkpoint
        LlavaOneVisionAdapter.from_pretrained(str(tmp_path), device="cpu", dtype=torch.float32)
    assert "\n" not in str(err.value)
    (tmp_path / "config.json").write_text("{not json")  # a broken checkpoint fails the same way
    with pytest.raises(ValueError) as err:
        LlavaOneVisionAdapter.from_pretrained(str(tmp_path), device="cpu", dtype=torch.float32)
    assert "\n" not in str(err.value)


def test_random_tiny_builds_fast_and_checks_inputs():
    t0 = time.perf_counter()
    a = LlavaOneVisionAdapter.random("tiny", device="cpu", dtype=torch.float32, seed=1)
    assert time.perf_counter() - t0 < 15.0
    assert a.model.config.text_config.vocab_size >= len(a.tokenizer)
    assert a.tokenizer.convert_tokens_to_ids("<video>") == a.model.config.video_token_id
    assert a.tokenizer.convert_tokens_to_ids("<image>") == a.model.config.image_token_id
    assert a.tokenizer.convert_tokens_to_ids("<|im_end|>") in a.eos_token_ids
    assert a.tokenizer.convert_tokens_to_ids("<|endoftext|>") in a.eos_token_ids
    assert a.frame_size == 28 and a.pos_dims == 1
    with pytest.raises(ValueError):
        a.embed_chunk("t", np.zeros((2, 28, 28, 3), dtype=np.float32))  # not uint8
    with pytest.raises(ValueError):
        a.embed_chunk("t", np.zeros((28, 28, 3), dtype=np.uint8))  # no frame axis
    with pytest.raises(ValueError):
        a.embed_chunk("t", np.zeros((2, 28, 28, 4), dtype=np.uint8))  # RGBA
    with pytest.raises(ValueError):
        a.embed_chunk("t", np.zeros((0, 28, 28, 3), dtype=np.uint8))  # no frames
    with pytest.raises(ValueError):
        a.embed_chunk(None, np.zeros((1, 28, 28, 3), dtype=np.uint8))
    with pytest.raises(ValueError):
        a.reference_logits([123])
    with pytest.raises(ValueError):
        LlavaOneVisionAdapter.random("13b")
    with pytest.raises(ValueError):
        LlavaOneVisionAdapter(a.model, a.tokenizer, name="x", frame_size=64)
