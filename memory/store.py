"""Long-term store: evicted chunks as entries in a RAM tier (LRU, bounded in bytes) over a disk tier.

``LongTermStore`` is the one class callers use; its jobs are split by file:

- ``memory.store_format``: the directory's file names, its config and format versions (what needs which).
- ``memory.store_io``: an entry's journal line and segment file, written and read back (``read_infos``).
- ``memory.store_tiers``: the RAM tier (``RamTier``, an LRU cache bounded in bytes).
- ``memory.store_retention``: deleting entries and compacting the journal (mixed in).
- ``memory.journal``: the durable-write, journal and lock primitives; ``memory.types``: ``StoreMeta``,
  ``EntryInfo``.

Crash safety: an entry's segment is written to a temp file, fsynced, renamed into place and the directory
fsynced; only then is its journal line appended and fsynced. A crash at any moment therefore leaves either
the old state or the old state plus the new entry. On open, a truncated last journal line is dropped with a
warning and entries whose segment file is missing or fails its sha256 are skipped with a warning.
This module holds the entry table, the two locks that guard it, and opening / adding / reading.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import threading
import weakref
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from memory import fsops
from memory import store_format as fmt
from memory.fsops import FileOps
from memory.journal import DirLock, Journal, atomic_write, encode_line, read_journal, warn
from memory.segment import Segment
from memory.store_format import CONFIG_NAME, JOURNAL_NAME, LOCK_NAME, SEGMENT_DIR, read_config
from memory.store_io import (StoredEntry, UnknownEntryError, check_segment, decode_segment, encode_segment,
                             entry_from_line, entry_line, io_error, new_entry, read_segment, validate_segment)
from memory.store_retention import RETENTION_OPS, RetentionMixin, replay
from memory.store_tiers import RamTier, Tensors
from memory.types import EntryInfo, StoreMeta

__all__ = ["LongTermStore", "StoreMeta", "EntryInfo", "UnknownEntryError"]

logger = logging.getLogger(__name__)


class LongTermStore(RetentionMixin):
    """Long-term memory entries: RAM tier (LRU, bounded in bytes; pinned when CUDA is used) over a disk tier.

    Every ``add`` writes through to disk (crash-safe), so the RAM tier is only a cache. ``directory=None``
    uses a private temporary directory (deleted on close) as the disk tier. Thread-safe: one thread may
    add while others get. ``delete`` and ``compact`` (retention) come from ``memory.store_retention``.
    """

    def __init__(self, meta: StoreMeta, directory: str | Path | None = None, *, ram_bytes: int = 2 << 30,
                 quantize: str = "none", device: str | torch.device = "cpu", verify: str = "full",
                 durable: bool | None = None, read_only: bool = False, fs: FileOps | None = None) -> None:
        """Create a store in ``directory`` (or reopen it when it already holds one written by ``meta``'s model).

        verify: "full" checks every segment's sha256 when reopening (skipping bad ones); "size" checks only
        sizes at open (segments are always checked when read). durable: fsync writes (default: True for
        a caller's directory, False for the private temp directory). read_only: open an existing store
        for reading only: nothing in the directory is created, repaired, locked or written (damage is
        skipped in memory, with warnings; repairs happen when a writer opens it); ``add`` raises.
        fs: the file operations that change the directory (default ``memory.fsops.DEFAULT``; tests pass
        a power-cut double).
        """
        self.fs: FileOps = fs or fsops.DEFAULT
        if directory is not None and (Path(directory) / CONFIG_NAME).is_file():
            read_config(Path(directory)).check_readable(str(directory))  # a newer format first, then the rest
        fmt.check_quantize(quantize)
        if verify not in ("full", "size"):
            raise ValueError(f"verify must be 'full' or 'size', got {verify!r}")
        self.meta = meta
        self.quantize = quantize
        self.device = torch.device(device)
        self._ram = RamTier(ram_bytes, pin=self.device.type == "cuda" and torch.cuda.is_available())
        self._lock = threading.RLock()  # in-memory state: entries, RAM tier
        self._write_lock = threading.Lock()  # disk writes: one add / set_text at a time
        self._entries: dict[int, StoredEntry] = {}
        self._next_id = 0
        self._closed = False
        self._dir_lock: DirLock | None = None
        self._journal: Journal | None = None
        self._temp = directory is None
        self.read_only = bool(read_only)
        if self.read_only and directory is None:
            raise ValueError("read_only=True needs the directory of an existing memory")
        if directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="vstream-mem-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.directory), True)
        else:
            self.directory = Path(directory)
            self._cleanup = None
        self._durable = (not self._temp) if durable is None else bool(durable)
        self._seg_dir = self.directory / SEGMENT_DIR
        try:
            config = self.directory / CONFIG_NAME
            if self.read_only and not config.is_file():
                raise ValueError(f"{self.directory} is not a vstream memory directory (no {CONFIG_NAME})")
            if config.exists():
                found = read_config(self.directory)
                meta.check_compatible(found, str(self.directory))
                if found.dtype != meta.dtype:
                    raise ValueError(f"memory at {self.directory} stores K/V as {found.dtype}, not {meta.dtype}; "
                                     f"open it with LongTermStore.open(...) and cast with get(dtype=...)")
                self.meta = found
                if not self.read_only:
                    self._acquire_lock()
                if not self.read_only and fmt.format_version_for(quantize) > found.format_version:
                    self._upgrade_format(fmt.format_version_for(quantize))  # e.g. a v1 store reopened with k2v1.58
                self._load(verify)
            else:
                if self.directory.exists() and any(not fmt.leftover_of_creation(p) for p in self.directory.iterdir()):
                    raise ValueError(f"{self.directory} is not empty and holds no {CONFIG_NAME}; "
                                     f"pick an empty or new directory for the memory")
                fsops.makedirs(self.fs, self.directory, self._durable)
                self._acquire_lock()
                self.meta = dataclasses.replace(meta, format_version=fmt.format_version_for(quantize))
                fmt.write_config(self.directory, self.meta, quantize, self._durable, self.fs)
                self.fs.mkdir(self._seg_dir)  # its name is made durable with the journal's (same directory)
            if not self.read_only:
                self._journal = Journal(self.directory / JOURNAL_NAME, self._durable, self.fs)
        except OSError as e:
            self._release()
            raise io_error("opening the store", self.directory, e) from None
        except BaseException:
            self._release()
            raise

    @classmethod
    def open(cls, directory: str | Path, *, expected: StoreMeta | None = None, ram_bytes: int = 2 << 30,
             device: str | torch.device = "cpu", quantize: str | None = None, verify: str = "full",
             read_only: bool = False, fs: FileOps | None = None) -> "LongTermStore":
        """Load an existing memory directory; ``expected`` (if given) must describe the same model.

        ``read_only``: for readers (answering from a saved memory): the directory is never changed."""
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise ValueError(f"{directory} is not a vstream memory directory (no {CONFIG_NAME})")
        found = read_config(directory)
        found.check_readable(str(directory))  # before anything a newer format may have changed (its quantize name)
        if expected is not None:
            expected.check_compatible(found, str(directory))
        quantize = fmt.read_quantize(directory) if quantize is None else quantize
        return cls(found, directory, ram_bytes=ram_bytes, quantize=quantize, device=device, verify=verify,
                   read_only=read_only, fs=fs)

    # ---- lifecycle ------------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        self._dir_lock = DirLock(self.directory, LOCK_NAME, self.fs)

    def _release(self) -> None:
        """Close the journal and release the lock (their fds are also closed if the store is forgotten).
        The closed journal stays referenced: ``disk_bytes_used`` still counts its size."""
        if getattr(self, "_journal", None) is not None:
            self._journal.close()
        if getattr(self, "_dir_lock", None) is not None:
            self._dir_lock.release()
        self._dir_lock = None
        if getattr(self, "_cleanup", None) is not None:
            self._cleanup()

    def close(self) -> None:
        """Release the directory (and delete it when it is the private temp directory). Idempotent."""
        with self._write_lock, self._lock:
            if self._closed:
                return
            self._closed = True
            self._ram.clear()
            self._release()

    def __enter__(self) -> "LongTermStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the long-term store is closed; open it again with LongTermStore.open(directory)")

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise RuntimeError(f"the memory in {self.directory} is open read-only; open it without read_only "
                               f"to add to it")

    # ---- loading --------------------------------------------------------------------------------

    def _load(self, verify: str) -> None:
        """Replay the journal: entries, text updates; skip what is damaged (with warnings).
        A writer also repairs: leftover temp files removed, a torn last journal line cut off."""
        if not self.read_only:
            if not self._seg_dir.is_dir():
                self.fs.mkdir(self._seg_dir)
            for tmp in self._seg_dir.glob(".*.tmp"):  # leftovers of a crash during a segment write
                try:
                    self.fs.unlink(tmp)
                except OSError:
                    pass
        jpath = self.directory / JOURNAL_NAME
        max_id = -1
        entries: dict[int, StoredEntry] = {}
        for line_no, body in read_journal(jpath, self._durable, self.fs, repair=not self.read_only):
            op = body.get("op")
            if op == "add":
                try:
                    e = entry_from_line(body)
                except (KeyError, TypeError, ValueError) as err:
                    warn(f"{jpath}: journal line {line_no} has a bad entry ({err}); skipped")
                    continue
                max_id = max(max_id, e.info.entry_id)
                entries[e.info.entry_id] = e
            elif op == "text":
                e = entries.get(int(body.get("id", -1)))
                self.dead_lines += 1
                if e is not None:
                    e.info = dataclasses.replace(e.info, text=str(body.get("text", "")))
            elif op in RETENTION_OPS:
                max_id = max(max_id, replay(body, entries))
                self.dead_lines += 1 + len(body.get("ids", ()))
            else:
                warn(f"{jpath}: journal line {line_no} has unknown op {op!r}; skipped")
        for eid in sorted(entries):
            e = entries[eid]
            problem = check_segment(self.directory, e, full=verify == "full")
            if problem:
                warn(f"memory entry {eid} skipped: {problem}")
                continue
            self._entries[eid] = e
        self._next_id = max_id + 1
        self.remove_orphans(entries)
        logger.info("opened memory %s: %d entries", self.directory, len(self._entries))

    # ---- writing --------------------------------------------------------------------------------

    def add(self, seg: Segment) -> int:
        """Store ``seg`` (K/V per layer [1, H_kv, S, D]) durably; return its entry id (0, 1, 2, ...)."""
        self._check_writable()
        validate_segment(self.meta, seg)
        tensors, kv_bytes = encode_segment(seg, self.quantize)
        with self._write_lock:
            self._check_open()
            eid = self._next_id
            version = fmt.entry_format_version(self.quantize, seg.kind, seg.wall_s is not None)
            blob = safetensors.torch.save(tensors, metadata={"entry_id": str(eid), "quant": self.quantize,
                                                             "format_version": str(version)})
            if self.meta.format_version < version:
                self._upgrade_format(version)
            entry = new_entry(eid, seg, blob, kv_bytes, self.quantize)
            path = self.directory / entry.file
            try:
                atomic_write(path, blob, self._durable, self.fs)
            except OSError as e:
                raise io_error(f"writing entry {eid}", self.directory, e) from None
            try:
                self._append_journal(entry_line(entry))
            except OSError as e:
                try:  # the segment has no journal line: it would be an orphan
                    self.fs.unlink(path)
                except OSError:
                    pass
                raise io_error(f"journaling entry {eid}", self.directory, e) from None
            self._next_id = eid + 1
            with self._lock:
                self._entries[eid] = entry
                self._ram.put(eid, tensors)
        return eid

    def _upgrade_format(self, version: int) -> None:
        """Raise the store's format version before the first entry that needs it (a text entry: 2, a k2v1.58
        entry: 3); crash-safe rewrite of the config. The caller holds _write_lock (or is still constructing)."""
        try:
            fmt.upgrade_config(self.directory, version, self._durable, self.fs)
        except (OSError, ValueError) as e:
            raise io_error("upgrading the memory format", self.directory, e if isinstance(e, OSError)
                            else OSError(str(e))) from None
        self.meta = dataclasses.replace(self.meta, format_version=int(version))
        logger.info("memory at %s now has format version %d", self.directory, version)

    def _append_journal(self, line: bytes) -> None:
        """Append one journal line durably (the journal cuts itself back on failure)."""
        assert self._journal is not None
        self._journal.append(line)

    def set_text(self, entry_id: int, text: str) -> None:
        """Replace an entry's text (commentary arrives after the chunk was stored); journaled."""
        self._check_writable()
        with self._write_lock:
            with self._lock:
                self._entry(entry_id)
            try:
                self._append_journal(encode_line({"op": "text", "id": int(entry_id), "text": str(text)}))
            except OSError as e:
                raise io_error(f"updating the text of entry {entry_id}", self.directory, e) from None
            with self._lock:
                e = self._entries[entry_id]
                e.info = dataclasses.replace(e.info, text=str(text))

    # ---- tiers ------------------------------------------------------------------------------------

    def _entry(self, entry_id: int) -> StoredEntry:
        """The journal record of an entry (caller holds the lock)."""
        self._check_open()
        e = self._entries.get(entry_id)
        if e is None:
            raise UnknownEntryError(f"no long-term entry {entry_id} (the store holds {len(self._entries)})")
        return e

    def _tensors(self, entry_id: int) -> tuple[StoredEntry, Tensors]:
        """The entry and its tensors: from the RAM tier, else from its segment file (then held in RAM)."""
        with self._lock:
            e = self._entry(entry_id)
            tensors = self._ram.get(entry_id)
            if tensors is not None:
                return e, tensors
        tensors = read_segment(self.directory, e)  # disk I/O outside the lock: adds and RAM hits go on meanwhile
        with self._lock:
            if not self._closed:
                self._ram.put(entry_id, tensors)
        return e, tensors

    # ---- reading --------------------------------------------------------------------------------

    def get(self, entry_id: int, device: str | torch.device | None = None,
            dtype: torch.dtype | None = None) -> Segment:
        """The entry as a Segment: K/V (dequantised) in ``dtype`` (default: the store's) on ``device``.

        Unquantised CPU results share their tensors with the RAM tier: never modify them in place.
        """
        e, tensors = self._tensors(entry_id)
        dev = torch.device(device) if device is not None else self.device
        return decode_segment(e, tensors, self.meta.num_layers, dev, dtype or self.meta.torch_dtype)

    def key_summary(self, entry_id: int) -> torch.Tensor | None:
        """The entry's key summary [L, H_kv * D] fp32 (None if it had none); reads only that tensor from disk."""
        with self._lock:
            e = self._entry(entry_id)
            tensors = self._ram.peek(entry_id)
            if tensors is not None:
                return tensors.get("key_summary")
        with safetensors.safe_open(str(self.directory / e.file), framework="pt") as f:
            return f.get_tensor("key_summary") if "key_summary" in f.keys() else None

    def info(self, entry_id: int) -> EntryInfo:
        with self._lock:
            return self._entry(entry_id).info

    def infos(self) -> list[EntryInfo]:
        """All entries' infos in id (= insertion) order."""
        with self._lock:
            return [self._entries[i].info for i in sorted(self._entries)]

    @property
    def next_id(self) -> int:
        """The id the next ``add`` will return."""
        with self._write_lock:
            return self._next_id

    def ids(self) -> list[int]:
        with self._lock:
            return sorted(self._entries)

    def __contains__(self, entry_id: object) -> bool:
        with self._lock:
            return entry_id in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def ram_bytes_used(self) -> int:
        """Bytes of tensors held in the RAM tier (never above ``ram_bytes``)."""
        with self._lock:
            return self._ram.used

    @property
    def ram_bytes_limit(self) -> int:
        return self._ram.limit

    def disk_bytes_used(self) -> int:
        """Bytes of the live entries' segment files plus the journal."""
        with self._lock:
            if self._journal is not None:
                journal = self._journal.size
            else:  # read-only: the journal as it is on disk
                try:
                    journal = (self.directory / JOURNAL_NAME).stat().st_size
                except OSError:
                    journal = 0
            return sum(e.size for e in self._entries.values()) + journal
