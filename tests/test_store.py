"""LongTermStore: round trips, quantisation bounds, damaged directories, full disk, bounded RAM, threads."""
from __future__ import annotations

import errno
import json
import os
import random
import threading
import warnings

import psutil
import pytest
import torch

from memory import quant
from memory.fsops import FileOps
from memory.index import MemoryIndex
from memory.store import LongTermStore, StoreMeta
from _memory_helpers import meta, make_segment, same_kv


def _fill(store: LongTermStore, n: int, **kw) -> None:
    for i in range(n):
        assert store.add(make_segment(i, store.meta, **kw)) == i


# ---- quantisation -------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("shape", [(1, 2, 7, 5), (1, 3, 16, 8), (33,)])
def test_quantize_error_bound(bits, shape):
    g = torch.Generator().manual_seed(bits * 100 + len(shape))
    t = torch.randn(shape, generator=g)
    if len(shape) == 4:
        t[..., 0] *= 40.0  # an outlier channel must not hurt the others (per-channel scales)
        t[..., 1] = 0.0  # an all-zero channel comes back exactly zero
    d = quant.quantize(t, bits)
    back = quant.dequantize(d, torch.float32)
    assert back.shape == t.shape
    err = (back - t).abs()
    qmax = {8: 127, 4: 7}[bits]
    # the documented bound, recomputed here from the data: max|channel| / qmax * (1/2 + qmax * 2**-20)
    amax = t.abs().amax(dim=-2, keepdim=True) if len(shape) > 1 else t.abs().amax()
    bound = amax / qmax * (0.5 + qmax * 2.0 ** -20)
    assert bool((err <= bound).all()), float((err - bound).max())
    assert bool((err <= quant.error_bound(d)).all())
    if len(shape) == 4:
        assert bool((back[..., 1] == 0).all())
        # the other channels keep their own (small) error despite the outlier channel
        assert float(err[..., 2:].max()) <= float(t[..., 2:].abs().max()) / qmax
    n = t.numel()
    assert d["q"].numel() == (n if bits == 8 else (n + 1) // 2)
    assert quant.nbytes(d) < t.numel() * 4


def test_quantize_rejects_bad_input():
    with pytest.raises(ValueError, match="bits"):
        quant.quantize(torch.zeros(2, 2), 3)
    with pytest.raises(ValueError, match="inf/nan"):
        quant.quantize(torch.tensor([[1.0, float("nan")]]), 8)


# ---- round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_bit_identical(tmp_path, dtype):
    m = meta(dtype=dtype, pos_dims=3)
    d = tmp_path / "mem"
    with LongTermStore(m, d, ram_bytes=4096) as s:
        _fill(s, 12)
        s.set_text(4, "the teacher writes an equation")
        idx = MemoryIndex(s, retriever="internal", per_layer=True)
        for i in s.ids():
            idx.add(i, s.get(i))
        idx.save(d)
        queries = [make_segment(100 + q, m).key_summary for q in range(5)]
        before = [idx.search(query_means=q, k=4) for q in queries]
        before_pl = [idx.search_per_layer(q, 3) for q in queries]
        infos = s.infos()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean directory opens without warnings
        s2 = LongTermStore.open(d, expected=m, ram_bytes=4096)
    with s2:
        assert len(s2) == 12 and s2.infos() == infos
        assert s2.info(4).text == "the teacher writes an equation"
        for i in range(12):
            got, want = s2.get(i), make_segment(i, m)
            assert same_kv(got, want)
            assert got.keys[0].dtype == m.torch_dtype
            assert torch.equal(got.key_summary, want.key_summary)
            assert got.thumbnail == want.thumbnail and got.start_s == i and got.end_s == i + 1
            assert got.kind == "vision" and got.chunk_index == i
        idx2 = MemoryIndex.load_or_rebuild(s2, d, retriever="internal", per_layer=True)
        assert [idx2.search(query_means=q, k=4) for q in queries] == before
        assert [idx2.search_per_layer(q, 3) for q in queries] == before_pl
        assert s2.add(make_segment(12, m)) == 12  # appending after a reopen continues the ids


@pytest.mark.parametrize("q", ["int8", "int4"])
def test_quantised_store_within_bound(tmp_path, q):
    m = meta(head_dim=16)
    with LongTermStore(m, tmp_path / q, quantize=q) as s:
        _fill(s, 5, tokens=32)
        first = [s.get(i) for i in range(5)]
        full = sum(make_segment(i, m, tokens=32).nbytes() for i in range(5))
        assert sum(i.nbytes for i in s.infos()) < full / (3 if q == "int8" else 5)
    qmax = {"int8": 127, "int4": 7}[q]
    with LongTermStore.open(tmp_path / q) as s:
        assert s.quantize == q
        for i in range(5):
            got, want = s.get(i), make_segment(i, m, tokens=32)
            assert same_kv(got, first[i])  # the persisted bytes dequantise identically
            for a, b in zip(got.keys + got.values, want.keys + want.values):
                bound = b.abs().amax(dim=-2, keepdim=True) / qmax * (0.5 + qmax * 2.0 ** -20)
                assert bool(((a - b).abs() <= bound).all())
            assert torch.equal(got.rel_pos, want.rel_pos)


def test_get_dtype_device_and_unknown_id(tmp_path):
    with LongTermStore(meta(), tmp_path / "m") as s:
        _fill(s, 2)
        seg = s.get(1, device="cpu", dtype=torch.bfloat16)
        assert seg.keys[0].dtype == torch.bfloat16
        with pytest.raises(KeyError, match="no long-term entry 7"):
            s.get(7)
        with pytest.raises(ValueError):
            s.info(7)
        with pytest.raises(ValueError):
            s.set_text(9, "x")


def test_validation(tmp_path):
    m = meta()
    with LongTermStore(m, tmp_path / "m") as s:
        with pytest.raises(ValueError, match="layers"):
            s.add(make_segment(0, meta(layers=3)))
        with pytest.raises(ValueError, match="bfloat16"):
            s.add(make_segment(0, meta(dtype="bfloat16")))
        with pytest.raises(ValueError, match="shape"):
            s.add(make_segment(0, meta(heads=1)))
        assert len(s) == 0
    with pytest.raises(ValueError, match="quantize"):
        LongTermStore(m, None, quantize="int3")
    with pytest.raises(ValueError, match="not empty"):
        (tmp_path / "busy").mkdir()
        (tmp_path / "busy" / "x.txt").write_text("hi")
        LongTermStore(m, tmp_path / "busy")
    with pytest.raises(ValueError, match="no config.json"):
        LongTermStore.open(tmp_path / "nothing")


# ---- damaged directories ------------------------------------------------------------------------


def test_corrupted_segment_is_skipped(tmp_path):
    d = tmp_path / "m"
    with LongTermStore(meta(), d) as s:
        _fill(s, 6)
    seg_file = d / "segments" / "00000003.safetensors"
    raw = bytearray(seg_file.read_bytes())
    for off in (len(raw) // 2, len(raw) - 3):
        raw[off] ^= 0xFF
    seg_file.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="entry 3 skipped.*checksum"):
        s = LongTermStore.open(d)
    with s:
        assert s.ids() == [0, 1, 2, 4, 5]
        assert all(same_kv(s.get(i), make_segment(i)) for i in s.ids())
        assert s.add(make_segment(6)) == 6  # ids are never reused
    (d / "segments" / "00000005.safetensors").unlink()
    with pytest.warns(RuntimeWarning) as rec:
        s = LongTermStore.open(d, ram_bytes=0)
    msgs = [str(w.message) for w in rec]
    assert any("entry 5 skipped" in x and "missing" in x for x in msgs)
    assert any("entry 3 skipped" in x for x in msgs)
    with s:
        assert s.ids() == [0, 1, 2, 4, 6]
        # damaged after open: a clear error on read, not wrong bytes
        f = d / "segments" / "00000004.safetensors"
        raw = bytearray(f.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        f.write_bytes(bytes(raw))
        with pytest.raises(RuntimeError, match="entry 4.*checksum"):
            s.get(4)


def test_truncated_and_corrupt_journal_lines(tmp_path):
    d = tmp_path / "m"
    with LongTermStore(meta(), d) as s:
        _fill(s, 5)
        s.set_text(1, "updated text")
    j = d / "journal.jsonl"
    lines = j.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 7  # 5 adds + 1 text update
    # corrupt a middle line (entry 2) and cut the last line (the text update) in half
    bad = lines[2].replace(b'"chunk 2"', b'"chunk X"')
    j.write_bytes(b"\n".join(lines[:2] + [bad] + lines[3:5]) + b"\n" + lines[5][: len(lines[5]) // 2])
    with pytest.warns(RuntimeWarning) as rec:
        s = LongTermStore.open(d)
    msgs = " ".join(str(w.message) for w in rec)
    assert "truncated last journal line" in msgs and "line 3 is corrupt" in msgs
    with s:
        assert s.ids() == [0, 1, 3, 4]
        assert s.info(1).text == "chunk 1"  # the torn update is ignored
        assert s.add(make_segment(5)) == 5
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        s = LongTermStore.open(d)
    # the torn tail was cut off on the first open
    assert not any("truncated last journal line" in str(w.message) for w in rec)
    with s:
        assert s.ids() == [0, 1, 3, 4, 5] and same_kv(s.get(5), make_segment(5))


def test_other_model_or_version_is_value_error(tmp_path):
    d = tmp_path / "m"
    LongTermStore(meta(model="Qwen/Qwen2.5-VL-3B-Instruct"), d).close()
    other = meta(model="llava-hf/llava-onevision-qwen2-0.5b-ov-hf")
    with pytest.raises(ValueError) as e:
        LongTermStore.open(d, expected=other)
    msg = str(e.value)
    assert "Qwen/Qwen2.5-VL-3B-Instruct" in msg and "llava-onevision-qwen2-0.5b" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="Qwen2.5-VL-3B"):
        LongTermStore(other, d)
    with pytest.raises(ValueError, match="num_layers|layers"):
        LongTermStore(meta(model="Qwen/Qwen2.5-VL-3B-Instruct", layers=4), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["format_version"] = 99
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="format version 99"):
        LongTermStore.open(d)


def test_directory_is_locked_while_open(tmp_path):
    d = tmp_path / "m"
    s = LongTermStore(meta(), d)
    with pytest.raises(RuntimeError, match="in use"):
        LongTermStore.open(d)
    s.close()
    LongTermStore.open(d).close()


def test_temp_directory_is_deleted_on_close():
    s = LongTermStore(meta(), None)
    _fill(s, 3)
    d = s.directory
    assert d.is_dir() and s.disk_bytes_used() > 0
    s.close()
    assert not d.exists()
    with pytest.raises(RuntimeError, match="closed"):
        s.add(make_segment(3))


# ---- full disk ----------------------------------------------------------------------------------


class _DiskFull(FileOps):
    """Real file operations, except that chosen ``write`` calls (counted from ``arm``) hit ENOSPC."""

    def __init__(self) -> None:
        self.fail_calls: set[int] = set()
        self.n = 0

    def arm(self, fail_calls: set[int]) -> None:
        self.fail_calls, self.n = fail_calls, 0

    def write(self, fd: int, data) -> int:
        self.n += 1
        if self.n in self.fail_calls:
            os.write(fd, bytes(data[: len(data) // 3]))  # a partial write before the disk filled up
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)


@pytest.mark.parametrize("which", ["segment", "journal"])
def test_disk_full_loses_nothing(tmp_path, which):
    d = tmp_path / "m"
    disk = _DiskFull()
    s = LongTermStore(meta(), d, fs=disk)
    _fill(s, 3)
    journal_before = (d / "journal.jsonl").read_bytes()
    files_before = sorted(p.name for p in (d / "segments").iterdir())
    # add() writes the segment (write call 1) then the journal line (call 2)
    disk.arm({1} if which == "segment" else {2})
    with pytest.raises(RuntimeError) as e:
        s.add(make_segment(3))
    msg = str(e.value)
    assert "disk full" in msg and "\n" not in msg
    assert (d / "journal.jsonl").read_bytes() == journal_before  # journal intact
    assert sorted(p.name for p in (d / "segments").iterdir()) == files_before  # temp file / orphan cleaned
    disk.arm({1})
    with pytest.raises(RuntimeError, match="disk full"):
        s.set_text(0, "new text")
    assert s.info(0).text == "chunk 0" and (d / "journal.jsonl").read_bytes() == journal_before
    disk.arm(set())
    assert len(s) == 3 and all(same_kv(s.get(i), make_segment(i)) for i in range(3))
    assert s.add(make_segment(3)) == 3  # the store is still usable
    s.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = LongTermStore.open(d)
    with s:
        assert s.ids() == [0, 1, 2, 3] and all(same_kv(s.get(i), make_segment(i)) for i in range(4))


# ---- bounded RAM --------------------------------------------------------------------------------


def test_ram_tier_is_bounded_and_disk_serves_the_rest(tmp_path):
    m = meta(layers=2, heads=2, head_dim=32)
    limit = 256 << 10
    proc = psutil.Process()
    n = 5000
    with LongTermStore(m, tmp_path / "m", ram_bytes=limit, durable=False) as s:
        s.add(make_segment(0, m, tokens=32))
        rss0 = proc.memory_info().rss
        per_entry = make_segment(0, m, tokens=32).nbytes()  # 32 KiB of K/V
        base = make_segment(0, m, tokens=32)
        for i in range(1, n):
            # cheap distinct segments: entry i = base K/V + i (exactly representable in fp32)
            seg = type(base)("vision", tuple(k + i for k in base.keys), tuple(v - i for v in base.values),
                             base.rel_pos, start_s=float(i), end_s=i + 1.0, text=f"chunk {i}",
                             key_summary=base.key_summary + i)
            assert s.add(seg) == i
            assert s.ram_bytes_used() <= limit
        growth = proc.memory_info().rss - rss0
        assert n * per_entry > 150 << 20  # far more K/V than the budget below
        assert growth < 48 << 20, f"RSS grew by {growth / 2**20:.1f} MiB while entries went to disk"
        rng = random.Random(0)
        for i in rng.sample(range(1, n), 150):
            got = s.get(i)
            assert s.ram_bytes_used() <= limit
            assert all(torch.equal(a, k + i) for a, k in zip(got.keys, base.keys))
            assert all(torch.equal(a, v - i) for a, v in zip(got.values, base.values))
            assert got.text == f"chunk {i}"
        assert s.ram_bytes_used() > 0 and s.disk_bytes_used() > n * per_entry


def test_ram_lru_order(tmp_path):
    m = meta()
    one = sum(t.numel() * t.element_size() for t in make_segment(0, m).keys + make_segment(0, m).values)
    with LongTermStore(m, tmp_path / "m", ram_bytes=3 * (one + 200)) as s:
        _fill(s, 3)
        assert s._ram.ids() == [0, 1, 2]
        s.get(0)  # 0 becomes most recently used
        s.add(make_segment(3, m))
        assert s._ram.ids() == [2, 0, 3]  # 1 was the least recently used
    with LongTermStore(m, tmp_path / "z", ram_bytes=0) as s:
        _fill(s, 2)
        assert s.ram_bytes_used() == 0 and same_kv(s.get(1), make_segment(1, m))


def test_ram_tier_makes_room_for_a_large_entry(tmp_path):
    """A large entry evicts as many least-recently-used small ones as it needs (hand-counted bytes)."""
    m = meta()
    small = [make_segment(i, m, tokens=4) for i in range(4)]
    with LongTermStore(m, tmp_path / "m", ram_bytes=10 << 20) as probe:
        probe.add(small[0])
        one = probe.ram_bytes_used()  # bytes one 4-token entry takes in the RAM tier
    limit = 4 * one
    with LongTermStore(m, tmp_path / "r", ram_bytes=limit) as s:
        for seg in small:
            s.add(seg)
        assert s._ram.ids() == [0, 1, 2, 3] and s.ram_bytes_used() == limit
        s.add(make_segment(4, m, tokens=10))  # about 2.5 small entries: the three oldest must go
        assert s.ram_bytes_used() <= limit
        assert s._ram.ids() == [3, 4]


def test_concurrent_add_and_get(tmp_path):
    m = meta()
    errors: list[BaseException] = []
    with LongTermStore(m, tmp_path / "m", ram_bytes=8 << 10) as s:
        s.add(make_segment(0, m))
        done = threading.Event()

        def reader() -> None:
            rng = random.Random(1)
            try:
                while not done.is_set():
                    i = rng.randrange(len(s))
                    assert same_kv(s.get(i), make_segment(i, m))
                    s.infos()
            except BaseException as e:  # noqa: BLE001 - surfaced below
                errors.append(e)

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        for i in range(1, 120):
            assert s.add(make_segment(i, m)) == i
            if i % 10 == 0:
                s.set_text(i - 5, f"comment {i}")
        done.set()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len(s) == 120 and s.info(105).text == "comment 110"


def test_store_meta_compat_ignores_dtype():
    a, b = meta(dtype="float32"), meta(dtype="bfloat16")
    a.check_compatible(b, "somewhere")  # same model in another dtype: castable
    with pytest.raises(ValueError, match="dtype"):
        StoreMeta("m", "f", 1, 1, 1, 1, "int8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pinned RAM tier)")
def test_cuda_segments_and_pinned_ram_tier(tmp_path):
    m = meta()
    with LongTermStore(m, tmp_path / "m", device="cuda") as s:
        for i in range(3):
            s.add(make_segment(i, m).to("cuda"))
        assert all(t.is_pinned() for t in s._ram.peek(0).values())
        got = s.get(1)
        assert got.keys[0].device.type == "cuda"
        assert same_kv(got.to("cpu"), make_segment(1, m))


def test_forgotten_store_releases_its_directory(tmp_path):
    import gc

    d = tmp_path / "m"
    s = LongTermStore(meta(), d)
    s.add(make_segment(0))
    del s
    gc.collect()
    with LongTermStore.open(d) as s2:  # the lock went with the garbage-collected store
        assert len(s2) == 1


def test_k4v2_keys_int4_values_ternary_round_trip(tmp_path):
    """k4v2: keys int4, values 2-bit ternary (VidKV-like); both within their stated bounds, 3 bits/elt."""
    import torch

    from memory import quant
    from memory.segment import Segment
    from memory.store import LongTermStore, StoreMeta

    g = torch.Generator().manual_seed(0)
    keys = tuple(torch.randn(1, 2, 40, 16, generator=g) for _ in range(2))
    values = tuple(torch.randn(1, 2, 40, 16, generator=g) for _ in range(2))
    seg = Segment(kind="vision", keys=keys, values=values, rel_pos=torch.arange(40).unsqueeze(0), start_s=0.0,
                  end_s=1.0)
    meta = StoreMeta(model="m", family="f", num_layers=2, num_kv_heads=2, head_dim=16, pos_dims=1, dtype="float32")
    with LongTermStore(meta, tmp_path / "s", quantize="k4v2") as st:
        eid = st.add(seg)
        back = st.get(eid)
        info = st.info(eid)
    for a, b in zip(keys, back.keys):
        d = quant.quantize(a, 4)
        assert bool(((b - a).abs() <= quant.error_bound(d)).all())
    for a, b in zip(values, back.values):
        d = quant.quantize(a, 2)
        assert bool(((b - a).abs() <= quant.error_bound(d)).all())
        assert set(torch.unique(quant.dequantize(d, torch.float32) / d["scale"]).round().tolist()) <= {-1.0, 0.0, 1.0}
    n = sum(t.numel() for t in keys + values)
    scales = 2 * 2 * 2 * 16 * 4  # fp32 per (K|V, layer, head, channel)
    assert n * 3 / 8 + scales <= info.nbytes <= n * 3 / 8 + scales + 256  # 3 bits/element + scales + headers
