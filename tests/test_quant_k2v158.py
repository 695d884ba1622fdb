"""The ~1.5-bit cold tier ("k2v1.58"): 2/1-bit keys per channel, ternary values five per byte.

Round trips are checked against bounds computed from the original tensors alone (channel ranges and
maxima), the channel choice against an independent top-k, the bytes against the stated layout; then the
store: a directory written with it reopens (also through the engine's long-term memory), carries format
version 3, and a reader of version 2 refuses it with one clear line.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

import memory.types as mtypes
from _memory_helpers import make_segment, meta
from memory import quant
from memory.segment import Segment
from memory.store import LongTermStore
from memory.store_format import format_version_for


def _keys_like(seed: int, shape=(1, 4, 50, 32)) -> torch.Tensor:
    """Keys with per-channel offsets and very different channel magnitudes (a few outlier channels)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(1, shape[1], 1, shape[-1], generator=g) ** 3 * 8 + 0.01
    scale[..., :2] *= 20  # outlier channels
    return torch.randn(shape, generator=g) * scale + torch.randn(1, shape[1], 1, shape[-1], generator=g) * 4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_keys_round_trip_within_channel_bounds(seed):
    t = _keys_like(seed)
    t[0, 1, :, 5] = 3.25  # a constant channel
    t[0, 2, :, 7] = 0.0
    d = quant.quantize(t, quant.KEYS_2_1)
    back = quant.dequantize(d, torch.float32)
    err = (back - t).abs()
    lo, hi = t.amin(dim=2, keepdim=True), t.amax(dim=2, keepdim=True)  # [1, H, 1, D] the channel's range
    # the 1-bit channels are, per head, the half with the smallest range (independent top-k)
    rng = (hi - lo)[0, :, 0]  # [H, D]
    want = torch.zeros_like(rng, dtype=torch.bool)
    want.scatter_(1, torch.topk(rng, k=rng.shape[1] // 2, largest=False).indices, True)
    one = quant._unpack_unsigned(d["mask"], 1, rng.numel()).reshape(rng.shape).bool()
    assert torch.equal(one, want)
    levels = torch.where(want, 4.0, 8.0).reshape(1, -1, 1, rng.shape[1])  # r/4 for 1-bit, r/8 for 2-bit
    stated = (hi - lo) / levels * (1 + 2 ** -9) + 2 ** -9 * lo.abs() + 2 ** -24
    assert bool((err <= stated).all()), float((err - stated).max())
    assert bool((err <= quant.error_bound(d)).all())
    assert float(err[0, 1, :, 5].max()) <= 2 ** -9 * 3.25 and float(err[0, 2, :, 7].max()) <= 2 ** -24
    # at most 2 (1-bit) or 4 (2-bit) distinct values per channel
    for h in range(t.shape[1]):
        for c in range(t.shape[-1]):
            assert len(torch.unique(back[0, h, :, c])) <= (2 if want[h, c] else 4)
    # the bound is tight enough to mean something: 2-bit channels average well under r/8
    assert float((err / (hi - lo).clamp(min=1e-6))[..., ~want[0]].mean()) < 1 / 8


def test_values_ternary_round_trip_within_bound():
    g = torch.Generator().manual_seed(5)
    t = torch.randn(1, 3, 37, 24, generator=g) * (torch.rand(1, 3, 1, 24, generator=g) * 3)  # 37*24*3: pads to 5
    d = quant.quantize(t, quant.TERNARY5)
    back = quant.dequantize(d, torch.float32)
    amax = t.abs().amax(dim=2, keepdim=True)
    assert bool(((back - t).abs() <= amax / 2 * (1 + 2 ** -9) + 2 ** -24).all())
    assert bool(((back - t).abs() <= quant.error_bound(d)).all())
    levels = torch.unique((back / d["scale"].float()).round())
    assert set(levels.tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal(back / d["scale"].float(), torch.round(t / d["scale"].float()).clamp(-1, 1))
    assert d["q"].numel() == math.ceil(t.numel() / 5) and d["scale"].dtype == torch.float16


def test_bits_per_element():
    t = _keys_like(3, shape=(1, 4, 196, 128))  # a LLaVA-OV-7B layer of one 196-token entry
    k, v = quant.quantize(t, quant.KEYS_2_1), quant.quantize(t, quant.TERNARY5)
    n = t.numel()
    k_bits = 8 * sum(k[x].numel() * k[x].element_size() for x in ("q2", "q1", "mask", "lo", "step")) / n
    v_bits = 8 * sum(v[x].numel() * v[x].element_size() for x in ("q", "scale")) / n
    assert abs(k_bits - (1.5 + 1 / 196 + 32 / 196)) < 0.01  # 1.5 bits + mask + fp16 lo, step per channel
    assert abs(v_bits - (1.6 + 16 / 196)) < 0.01
    assert (k_bits + v_bits) / 2 < 1.7


def test_bf16_and_bad_input():
    t = _keys_like(4).to(torch.bfloat16)
    d = quant.quantize(t, quant.KEYS_2_1)
    assert quant.dequantize(d, torch.bfloat16).dtype == torch.bfloat16
    err = (quant.dequantize(d, torch.float32) - t.float()).abs()
    assert bool((err <= quant.error_bound(d)).all())
    with pytest.raises(ValueError, match="inf/nan"):
        quant.quantize(torch.tensor([[float("nan"), 1.0]]), quant.TERNARY5)


def _kv_segment(eid: int, tokens: int = 30) -> Segment:
    return make_segment(eid, tokens=tokens)


def test_store_round_trip_reopen_and_version(tmp_path):
    d = tmp_path / "m"
    segs = [_kv_segment(i) for i in range(3)]
    with LongTermStore(meta(), d, quantize="k2v1.58") as st:
        ids = [st.add(s) for s in segs]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["format_version"] == 3 == format_version_for("k2v1.58") and cfg["quantize"] == "k2v1.58"
    with LongTermStore.open(d, expected=meta(), ram_bytes=0) as st:  # disk tier: read back from the files
        assert st.quantize == "k2v1.58" and len(st) == 3
        for i, s in zip(ids, segs):
            back = st.get(i)
            for a, b in zip(s.keys, back.keys):
                assert bool(((b - a).abs() <= quant.error_bound(quant.quantize(a, quant.KEYS_2_1))).all())
                assert not torch.equal(a, b)
            for a, b in zip(s.values, back.values):
                assert bool(((b - a).abs() <= quant.error_bound(quant.quantize(a, quant.TERNARY5))).all())
            assert torch.equal(back.rel_pos, s.rel_pos) and back.thumbnail == s.thumbnail
        st.add(_kv_segment(9))  # appending after a reopen
    with LongTermStore(meta(), tmp_path / "plain") as st:  # other tiers keep version 1 (old readers read them)
        st.add(_kv_segment(0))
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["format_version"] == 1


def test_old_reader_refuses_newer_format(tmp_path, monkeypatch):
    d = tmp_path / "m"
    with LongTermStore(meta(), d, quantize="k2v1.58") as st:
        st.add(_kv_segment(0))
    monkeypatch.setattr(mtypes, "FORMAT_VERSION", 2)  # a reader that knows formats 1 and 2 (text entries) only
    with pytest.raises(ValueError) as e:
        LongTermStore.open(d)
    msg = str(e.value)
    assert "\n" not in msg and "format version 3" in msg and "newer" in msg and "(2)" in msg and str(d) in msg
    with pytest.raises(ValueError, match="format version 3"):
        LongTermStore(meta(), d)


def test_future_format_is_refused_by_version_before_its_tier_name(tmp_path):
    d = tmp_path / "m"
    with LongTermStore(meta(), d, quantize="k2v1.58") as st:
        st.add(_kv_segment(0))
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(format_version=mtypes.FORMAT_VERSION + 1, quantize="k1v1-from-the-future")
    (d / "config.json").write_text(json.dumps(cfg))
    for opener in (lambda: LongTermStore.open(d), lambda: LongTermStore(meta(), d, quantize="k1v1-from-the-future")):
        with pytest.raises(ValueError) as e:
            opener()
        assert f"format version {mtypes.FORMAT_VERSION + 1}" in str(e.value) and "\n" not in str(e.value)


def test_v1_store_reopened_with_k2v158_is_bumped(tmp_path):
    d = tmp_path / "m"
    with LongTermStore(meta(), d, quantize="int8") as st:
        st.add(_kv_segment(0))
    assert json.loads((d / "config.json").read_text())["format_version"] == 1
    with LongTermStore.open(d, quantize="k2v1.58") as st:
        st.add(_kv_segment(1))
        assert st.meta.format_version == 3
    assert json.loads((d / "config.json").read_text())["format_version"] == 3
    with LongTermStore.open(d) as st:
        assert [st.info(i).entry_id for i in range(2)] == [0, 1]
        a = _kv_segment(0).keys[0]
        assert bool(((st.get(0).keys[0] - a).abs() <= quant.error_bound(quant.quantize(a, 8))).all())


def test_engine_memory_dir_with_k2v158_reopens(tmp_path):
    """Chunks evicted by the engine go to a k2v1.58 store; the directory reopens with every entry."""
    from conftest import make_chunks, tiny_adapter
    from vstream.config import from_name
    from vstream.engine.core import Engine
    from vstream.engine.longterm import open_long_term

    adapter = tiny_adapter("tiny-llava-onevision")
    cfg = from_name("tiny").replace(**{"memory.window_chunks": 2, "memory.quantize": "k2v1.58",
                                       "memory.ram_bytes": 0})
    lt = open_long_term(adapter, cfg.memory, tmp_path / "mem")
    eng = Engine(adapter, cfg, lt)
    evicted = []
    orig = lt.on_evict

    def keep(seg):
        evicted.append(seg)
        orig(seg)

    eng.memory.on_evict = keep
    eng.start()
    for ch in make_chunks(5, frames=2, seed=8):
        eng.ingest(ch)
    lt.close()
    assert len(evicted) == 3
    back = open_long_term(adapter, cfg.memory, tmp_path / "mem", load_existing=True)
    try:
        assert len(back) == 3 and back.store.quantize == "k2v1.58"
        for i, seg in enumerate(evicted):
            got = back.store.get(i)
            assert (got.start_s, got.end_s) == (seg.start_s, seg.end_s) and got.span == seg.span
            for a, b in zip(seg.keys, got.keys):
                assert bool(((b - a).abs() <= quant.error_bound(quant.quantize(a, quant.KEYS_2_1))).all())
    finally:
        back.close()


def test_smallest_range_channels_cost_least_attention_error():
    """Attention logits q . k (computed directly) suffer least when the 1-bit half is the smallest-range one."""
    t = _keys_like(6, shape=(1, 4, 64, 32))
    q = torch.randn(1, 4, 16, 32, generator=torch.Generator().manual_seed(7))  # queries, isotropic
    ref = q @ t.transpose(-1, -2)  # [1, H, 16, 64]
    err = {}
    for choose in ("smallest", "random", "largest"):
        one = quant.one_bit_channels(t, 0.5, choose)
        back = quant.dequantize(quant.quantize_keys_2_1(t, one), torch.float32)
        err[choose] = float((q @ back.transpose(-1, -2) - ref).pow(2).mean())
    assert err["smallest"] < err["random"] < err["largest"]
