"""Retention: a byte cap and a maximum age; crash-safe deletion (kill -9 mid-deletion, then reopen)."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from _memory_helpers import make_segment, meta
from memory.index import MemoryIndex
from memory.retention import enforce
from memory.store import LongTermStore
from memory.store_format import JOURNAL_NAME, SEGMENT_DIR
from vstream.config import MemoryConfig

WRITER = Path(__file__).with_name("_retention_writer.py")
M = meta(layers=2, heads=2, head_dim=32)


def _files_bytes(d: Path) -> int:
    """What the store really occupies on disk: segment files + journal (counted independently)."""
    segs = sum(p.stat().st_size for p in (d / SEGMENT_DIR).iterdir())
    return segs + (d / JOURNAL_NAME).stat().st_size


def _assert_consistent(d: Path) -> LongTermStore:
    """Reopen: every segment file belongs to a live entry and every index id is a live entry."""
    store = LongTermStore.open(d)
    files = {p.name for p in (d / SEGMENT_DIR).iterdir()}
    assert files == {f"{i:08d}.safetensors" for i in store.ids()}, "orphan or missing segment files"
    idx = MemoryIndex.load_or_rebuild(store, d, retriever="internal")
    assert set(idx.pooled.ids().tolist()) == set(store.ids()), "dangling index entries"
    for i in store.ids():
        store.get(i)  # every live entry reads back (checksums ok)
    return store


def test_byte_cap_on_a_long_stream(tmp_path):
    cap = 200_000
    store = LongTermStore(M, tmp_path, ram_bytes=1 << 20)
    index = MemoryIndex(store, retriever="internal")
    deleted = []
    for eid in range(300):
        seg = make_segment(eid, M, tokens=32)
        store.add(seg)
        index.add(eid, seg)
        deleted += enforce(store, index, max_disk_bytes=cap)
        assert store.disk_bytes_used() <= cap
        assert _files_bytes(tmp_path) <= cap
    assert len(deleted) > 250 and deleted == sorted(deleted)  # oldest first
    kept = store.ids()
    assert kept == list(range(300 - len(kept), 300)) and len(kept) >= 3  # the newest survive
    assert set(index.pooled.ids().tolist()) == set(kept)
    q = make_segment(299, M, tokens=32).key_summary
    assert all(i in kept for i, _ in index.search(query_means=q, k=5))
    index.save(tmp_path)
    store.close()
    _assert_consistent(tmp_path).close()


def test_max_age(tmp_path):
    store = LongTermStore(M, tmp_path, ram_bytes=1 << 20)
    for eid in range(10):  # entry i covers [i, i + 1) s
        store.add(make_segment(eid, M, tokens=4))
    gone = enforce(store, None, max_age_s=3.0, now_s=10.0)
    assert gone == [0, 1, 2, 3, 4, 5] and store.ids() == [6, 7, 8, 9]  # ended more than 3 s before 10 s
    store.close()
    _assert_consistent(tmp_path).close()


def test_kill_during_deletion_then_reopen(tmp_path):
    p = subprocess.Popen([sys.executable, str(WRITER), str(tmp_path), "mid", "0"], stdout=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        for line in p.stdout:
            if line.strip() == "mid":
                break
        else:
            pytest.fail(f"writer ended early (rc {p.wait()})")
        assert len(list((tmp_path / SEGMENT_DIR).glob("*.safetensors"))) == 7  # one of four removed
        p.send_signal(signal.SIGKILL)
    finally:
        p.kill()
        p.wait()
    store = _assert_consistent(tmp_path)
    assert store.ids() == [4, 5, 6, 7]  # the deletion was completed
    assert store.next_id == 8
    store.close()


def test_random_kills_under_a_cap(tmp_path):
    rng = random.Random(0)
    cap = 150_000
    for _ in range(3):
        p = subprocess.Popen([sys.executable, str(WRITER), str(tmp_path), "loop", str(cap)], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        try:
            want, n = rng.randint(20, 60), 0
            for line in p.stdout:
                n += line.startswith("deleted")
                if n >= want // 10 and line.startswith("added") and int(line.split()[1]) % 7 == rng.randint(0, 6):
                    break
            p.send_signal(signal.SIGKILL)
        finally:
            p.kill()
            p.wait()
        store = _assert_consistent(tmp_path)
        assert store.disk_bytes_used() <= cap + 40_000  # at most the one entry added before its enforce
        store.close()


def test_config_validation():
    with pytest.raises(ValueError, match="max_disk_bytes"):
        MemoryConfig(max_disk_bytes=-1).validate()
    with pytest.raises(ValueError, match="max_age_s"):
        MemoryConfig(max_age_s=-5).validate()
    MemoryConfig(max_disk_bytes=10**9, max_age_s=3600).validate()
