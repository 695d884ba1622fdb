"""Durability a test can see: a power cut at every operation of a store's life, with a double of the file layer.

SIGKILL (tests/test_store_crash.py) keeps the page cache, so it cannot see a missing fsync. Here the store
runs on ``tests/_fsdouble.PowerCutFS``, which keeps what was not fsynced apart and throws it away. The
sequence (create, adds, text updates, an index save, close, reopen, one more add, a deletion, a journal
compaction, close) is cut before its 1st, 2nd, ... last changing operation, in each crash mode; after
every cut:

- the directory opens (once its creation was acknowledged) and takes new entries;
- every acknowledged entry is there with its exact bytes, every acknowledged text update is there, and
  an acknowledged deletion stays done (ids are never reused);
- nothing half-written is visible: no damaged-entry warning, no entry beyond the one in flight;
- an acknowledged index save loads as saved (not rebuilt because a file of it is missing or damaged).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import pytest

from _fsdouble import MODES, PowerCut, PowerCutFS
from _memory_helpers import make_segment, meta, same_kv
from memory.index import MemoryIndex
from memory.store import LongTermStore

TOKENS = 4
M = meta()


@dataclass
class Acked:
    created: bool = False
    ids: set[int] = field(default_factory=set)
    texts: set[int] = field(default_factory=set)
    deleted: set[int] = field(default_factory=set)
    deleting: set[int] = field(default_factory=set)  # a deletion in flight: either outcome is fine
    index_ids: set[int] | None = None  # ids in the last acknowledged index save
    in_flight: int | None = None


def _sequence(d, fs, ack: Acked) -> None:
    store = LongTermStore(M, d, ram_bytes=0, fs=fs)
    ack.created = True
    for i in range(3):
        ack.in_flight = i
        ack.ids.add(store.add(make_segment(i, M, tokens=TOKENS)))
        if i % 2 == 1:
            store.set_text(i, f"text {i} v2")
            ack.texts.add(i)
    idx = MemoryIndex(store, retriever="internal", per_layer=True)
    for i in sorted(ack.ids):
        idx.add(i, make_segment(i, M, tokens=TOKENS))
    idx.save(d)
    ack.index_ids = set(ack.ids)
    store.close()
    store = LongTermStore.open(d, expected=M, ram_bytes=0, fs=fs)  # the reopen path writes too
    ack.in_flight = 3
    ack.ids.add(store.add(make_segment(3, M, tokens=TOKENS)))
    store.set_text(0, "text 0 v2")
    ack.texts.add(0)
    ack.deleting = {1}
    store.delete([1])
    ack.deleted, ack.deleting = {1}, set()
    store.compact()
    store.close()


def _count_ops(tmp_path) -> int:
    root = tmp_path / "count"
    root.mkdir()
    fs = PowerCutFS(root)
    _sequence(root / "mem", fs, Acked())
    return fs.ops


def _check(d, ack: Acked, where: str) -> None:
    fs = PowerCutFS(d.parent)  # after the reboot: no cut (and no slow real fsync)
    if not ack.created:  # cut while creating: creating it again must simply work
        with LongTermStore(M, d, ram_bytes=0, fs=fs) as s:
            assert len(s) == 0, where
        return
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        store = LongTermStore.open(d, expected=M, ram_bytes=0, fs=fs)
    with store:
        damaged = [str(w.message) for w in rec if "skipped" in str(w.message)]
        assert not damaged, (where, damaged)
        have = set(store.ids())
        assert not (have & ack.deleted), (where, "an acknowledged deletion came back")
        assert ack.ids - ack.deleted - ack.deleting <= have, (where, sorted(ack.ids - have))
        allowed = ack.ids | ({ack.in_flight} if ack.in_flight is not None else set())
        assert have <= allowed, (where, sorted(have - allowed))
        for i in have:
            want = make_segment(i, M, tokens=TOKENS)
            got = store.get(i)
            assert same_kv(got, want), f"{where}: entry {i} has wrong bytes"
            assert (got.start_s, got.thumbnail) == (want.start_s, want.thumbnail), where
            text = store.info(i).text
            assert text == f"text {i} v2" if i in ack.texts else text in (f"chunk {i}", f"text {i} v2"), (where, i)
        if ack.index_ids is not None:
            assert (d / "index" / "manifest.json").is_file(), f"{where}: an acknowledged index save is gone"
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                idx = MemoryIndex.load_or_rebuild(store, d, retriever="internal", per_layer=True)
            unusable = [str(w.message) for w in rec if "unusable" in str(w.message)]
            assert not unusable, (where, unusable)
            assert set(idx.pooled.ids().tolist()) == have, where  # caught up with the store
            assert all(set(layer.ids().tolist()) == have for layer in idx.layers), where
        nxt = store.next_id
        assert nxt > max(ack.ids | have, default=-1), where  # ids are never reused, deleted ones included
        assert store.add(make_segment(nxt, M, tokens=TOKENS)) == nxt, where  # the directory still takes entries


def test_power_cut_at_every_operation(tmp_path):
    n_ops = _count_ops(tmp_path)
    assert n_ops > 40  # the sequence really writes (creation, 4 adds, 3 texts, an index, a reopen)
    runs = 0
    for mode in MODES:
        for cut in range(n_ops + 1):
            root = tmp_path / f"{mode}-{cut}"
            root.mkdir()
            fs = PowerCutFS(root, cut_at=cut)
            ack = Acked()
            try:
                _sequence(root / "mem", fs, ack)
            except PowerCut:
                pass
            fs.crash(mode)
            _check(root / "mem", ack, f"{mode} cut before op {cut}/{n_ops}")
            runs += 1
    assert runs == len(MODES) * (n_ops + 1)


def test_torn_journal_line_after_a_cut_is_cut_off_and_appends_go_on(tmp_path):
    """A torn last line (half an append reached the disk) is cut on open; later appends land after it."""
    root = tmp_path / "r"
    root.mkdir()
    fs = PowerCutFS(root)
    d = root / "mem"
    s = LongTermStore(M, d, ram_bytes=0, fs=fs)
    s.add(make_segment(0, M, tokens=TOKENS))
    fs.cut_at = fs.ops + 1  # the journal line of entry 0's text update is written, not fsynced
    with pytest.raises(PowerCut):
        s.set_text(0, "text 0 v2")
    fs.crash("torn")
    raw = (d / "journal.jsonl").read_bytes()
    assert not raw.endswith(b"\n")  # the double really left half a line
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        s2 = LongTermStore.open(d, expected=M, ram_bytes=0)
    assert any("truncated last journal line" in str(w.message) for w in rec)
    assert s2.ids() == [0] and s2.info(0).text == "chunk 0"
    s2.set_text(0, "text 0 v3")
    s2.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with LongTermStore.open(d, expected=M, ram_bytes=0) as s3:
            assert s3.info(0).text == "text 0 v3"


def test_the_double_loses_what_was_not_made_durable(tmp_path):
    """The double itself: unsynced data, and names not fsynced into their directory, do not survive."""
    root = tmp_path / "r"
    root.mkdir()
    fs = PowerCutFS(root)
    files = {}
    for name, sync_file, sync_dir in (("a", False, False), ("b", True, False), ("c", False, True), ("d", True, True)):
        fd = fs.open(root / name, os.O_WRONLY | os.O_CREAT, 0o644)
        fs.write(fd, b"data " + name.encode())
        if sync_file:
            fs.fsync(fd)
        fs.close(fd)
        if sync_dir:
            fs.fsync_dir(root)
        files[name] = (sync_file, sync_dir)
    fs.crash("strict")
    # a and b were created before c's directory fsync, so their names are durable too
    assert {p.name: p.read_bytes() for p in root.iterdir()} == {"a": b"", "b": b"data b", "c": b"", "d": b"data d"}
    root2 = tmp_path / "r2"
    root2.mkdir()
    fs = PowerCutFS(root2)
    fd = fs.open(root2 / "x", os.O_WRONLY | os.O_CREAT, 0o644)
    fs.write(fd, b"0123456789")
    fs.fsync(fd)
    fs.close(fd)
    fs.fsync_dir(root2)
    fs.rename(root2 / "x", root2 / "y")  # not fsynced into the directory
    fd = fs.open(root2 / "y", os.O_WRONLY, 0o644)
    fs.lseek(fd, 0, os.SEEK_END)
    fs.write(fd, b"abcd")  # not fsynced
    fs.crash("torn")
    assert {p.name: p.read_bytes() for p in root2.iterdir()} == {"x": b"0123456789ab"}
    with pytest.raises(PowerCut):
        fs.write(fd, b"more")


def test_the_real_file_ops_reach_the_disk(tmp_path, monkeypatch):
    """The default layer really fsyncs: one add fsyncs its segment file, the segments directory and the journal."""
    import stat as stat_mod

    import memory.fsops as fsops_mod

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append("dir" if stat_mod.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(fsops_mod.os, "fsync", fsync)
    with LongTermStore(M, tmp_path / "mem", ram_bytes=0) as s:
        synced.clear()
        s.add(make_segment(0, M, tokens=TOKENS))
        assert synced == ["file", "dir", "file"]  # segment data, its name, the journal line
        synced.clear()
        s.set_text(0, "x")
        assert synced == ["file"]
