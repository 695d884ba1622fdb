"""Static-cache decoding (generation.decode = static / graphs) against the HF model's own forward.

Every step's logits through the fixed-shape step equal the full forward of the whole sequence (fp32,
1e-4), for every family (Qwen3-VL's interleaved M-RoPE included); the K/V appended to the caller's cache
equal the full forward's; the buffers grow by whole buckets and are reused. Commentary and answers
through the engine with ``decode="static"`` are in tests/test_text_equivalence.py. CUDA graphs need a GPU:
``vstream bench gpu`` times them there; here ``graphs`` must fall back to the static steps and say so.
"""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from _kv_reference import TOL, full_forward, ids_as_text, max_diff
from conftest import make_chunks, tiny_adapter
from vstream.config import from_name
from vstream.engine.core import Engine
from vstream.engine.static_decode import BUCKET, StaticDecoder, check_static, static_decoders

FAMILIES = ["tiny-qwen2.5-vl", "tiny-qwen3-vl", "tiny-llava-onevision", "tiny-smolvlm"]
QUESTION = "What is on the screen?"


def _engine(a, decode="static") -> Engine:
    cfg = from_name("tiny").replace(**{"memory.window_chunks": 100, "memory.long_term": False,
                                       "generation.temperature": 0.0, "generation.decode": decode})
    return Engine(a, cfg)


@pytest.mark.parametrize("name", FAMILIES)
def test_static_steps_equal_full_forward(name):
    a = tiny_adapter(name)
    eng = _engine(a)
    chunks = make_chunks(2, frames=2, seed=5)
    eng.start()
    for ch in chunks:
        eng.ingest(ch)
    cache, pos, logits, _, _ = eng.prepare(QUESTION, eng.snapshot())
    n_ctx = cache.layers[0].keys.shape[-2]
    pieces = [a.system_text(eng.config.system_prompt)] + [(c.marker, c.frames) for c in chunks]
    pieces.append(a.question_text(QUESTION))
    dec = StaticDecoder(a)
    dec.begin(cache, 5)
    assert dec.capacity % BUCKET == 0 and dec.capacity >= n_ctx + 5
    ids: list[int] = []
    table: dict[str, list[int]] = {}
    for j in range(5):
        tok = int(logits[0].argmax()) if j < 3 else (j * 37) % 100 + 5  # greedy, then arbitrary tokens
        ids.append(tok)
        logits = dec.step(tok, pos + j)
        table["\x00ids\x00"] = list(ids)
        with ids_as_text(a, table):
            ref, ref_cache = full_forward(a, pieces + ["\x00ids\x00"])
        assert max_diff(logits[0], ref) <= TOL, f"{name}: step {j} logits differ from the full forward"
    assert dec.finish(cache) == 5
    n = cache.layers[0].keys.shape[-2]
    assert n == n_ctx + 5 == ref_cache.layers[0].keys.shape[-2]
    for l in range(a.num_layers):  # the caller's cache now holds what the full forward computed
        assert max_diff(cache.layers[l].keys, ref_cache.layers[l].keys) <= TOL, (name, l)
        assert max_diff(cache.layers[l].values, ref_cache.layers[l].values) <= TOL, (name, l)


def test_buffers_grow_by_buckets_and_are_reused():
    a = tiny_adapter("tiny-smolvlm")
    dec = StaticDecoder(a)

    def ctx(n):
        c = a.new_cache()
        shape = (1, a.num_kv_heads, n, a.head_dim)
        for l in range(a.num_layers):
            c.update(torch.randn(shape), torch.randn(shape), l)
        return c

    dec.begin(ctx(10), 4)
    first = dec.kv.keys[0]
    assert dec.capacity == BUCKET
    dec.begin(ctx(BUCKET - 8), 8)  # still fits: the same buffers
    assert dec.capacity == BUCKET and dec.kv.keys[0] is first
    dec.begin(ctx(BUCKET - 8), 9)  # one more token would not: the next bucket
    assert dec.capacity == 2 * BUCKET and dec.kv.keys[0] is not first
    c = ctx(3)
    dec.begin(c, 1)
    dec.step(7, 3)
    with pytest.raises(RuntimeError, match="full"):
        dec.n = dec.capacity  # as if every slot were written
        dec.step(7, 4)


def test_answers_decode_the_same_words_static_and_dynamic():
    a = tiny_adapter("tiny-qwen3-vl")
    words = {}
    for mode in ("dynamic", "static"):
        eng = _engine(a, mode)
        eng.start()
        for ch in make_chunks(2, frames=2, seed=9):
            eng.ingest(ch)
        words[mode] = eng.answer(QUESTION, eng.snapshot(), max_new_tokens=6).token_ids
    assert words["static"] == words["dynamic"] and len(words["static"]) > 0


def test_settings_and_models_that_cannot_are_refused(caplog):
    with pytest.raises(ValueError, match="generation.decode"):
        from_name("tiny").replace(**{"generation.decode": "turbo"}).validate()
    a = tiny_adapter("tiny-smolvlm")
    with pytest.raises(ValueError, match="generation.decode"):
        static_decoders(a, "turbo")
    assert static_decoders(a, "dynamic") == {}
    with caplog.at_level(logging.INFO, logger="vstream.engine.static_decode"):
        decs = static_decoders(a, "graphs")
    assert set(decs) == {"answer", "commentary"} and not decs["answer"].graphs  # no CUDA here
    assert "CUDA graphs need a CUDA GPU" in caplog.text

    def fake(impl, layer_types=None):
        cfg = SimpleNamespace(_attn_implementation=impl, layer_types=layer_types)
        return SimpleNamespace(language_model=lambda: SimpleNamespace(config=cfg))

    with pytest.raises(ValueError, match="flash_attention_2.*generation.decode=dynamic"):
        check_static(fake("flash_attention_2"))
    with pytest.raises(ValueError, match="sliding-window"):
        check_static(fake("sdpa", ["full_attention", "sliding_attention"]))
    check_static(fake("eager", ["full_attention"]))
    check_static(fake("vstream_ragged"))  # a model switched for batched prefill: SDPA outside a batch
