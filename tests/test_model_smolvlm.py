"""SmolVLM adapter: streaming prefill equals HF's full forward, delta rotation, checkpoint round trip."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from vstream.models.smolvlm import SIZES, SmolVLMAdapter

TOL = 1e-4


@pytest.fixture(scope="module")
def adapter() -> SmolVLMAdapter:
    return SmolVLMAdapter.random("tiny", device="cpu", dtype=torch.float32, seed=0)


def _frames(seed: int, n: int = 2, h: int = 40, w: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _pieces(a: SmolVLMAdapter) -> list:
    return [a.system_text("You are watching a stream."),
            ("Time=0.0-1.0s", _frames(1)), ("Time=1.0-2.0s", _frames(2, n=1)), ("Time=2.0-3.0s", _frames(3)),
            a.question_text("what happened?")]


def _stream(a: SmolVLMAdapter, pieces: list, start: int = 0, gap_at: int | None = None):
    """Feed pieces one at a time into a fresh cache; returns (last logits [V], cache)."""
    cache = a.new_cache()
    pos = start
    logits = None
    for i, p in enumerate(pieces):
        tok = a.embed_text(p) if isinstance(p, str) else a.embed_chunk(*p)
        if i == gap_at:
            pos += 1  # negative control: leave a hole in the positions
        logits = a.forward(tok.inputs_embeds, a.position_ids(tok.rel_pos, pos), cache)
        pos += tok.span
    return logits[0], cache


def test_streaming_equals_full_forward(adapter):
    pieces = _pieces(adapter)
    ref = adapter.reference_logits(pieces)
    got, cache = _stream(adapter, pieces)
    assert ref.shape == (adapter.model.config.text_config.vocab_size,)
    assert (got - ref).abs().max().item() <= TOL
    n_tokens = sum(len(adapter.tokenize(p)) if isinstance(p, str) else adapter.embed_chunk(*p).n_tokens for p in pieces)
    assert cache.get_seq_length() == n_tokens
    # the comparison can fail: a one-position hole before the second chunk changes the logits
    bad, _ = _stream(adapter, pieces, gap_at=2)
    assert (bad - ref).abs().max().item() > 100 * TOL


def test_chunk_layout(adapter):
    frames = _frames(4, n=3)
    tok = adapter.embed_chunk("Time=4.0-5.0s", frames)
    ids = tok.input_ids[0].tolist()
    marker_ids = adapter.tokenize("\nTime=4.0-5.0s:")
    assert ids[:len(marker_ids)] == marker_ids
    L = adapter.image_seq_len
    assert L == (32 // 4) ** 2 // 2 ** 2
    per_frame = [adapter.fake_token_id, adapter.global_token_id] + [adapter.image_token_id] * L + [adapter.fake_token_id]
    assert ids[len(marker_ids):] == per_frame * 3
    assert tok.n_vision == 3 * L
    assert tok.rel_pos.shape == (1, len(ids))
    assert tok.rel_pos[0].tolist() == list(range(len(ids)))
    assert tok.inputs_embeds.shape == (1, len(ids), adapter.hidden_size)
    # image slots carry vision features, not the <image> embedding
    img_emb = adapter.language_model().embed_tokens.weight[adapter.image_token_id]
    slots = tok.inputs_embeds[0, torch.tensor(ids) == adapter.image_token_id]
    assert not torch.allclose(slots, img_emb.expand_as(slots))


def test_delta_rotation(adapter):
    pieces = _pieces(adapter)[:3]
    d = 37
    _, c0 = _stream(adapter, pieces, start=0)
    _, cd = _stream(adapter, pieces, start=d)
    assert len(c0.layers) == adapter.num_layers
    for l0, ld in zip(c0.layers, cd.layers):
        assert (l0.values - ld.values).abs().max().item() <= TOL
        assert (adapter.rotate_keys(l0.keys, d) - ld.keys).abs().max().item() <= TOL
        assert (l0.keys - ld.keys).abs().max().item() > 100 * TOL  # the positions really differ


def test_from_pretrained_round_trip(adapter, tmp_path):
    adapter.model.save_pretrained(tmp_path)
    adapter.tokenizer.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "max_image_size": {"longest_edge": 32}}))
    loaded = SmolVLMAdapter.from_pretrained(str(tmp_path), device="cpu", dtype=torch.float32)
    assert loaded.frame_size == 32 and loaded.image_seq_len == adapter.image_seq_len
    assert loaded.image_token_id == adapter.image_token_id
    assert loaded.eos_token_ids == adapter.eos_token_ids
    frames = _frames(5)
    outs = []
    for a in (adapter, loaded):
        tok = a.embed_chunk("Time=0.0-1.0s", frames)
        outs.append(a.forward(tok.inputs_embeds, a.position_ids(tok.rel_pos, 0), a.new_cache())[0])
    assert torch.equal(outs[0], outs[1])


def test_from_pretrained_reads_preprocessor(adapter, tmp_path):
    adapter.model.save_pretrained(tmp_path)
    adapter.tokenizer.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": [0.4, 0.45, 0.5], "image_std": [0.2, 0.25, 0.3], "max_image_size": {"longest_edge": 16}}))
    loaded = SmolVLMAdapter.from_pretrained(str(tmp_path))
    assert loaded.frame_size == 16 and loaded.image_seq_len == 4
    assert loaded.image_mean.flatten().tolist() == pytest.approx([0.4, 0.45, 0.5])
    assert loaded.image_std.flatten().tolist() == pytest.approx([0.2, 0.25, 0.3])
    override = SmolVLMAdapter.from_pretrained(str(tmp_path), frame_size=64)
    assert override.image_seq_len == (64 // 4) ** 2 // 4


def test_from_pretrained_bad_paths(tmp_path):
    for bad in (str(tmp_path / "missing"), str(tmp_path)):  # no such dir; a dir with no checkpoint in it
        with pytest.raises(ValueError) as ei:
            SmolVLMAdapter.from_pretrained(bad)
        assert "\n" not in str(ei.value) and str(ei.value)


def test_random_tiny_is_fast_and_checks_inputs(adapter):
    t0 = time.perf_counter()
    a = SmolVLMAdapter.random("tiny", seed=1)
    assert time.perf_counter() - t0 < 15.0
    cfg = a.model.config
    assert cfg.text_config.vocab_size >= len(a.tokenizer)
    assert cfg.image_token_id == a.tokenizer.convert_tokens_to_ids("<image>")
    assert a.tokenizer.convert_tokens_to_ids("<end_of_utterance>") in a.eos_token_ids
    bad_frames = [np.zeros((2, 8, 8, 3), dtype=np.float32), np.zeros((8, 8, 3), dtype=np.uint8),
                  np.zeros((2, 8, 8, 4), dtype=np.uint8), np.zeros((0, 8, 8, 3), dtype=np.uint8), [[1, 2, 3]]]
    for f in bad_frames:
        with pytest.raises(ValueError):
            adapter.embed_chunk("Time=0.0-1.0s", f)
    with pytest.raises(ValueError):
        adapter.embed_chunk("Time=0.0-1.0s<image>", _frames(0))
    with pytest.raises(ValueError):
        adapter.reference_logits([adapter.system_text("x"), 42])
    with pytest.raises(ValueError):
        SmolVLMAdapter(adapter.model, adapter.tokenizer, name="x", frame_size=12)  # 3 patches, scale 2
    with pytest.raises(ValueError):
        SmolVLMAdapter.random("huge")


def test_frame_size_override_streams_exactly(adapter):
    a = SmolVLMAdapter(adapter.model, adapter.tokenizer, name="tiny-16px", frame_size=16)
    assert a.image_seq_len == 4
    pieces = [a.system_text("s"), ("Time=0.0-1.0s", _frames(6)), a.question_text("q?")]
    got, _ = _stream(a, pieces)
    assert (got - a.reference_logits(pieces)).abs().max().item() <= TOL


def test_idefics3_checkpoint_type_streams_exactly():
    a = SmolVLMAdapter.random("tiny", seed=2, model_type="idefics3")
    assert a.model.config.model_type == "idefics3"
    pieces = [a.system_text("s"), ("Time=0.0-1.0s", _frames(7)), ("Time=1.0-2.0s", _frames(8)), a.question_text("q?")]
    got, _ = _stream(a, pieces)
    assert (got - a.reference_logits(pieces)).abs().max().item() <= TOL


@pytest.mark.parametrize("size,expect", [
    ("256m", dict(hidden=576, layers=30, heads=9, kv=3, inter=1536, head_dim=64, theta=100_000.0, v_hidden=768,
                  v_inter=3072, v_layers=12, v_heads=12, patch=16, image=512, scale=4, seq=64)),
    ("2.2b", dict(hidden=2048, layers=24, heads=32, kv=32, inter=8192, head_dim=64, theta=273_768.0, v_hidden=1152,
                  v_inter=4304, v_layers=27, v_heads=16, patch=14, image=384, scale=3, seq=81)),
])
def test_published_configs(size, expect):
    # the configs only (a real-size model is never instantiated in tests)
    from vstream.models.smolvlm import SPECIAL_TOKENS, _build_config
    from vstream.models.tokenizer import build_offline_tokenizer

    tok = build_offline_tokenizer(SPECIAL_TOKENS, eos_token="<end_of_utterance>", pad_token="<|im_end|>",
                                  bos_token="<|im_start|>")
    cfg = _build_config(SIZES[size], tok, "smolvlm")
    t, v = cfg.text_config, cfg.vision_config
    assert cfg.model_type == "smolvlm" and t.model_type == "llama"
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, t.intermediate_size,
            t.head_dim) == (expect["hidden"], expect["layers"], expect["heads"], expect["kv"], expect["inter"],
                            expect["head_dim"])
    assert t.rope_parameters["rope_theta"] == expect["theta"] and t.vocab_size == 49280
    assert (v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads, v.patch_size,
            v.image_size) == (expect["v_hidden"], expect["v_inter"], expect["v_layers"], expect["v_heads"],
                              expect["patch"], expect["image"])
    assert cfg.scale_factor == expect["scale"]
    assert (v.image_size // v.patch_size) ** 2 // cfg.scale_factor ** 2 == expect["seq"]
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<image>") and not cfg.tie_word_embeddings
