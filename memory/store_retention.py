"""Deleting long-term entries crash-safely, and compacting the journal (mixed into ``LongTermStore``).

Deletion: one fsynced journal record ``{"op": "delete", "ids": [...]}`` first, then the segment files,
then the directory fsync. A crash before the record leaves the entries intact; a crash after it leaves
files that no entry owns, which the next open removes (``remove_orphans``): the deletion is completed,
never half done. Compaction rewrites the journal with only the live entries (temp file, fsync, rename,
directory fsync), headed by a ``{"op": "next_id"}`` record so that ids of deleted entries are never
reused; a crash leaves the old or the new journal, which describe the same entries.

The mixin uses the store's entry table, locks and journal (``_entries``, ``_ram`` (a
``memory.store_tiers.RamTier``), ``_lock``, ``_write_lock``, ``_journal``, ``_durable``, ``_seg_dir``,
``_next_id``, ``_check_open``, ``_append_journal``); the policy (what to delete) is ``memory.retention``.
"""
from __future__ import annotations

import logging
from pathlib import Path

from memory import fsops
from memory.fsops import FileOps
from memory.journal import Journal, atomic_write, encode_line, fsync_dir
from memory.store_io import entry_line

logger = logging.getLogger(__name__)

RETENTION_OPS = ("delete", "next_id")


def _remove_file(path: Path, fs: FileOps | None = None) -> None:
    """Delete one store file (already gone is fine). Module level so that tests can interrupt a deletion."""
    try:
        (fs or fsops.DEFAULT).unlink(path)
    except FileNotFoundError:
        pass


def replay(body: dict, entries: dict) -> int:
    """Apply a "delete" or "next_id" journal record to ``entries`` (id -> entry) while loading; returns the
    highest id the record names (the next id to hand out is above it)."""
    if body.get("op") == "next_id":
        return int(body.get("next_id", 0)) - 1
    ids = [int(i) for i in body.get("ids", ())]
    for i in ids:
        entries.pop(i, None)
    return max(ids, default=-1)


class RetentionMixin:
    """``delete``, ``compact`` and the orphan sweep of a ``LongTermStore``."""

    dead_lines = 0  # journal lines that no longer describe a live entry (compact() drops them)

    def delete(self, entry_ids) -> list[int]:
        """Delete entries: the journal record first (fsynced), then their files. Returns the ids deleted
        (unknown ids are ignored)."""
        self._check_open()
        with self._write_lock:
            with self._lock:
                ids = sorted({int(i) for i in entry_ids if int(i) in self._entries})
                files = [self._entries[i].file for i in ids]
            if not ids:
                return []
            try:
                self._append_journal(encode_line({"op": "delete", "ids": ids}))
            except OSError as e:
                raise RuntimeError(f"could not journal the deletion of {len(ids)} entries in {self.directory} "
                                   f"({e.strerror or e}); nothing was deleted: check the disk and retry") from None
            with self._lock:
                for i in ids:
                    self._entries.pop(i, None)
                    self._ram.discard(i)
            self.dead_lines += 1 + len(ids)
            for f in files:
                _remove_file(self.directory / f, self.fs)
            if self._durable:
                fsync_dir(self._seg_dir, self.fs)
        return ids

    def journal_bytes(self) -> int:
        """Bytes of the journal file."""
        return self._journal.size if self._journal is not None else 0

    def compact(self) -> None:
        """Rewrite the journal with only the live entries (atomically)."""
        self._check_open()
        with self._write_lock:
            with self._lock:
                lines = [encode_line({"op": "next_id", "next_id": self._next_id})]
                lines += [entry_line(self._entries[i]) for i in sorted(self._entries)]
            path = self._journal.path
            try:
                atomic_write(path, b"".join(lines), self._durable, self.fs)
            except OSError as e:
                raise RuntimeError(f"could not compact the journal of {self.directory} ({e.strerror or e}); the old "
                                   f"journal is intact") from None
            self._journal.close()
            self._journal = Journal(path, self._durable, self.fs)
            self.dead_lines = 0

    def remove_orphans(self, journaled: dict) -> None:
        """While opening: delete segment files that no journaled entry owns (the rest of an interrupted
        deletion, or a segment whose journal line a crash cut off). Damaged files of journaled entries stay."""
        owned = {e.file.rsplit("/", 1)[-1] for e in journaled.values()}
        removed = 0
        for p in self._seg_dir.glob("*.safetensors"):
            if p.name not in owned:
                _remove_file(p, self.fs)
                removed += 1
        if removed:
            logger.info("memory %s: removed %d segment files no entry owns (deletion completed)", self.directory,
                        removed)
            if self._durable:
                fsync_dir(self._seg_dir, self.fs)
