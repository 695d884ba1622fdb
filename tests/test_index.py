"""VectorIndex and MemoryIndex: exact vs HNSW, switching, replace/remove, persistence, stale indexes."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from memory.index import MemoryIndex, VectorIndex
from memory.store import LongTermStore
from _memory_helpers import HashEmbedder, make_segment, meta


def _data(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _brute(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.argsort(-(xn @ (q / np.linalg.norm(q))), kind="stable")[:k]


# ---- VectorIndex --------------------------------------------------------------------------------


def test_exact_search_is_exact_and_ordered():
    x = _data(500, 24)
    idx = VectorIndex(24)
    idx.add(np.arange(500) * 3, x)  # arbitrary ids
    q = _data(20, 24, seed=1)
    for qi in q:
        ids, scores = idx.search(qi, 5)
        assert list(ids) == list(_brute(x, qi, 5) * 3)
        assert np.all(np.diff(scores) <= 1e-6) and scores[0] <= 1.0 + 1e-5
    ids, _ = idx.search(q[0], 10_000)
    assert len(ids) == 500  # k larger than the index
    assert VectorIndex(4).search(np.ones(4), 3)[0].size == 0


def test_exact_and_hnsw_agree_on_top1():
    x = _data(3000, 32)
    exact = VectorIndex(32, exact_max=10**9)
    hnsw = VectorIndex(32, exact_max=0)
    exact.add(np.arange(3000), x)
    hnsw.add(np.arange(3000), x)
    assert not exact.is_hnsw and hnsw.is_hnsw
    q = _data(200, 32, seed=2)
    agree = sum(exact.search(qi, 1)[0][0] == hnsw.search(qi, 1)[0][0] for qi in q)
    assert agree >= 196, agree
    # a stored vector (slightly perturbed) finds itself in both
    for i in range(0, 3000, 300):
        qi = x[i] + 0.01 * q[0]
        assert exact.search(qi, 1)[0][0] == i and hnsw.search(qi, 1)[0][0] == i


def test_switch_past_exact_max():
    x = _data(900, 16)
    idx = VectorIndex(16, exact_max=500)
    for a in range(0, 500, 100):
        idx.add(np.arange(a, a + 100), x[a: a + 100])
    assert not idx.is_hnsw and len(idx) == 500
    idx.add(np.arange(500, 900), x[500:])
    assert idx.is_hnsw and len(idx) == 900
    for i in (0, 250, 499, 500, 899):
        ids, scores = idx.search(x[i], 3)
        assert ids[0] == i and abs(scores[0] - 1.0) < 1e-4


@pytest.mark.parametrize("exact_max", [10**9, 0])
def test_replace_and_remove(exact_max):
    x = _data(400, 8)
    idx = VectorIndex(8, exact_max=exact_max)
    idx.add(np.arange(400), x)
    target = _data(1, 8, seed=5)[0]
    idx.add(np.array([7]), target[None])  # replace id 7
    assert len(idx) == 400
    ids, scores = idx.search(target, 2)
    assert ids[0] == 7 and abs(scores[0] - 1) < 1e-4
    assert 7 not in idx.search(x[7], 400)[0][:1]  # the old vector of 7 is gone
    idx.remove(np.array([7, 12345]))
    assert len(idx) == 399 and 7 not in idx and 7 not in idx.search(target, 400)[0]
    # many replacements: HNSW compacts its dead slots, results stay right
    y = _data(400, 8, seed=9)
    for a in range(0, 400, 50):
        idx.add(np.arange(a, a + 50), y[a: a + 50])
    assert len(idx) == 400
    for i in (0, 7, 123, 399):
        assert idx.search(y[i], 1)[0][0] == i
    assert idx._n_dead <= max(256, len(idx) // 8)


def test_vector_index_rejects_bad_shapes():
    idx = VectorIndex(8)
    with pytest.raises(ValueError, match="shape"):
        idx.add(np.arange(2), np.zeros((2, 7), np.float32))
    with pytest.raises(ValueError, match="dims"):
        idx.search(np.zeros(5), 1)
    with pytest.raises(ValueError, match="inf/nan"):
        idx.add(np.arange(1), np.full((1, 8), np.nan, np.float32))


@pytest.mark.parametrize("exact_max", [10**9, 100])
def test_vector_index_save_load(tmp_path, exact_max):
    x = _data(300, 12)
    idx = VectorIndex(12, exact_max=exact_max)
    idx.add(np.arange(300) + 10, x)
    idx.add(np.array([15]), x[:1])  # a replacement (a dead slot under HNSW)
    idx.save(tmp_path / "v.npz", tag=42)
    back = VectorIndex.load(tmp_path / "v.npz", 12, tag=42)
    assert back.is_hnsw == idx.is_hnsw and len(back) == len(idx) == 300
    for qi in _data(10, 12, seed=3):
        a, b = idx.search(qi, 5), back.search(qi, 5)
        assert list(a[0]) == list(b[0]) and np.allclose(a[1], b[1])
    with pytest.raises(ValueError, match="tag"):
        VectorIndex.load(tmp_path / "v.npz", 12, tag=43)
    with pytest.raises(ValueError, match="dim"):
        VectorIndex.load(tmp_path / "v.npz", 13)
    (tmp_path / "bad.npz").write_bytes(b"not an index")
    with pytest.raises(ValueError, match="unreadable"):
        VectorIndex.load(tmp_path / "bad.npz", 12)


# ---- MemoryIndex --------------------------------------------------------------------------------


def _store(tmp_path, n: int, texts=None, name="m") -> LongTermStore:
    s = LongTermStore(meta(), tmp_path / name)
    for i in range(n):
        s.add(make_segment(i, text=None if texts is None else texts[i]))
    return s


def test_internal_retrieval_finds_the_matching_entry(tmp_path):
    with _store(tmp_path, 30) as s:
        idx = MemoryIndex(s, retriever="internal", per_layer=True)
        for i in s.ids():
            idx.add(i, s.get(i))
        for i in (0, 13, 29):
            q = make_segment(i).key_summary + 0.05 * torch.randn(2, 16, generator=torch.Generator().manual_seed(i))
            res = idx.search(query_means=q, k=4)
            assert res[0][0] == i and len(res) == 4 and res[0][1] > res[1][1]
            per = idx.search_per_layer(q, 2)
            assert len(per) == 2 and all(layer[0][0] == i for layer in per)
        with pytest.raises(ValueError, match="query_means"):
            idx.search(query_text="hello")
        with pytest.raises(ValueError, match=r"\[2, 16\]"):
            idx.search(query_means=torch.zeros(3, 16))
        seg = make_segment(99, summary=False)
        idx.add(99, seg)  # no key_summary: the internal retriever skips it
        assert len(idx) == 30
        with pytest.raises(ValueError, match="per_layer=True"):
            MemoryIndex(s).search_per_layer(q, 2)


def test_text_and_both_retrievers(tmp_path):
    texts = ["a red car drives by", "the teacher writes on the board", "a dog runs in the park",
             "rain falls on the window", "people cook pasta in a kitchen"]
    emb = HashEmbedder()
    with _store(tmp_path, 5, texts) as s:
        text = MemoryIndex(s, retriever="text", embedder=emb)
        both = MemoryIndex(s, retriever="both", embedder=emb)
        for i in s.ids():
            seg = s.get(i)
            text.add(i, seg)
            both.add(i, seg)
        assert text.search(query_text="where did the dog run", k=2)[0][0] == 2
        s.set_text(3, "a cat sleeps on the sofa")
        text.update_text(3, s.info(3).text)
        assert text.search(query_text="the cat on the sofa", k=1)[0][0] == 3
        text.update_text(4, "")  # no text: not findable by text any more
        assert 4 not in [i for i, _ in text.search(query_text="cook pasta kitchen", k=5)]
        q = make_segment(1).key_summary
        fused = both.search(query_means=q, query_text="teacher writes on the board", k=3)
        assert fused[0][0] == 1 and fused[0][1] == pytest.approx(2 / 61)  # rank 1 in both lists
        assert both.search(query_means=q, k=1)[0][0] == 1  # one query is enough for "both"
        assert both.search(query_text="red car", k=1)[0][0] == 0


def test_index_save_and_load_or_rebuild(tmp_path):
    emb = HashEmbedder()
    texts = [f"entry number {i} shows object {i * 7 % 11}" for i in range(40)]
    s = _store(tmp_path, 40, texts)
    d = tmp_path / "m"
    idx = MemoryIndex(s, retriever="both", per_layer=True, embedder=emb)
    for i in range(20):  # the index is saved when only half of the store is indexed (stale)
        idx.add(i, s.get(i))
    idx.save(d)
    s.set_text(5, "a completely new commentary about a bicycle")
    full = MemoryIndex(s, retriever="both", per_layer=True, embedder=emb)
    full.rebuild()
    queries = [(make_segment(i).key_summary, texts[i]) for i in (3, 25, 39)] + [(None, "a bicycle commentary")]
    expect = [full.search(query_means=q, query_text=t, k=5) for q, t in queries]
    calls = emb.calls
    caught = MemoryIndex.load_or_rebuild(s, d, retriever="both", per_layer=True, embedder=emb)
    assert [caught.search(query_means=q, query_text=t, k=5) for q, t in queries] == expect
    assert len(caught) == 40 and caught.search(query_text="a bicycle commentary", k=1)[0][0] == 5
    assert emb.calls - calls <= 6  # caught up (21 texts in a batch), not re-embedded one by one
    # settings changed -> rebuilt (with a warning), same results as a fresh build
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        other = MemoryIndex.load_or_rebuild(s, d, retriever="internal", embedder=emb)
    assert len(other) == 40
    # a damaged index file -> rebuilt
    (d / "index" / "pooled.npz").write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="unusable"):
        again = MemoryIndex.load_or_rebuild(s, d, retriever="both", per_layer=True, embedder=emb)
    assert [again.search(query_means=q, query_text=t, k=5) for q, t in queries] == expect
    s.close()


def test_missing_index_and_entries_gone_from_store(tmp_path):
    s = _store(tmp_path, 12)
    d = tmp_path / "m"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idx = MemoryIndex.load_or_rebuild(s, d)  # no index yet: built from the store, no warning
    assert len(idx) == 12
    idx.save(d)
    manifest = json.loads((d / "index" / "manifest.json").read_text())
    assert manifest["model"] == "tiny-test" and manifest["retriever"] == "internal"
    s.close()
    f = d / "segments" / "00000004.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-5] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="entry 4 skipped"):
        s = LongTermStore.open(d)
    with s:
        idx = MemoryIndex.load_or_rebuild(s, d)
        assert len(idx) == 11
        res = idx.search(query_means=make_segment(4).key_summary, k=12)
        assert 4 not in [i for i, _ in res] and len(res) == 11


# ---- benchmark helpers --------------------------------------------------------------------------


def test_bench_memory_helpers():
    from eval.bench_memory import faiss_latency, kv_bytes_per_hour, kv_table

    gib = 2**30
    # ReKV's reported storage: LLaVA-OV-7B 18.8 GB/h and 0.5B 4.0 GB/h at 0.5 fps, 196 tokens/frame, bf16
    assert kv_bytes_per_hour(28, 4, 128, 196, 0.5, 2) / gib == pytest.approx(18.8, abs=0.05)
    assert kv_bytes_per_hour(24, 2, 64, 196, 0.5, 2) / gib == pytest.approx(4.0, abs=0.05)
    full = kv_bytes_per_hour(28, 4, 128, 196, 0.5, 2)
    assert full / 2 < kv_bytes_per_hour(28, 4, 128, 196, 0.5, 2, "int8") < full / 1.9
    assert full / 4 < kv_bytes_per_hour(28, 4, 128, 196, 0.5, 2, "int4") < full / 3.5
    rows = kv_table()
    assert {r["name"] for r in rows} >= {"llava-onevision-7b", "qwen2.5-vl-7b", "tiny-qwen2.5-vl"}
    with pytest.raises(ValueError):
        kv_bytes_per_hour(28, 4, 128, 196, 0.5, 2, "int2")
    lat = faiss_latency(sizes=(3000,), dim=32, n_queries=20, k=5)
    assert [r["kind"] for r in lat] == ["exact", "hnsw"]
    assert lat[0]["recall_at_k"] == 1.0 and lat[1]["recall_at_k"] >= 0.8
    assert all(r["median_ms"] > 0 for r in lat)
