"""Long-term store: evicted chunks as entries in a RAM tier (LRU, bounded in bytes) over a disk tier.

A memory directory holds::

    config.json       StoreMeta (model, family, layers, kv heads, head_dim, pos_dims, dtype, format version)
    journal.jsonl     append-only, one JSON line per event ("add" an entry, "text" update, "delete" entries),
                      each with a crc32
    segments/         one safetensors file per entry: K/V per layer (optionally int8/int4), rel_pos, key_summary
    index/            FAISS indexes (written by memory.index.MemoryIndex.save; rebuildable from the store)

Crash safety: an entry's segment is written to a temp file, fsynced, renamed into place and the directory
fsynced; only then is its journal line appended and fsynced. A crash at any moment therefore leaves either
the old state or the old state plus the new entry. On open, a truncated last journal line is dropped with a
warning and entries whose segment file is missing or fails its sha256 are skipped with a warning.
No pickle anywhere: json, base64 and safetensors only. The durable-write, journal and lock primitives
are in ``memory.journal``; ``StoreMeta`` and ``EntryInfo`` in ``memory.types``.

(long: over 500 lines because it is one class whose RAM and disk tiers share one entry table and two locks; splitting the
tiers across files would spread that locking protocol over them.)
"""
from __future__ import annotations

import base64
import dataclasses
import errno
import hashlib
import json
import logging
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from memory import fsops, quant
from memory.fsops import FileOps
from memory.journal import DirLock, Journal, atomic_write, encode_line, read_journal, warn
from memory.segment import KINDS, VISION, Segment
from memory.store_retention import RETENTION_OPS, RetentionMixin, replay
from memory.types import FORMAT_VERSION, TEXT_FORMAT_VERSION, EntryInfo, StoreMeta

__all__ = ["LongTermStore", "StoreMeta", "EntryInfo", "UnknownEntryError", "atomic_write"]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
JOURNAL_NAME = "journal.jsonl"
SEGMENT_DIR = "segments"
LOCK_NAME = ".lock"
#: cold-tier formats: (key bits, value bits); 0 = stored as is. "k4v2": int4 keys, ternary values (VidKV-like);
#: "k2v1.58": keys 2 bits per channel with half of each head's channels at 1 bit, ternary values 5 per byte
#: (memory.quant codes 21 and 158; ~1.7 bits per element with the per-channel scales of a 197-token entry)
_QUANT_BITS = {"none": (0, 0), "int8": (8, 8), "int4": (4, 4), "k4v2": (4, 2),
               "k2v1.58": (quant.KEYS_2_1, quant.TERNARY5)}
#: the memory format version a cold tier needs (readers older than it refuse the directory with one line)
_QUANT_VERSION = {"k2v1.58": 3}
_QUANT_NAMES = ", ".join(_QUANT_BITS)


def quant_bits(quantize: str) -> tuple[int, int]:
    """(key, value) codes of cold tier ``quantize`` for ``memory.quant.quantize`` (0: stored as is)."""
    if quantize not in _QUANT_BITS:
        raise ValueError(f"quantize must be one of {_QUANT_NAMES}, got {quantize!r}")
    return _QUANT_BITS[quantize]


def format_version_for(quantize: str) -> int:
    """The lowest memory format version that can hold entries of cold tier ``quantize``."""
    return _QUANT_VERSION.get(quantize, 1)


# ---------------------------------------------------------------------------------------------------
# entries


class UnknownEntryError(KeyError, ValueError):
    """An entry id that the store does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass
class _Entry:
    """The store's record of an entry: its public info plus where and how its K/V lie on disk."""

    info: EntryInfo
    kind: str
    file: str
    sha256: str
    size: int
    quant: str
    chunk_index: int | None


def _io_error(action: str, directory: Path, e: OSError) -> RuntimeError:
    if e.errno == errno.ENOSPC:
        return RuntimeError(f"disk full while {action} in memory directory {directory}; entries already stored "
                            f"are intact: free disk space or use another memory directory, then retry")
    return RuntimeError(f"I/O error while {action} in memory directory {directory} ({e.strerror or e}); entries "
                        f"already stored are intact: check the disk and retry")


# ---------------------------------------------------------------------------------------------------
# the store


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
            _read_config(Path(directory)).check_readable(str(directory))  # a newer format first, then the rest
        if quantize not in _QUANT_BITS:
            raise ValueError(f"quantize must be one of {_QUANT_NAMES}, got {quantize!r}")
        if verify not in ("full", "size"):
            raise ValueError(f"verify must be 'full' or 'size', got {verify!r}")
        if int(ram_bytes) < 0:
            raise ValueError(f"ram_bytes must be >= 0, got {ram_bytes}")
        self.meta = meta
        self.quantize = quantize
        self.device = torch.device(device)
        self._ram_limit = int(ram_bytes)
        self._pin = self.device.type == "cuda" and torch.cuda.is_available()
        self._lock = threading.RLock()  # in-memory state: entries, RAM tier
        self._write_lock = threading.Lock()  # disk writes: one add / set_text at a time
        self._entries: dict[int, _Entry] = {}
        self._ram: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
        self._ram_used = 0
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
                found = _read_config(self.directory)
                meta.check_compatible(found, str(self.directory))
                if found.dtype != meta.dtype:
                    raise ValueError(f"memory at {self.directory} stores K/V as {found.dtype}, not {meta.dtype}; "
                                     f"open it with LongTermStore.open(...) and cast with get(dtype=...)")
                self.meta = found
                if not self.read_only:
                    self._acquire_lock()
                if not self.read_only and format_version_for(quantize) > found.format_version:
                    self._upgrade_format(format_version_for(quantize))  # e.g. a v1 store reopened with k2v1.58
                self._load(verify)
            else:
                if self.directory.exists() and any(not _leftover_of_creation(p) for p in self.directory.iterdir()):
                    raise ValueError(f"{self.directory} is not empty and holds no {CONFIG_NAME}; "
                                     f"pick an empty or new directory for the memory")
                fsops.makedirs(self.fs, self.directory, self._durable)
                self._acquire_lock()
                self.meta = meta = dataclasses.replace(meta, format_version=format_version_for(quantize))
                cfg = {"format": "vstream-memory", **meta.to_json(), "quantize": quantize}
                atomic_write(config, json.dumps(cfg, indent=1).encode(), self._durable, self.fs)
                self.fs.mkdir(self._seg_dir)  # its name is made durable with the journal's (same directory)
            if not self.read_only:
                self._open_journal()
        except OSError as e:
            self._release()
            raise _io_error("opening the store", self.directory, e) from None
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
        found = _read_config(directory)
        found.check_readable(str(directory))  # before anything a newer format may have changed (its quantize name)
        if expected is not None:
            expected.check_compatible(found, str(directory))
        if quantize is None:
            try:
                quantize = str(json.loads((directory / CONFIG_NAME).read_text()).get("quantize", "none"))
            except (OSError, json.JSONDecodeError):
                quantize = "none"
        return cls(found, directory, ram_bytes=ram_bytes, quantize=quantize, device=device, verify=verify,
                   read_only=read_only, fs=fs)

    # ---- lifecycle ------------------------------------------------------------------------------


    def _acquire_lock(self) -> None:
        self._dir_lock = DirLock(self.directory, LOCK_NAME, self.fs)

    def _open_journal(self) -> None:
        self._journal = Journal(self.directory / JOURNAL_NAME, self._durable, self.fs)

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
            self._ram_used = 0
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
        entries: dict[int, _Entry] = {}
        for line_no, body in read_journal(jpath, self._durable, self.fs, repair=not self.read_only):
            op = body.get("op")
            if op == "add":
                try:
                    e = _entry_from_line(body)
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
            problem = self._check_segment(e, full=verify == "full")
            if problem:
                warn(f"memory entry {eid} skipped: {problem}")
                continue
            self._entries[eid] = e
        self._next_id = max_id + 1
        self.remove_orphans(entries)
        logger.info("opened memory %s: %d entries", self.directory, len(self._entries))

    def _check_segment(self, e: _Entry, full: bool) -> str | None:
        path = self.directory / e.file
        try:
            size = path.stat().st_size
        except OSError:
            return f"segment file {path} is missing"
        if size != e.size:
            return f"segment file {path} has {size} bytes, the journal says {e.size}"
        if full:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(8 << 20), b""):
                    h.update(block)
            if h.hexdigest() != e.sha256:
                return f"segment file {path} fails its checksum"
        return None

    # ---- writing --------------------------------------------------------------------------------

    def _validate(self, seg: Segment) -> None:
        m = self.meta
        if seg.num_layers != m.num_layers:
            raise ValueError(f"segment has {seg.num_layers} layers, the store expects {m.num_layers} ({m.model})")
        s = seg.n_tokens
        if s < 1:
            raise ValueError("cannot store an empty segment (0 tokens)")
        want = (1, m.num_kv_heads, s, m.head_dim)
        for name, ts in (("keys", seg.keys), ("values", seg.values)):
            for li, t in enumerate(ts):
                if tuple(t.shape) != want:
                    raise ValueError(f"segment {name}[{li}] has shape {tuple(t.shape)}, expected {want} "
                                     f"[1, H_kv, S, D] for {m.model}")
                if t.dtype != m.torch_dtype:
                    raise ValueError(f"segment {name}[{li}] is {t.dtype}, the store holds {m.dtype}; cast the "
                                     f"K/V or create the store with dtype={str(t.dtype).replace('torch.', '')!r}")
        if tuple(seg.rel_pos.shape) != (m.pos_dims, s):
            raise ValueError(f"segment rel_pos has shape {tuple(seg.rel_pos.shape)}, expected ({m.pos_dims}, {s})")
        if seg.key_summary is not None and tuple(seg.key_summary.shape) != (m.num_layers, m.num_kv_heads * m.head_dim):
            raise ValueError(f"segment key_summary has shape {tuple(seg.key_summary.shape)}, expected "
                             f"({m.num_layers}, {m.num_kv_heads * m.head_dim})")

    def _tensors_of(self, seg: Segment) -> tuple[dict[str, torch.Tensor], int]:
        """The flat tensor dict written for ``seg`` (CPU, contiguous, owning its memory) and its K/V bytes."""
        kbits, vbits = _QUANT_BITS[self.quantize]
        out: dict[str, torch.Tensor] = {}
        kv_bytes = 0
        for prefix, ts, bits in (("k", seg.keys, kbits), ("v", seg.values, vbits)):
            for li, t in enumerate(ts):
                t = t.detach().to("cpu")
                if bits:
                    for name, part in quant.quantize(t, bits).items():
                        out[f"{prefix}.{li}.{name}"] = part
                        kv_bytes += part.numel() * part.element_size()
                else:
                    out[f"{prefix}.{li}"] = t.clone(memory_format=torch.contiguous_format)
                    kv_bytes += t.numel() * t.element_size()
        out["rel_pos"] = seg.rel_pos.detach().to("cpu", torch.int64).contiguous().clone()
        if seg.key_summary is not None:
            out["key_summary"] = seg.key_summary.detach().to("cpu", torch.float32).contiguous().clone()
        return out, kv_bytes

    def add(self, seg: Segment) -> int:
        """Store ``seg`` (K/V per layer [1, H_kv, S, D]) durably; return its entry id (0, 1, 2, ...)."""
        self._check_writable()
        self._validate(seg)
        if seg.kind not in KINDS:
            raise ValueError(f"unknown segment kind {seg.kind!r}")
        tensors, kv_bytes = self._tensors_of(seg)
        start = float(seg.start_s) if seg.start_s is not None else float("nan")
        end = float(seg.end_s) if seg.end_s is not None else float("nan")
        with self._write_lock:
            self._check_open()
            eid = self._next_id
            blob = safetensors.torch.save(tensors, metadata={"entry_id": str(eid), "quant": self.quantize,
                                                             "format_version": str(max(
                format_version_for(self.quantize), TEXT_FORMAT_VERSION if seg.kind != VISION else 1))})
            rel = f"{SEGMENT_DIR}/{eid:08d}.safetensors"
            info = EntryInfo(entry_id=eid, start_s=start, end_s=end, n_tokens=seg.n_tokens, span=seg.span,
                             text=seg.text or "", thumbnail=seg.thumbnail, nbytes=kv_bytes, kind=seg.kind,
                             source=seg.source)
            if seg.kind != VISION and self.meta.format_version < TEXT_FORMAT_VERSION:
                self._upgrade_format(TEXT_FORMAT_VERSION)
            entry = _Entry(info, kind=seg.kind, file=rel, sha256=hashlib.sha256(blob).hexdigest(), size=len(blob),
                           quant=self.quantize, chunk_index=seg.chunk_index)
            path = self.directory / rel
            try:
                atomic_write(path, blob, self._durable, self.fs)
            except OSError as e:
                raise _io_error(f"writing entry {eid}", self.directory, e) from None
            try:
                self._append_journal(_entry_line(entry))
            except OSError as e:
                try:  # the segment has no journal line: it would be an orphan
                    self.fs.unlink(path)
                except OSError:
                    pass
                raise _io_error(f"journaling entry {eid}", self.directory, e) from None
            self._next_id = eid + 1
            with self._lock:
                self._entries[eid] = entry
                self._ram_put(eid, tensors)
        return eid

    def _upgrade_format(self, version: int) -> None:
        """Raise the store's format version before the first entry that needs it (a text entry: 2, a k2v1.58
        entry: 3); crash-safe rewrite of the config. The caller holds _write_lock (or is still constructing)."""
        path = self.directory / CONFIG_NAME
        try:
            cfg = json.loads(path.read_text())
            cfg["format_version"] = int(version)
            atomic_write(path, json.dumps(cfg, indent=1).encode(), self._durable)
        except (OSError, ValueError) as e:
            raise _io_error("upgrading the memory format", self.directory, e if isinstance(e, OSError)
                            else OSError(str(e))) from None
        self.meta = dataclasses.replace(self.meta, format_version=int(version))
        logger.info("memory at %s now has format version %d", self.directory, version)
    @staticmethod
    def _entry_line(e: _Entry) -> bytes:
        return _entry_line(e)

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
                raise _io_error(f"updating the text of entry {entry_id}", self.directory, e) from None
            with self._lock:
                e = self._entries[entry_id]
                e.info = dataclasses.replace(e.info, text=str(text))

    # ---- RAM tier -------------------------------------------------------------------------------

    def _ram_put(self, eid: int, tensors: dict[str, torch.Tensor]) -> None:
        """Insert into the LRU RAM tier, evicting the least recently used entries (caller holds _lock)."""
        if eid in self._ram:
            self._ram.move_to_end(eid)
            return
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if size > self._ram_limit:
            return
        while self._ram and self._ram_used + size > self._ram_limit:
            _, old = self._ram.popitem(last=False)
            self._ram_used -= sum(t.numel() * t.element_size() for t in old.values())
        if self._pin:
            tensors = {k: v.pin_memory() for k, v in tensors.items()}
        self._ram[eid] = tensors
        self._ram_used += size

    def _read_segment(self, e: _Entry) -> dict[str, torch.Tensor]:
        path = self.directory / e.file
        try:
            blob = path.read_bytes()
        except OSError as err:
            raise RuntimeError(f"memory entry {e.info.entry_id}: cannot read {path} ({err.strerror or err}); "
                               f"reopen the store to skip damaged entries") from None
        if len(blob) != e.size or hashlib.sha256(blob).hexdigest() != e.sha256:
            raise RuntimeError(f"memory entry {e.info.entry_id}: {path} fails its checksum (changed on disk); "
                               f"reopen the store to skip damaged entries")
        return safetensors.torch.load(blob)

    def _entry(self, entry_id: int) -> _Entry:
        """The journal record of an entry (caller holds the lock)."""
        self._check_open()
        e = self._entries.get(entry_id)
        if e is None:
            raise UnknownEntryError(f"no long-term entry {entry_id} (the store holds {len(self._entries)})")
        return e

    def _tensors(self, entry_id: int) -> tuple[_Entry, dict[str, torch.Tensor]]:
        with self._lock:
            e = self._entry(entry_id)
            tensors = self._ram.get(entry_id)
            if tensors is not None:
                self._ram.move_to_end(entry_id)
                return e, tensors
        tensors = self._read_segment(e)  # disk I/O outside the lock: adds and RAM hits go on meanwhile
        with self._lock:
            if not self._closed:
                self._ram_put(entry_id, tensors)
        return e, tensors

    # ---- reading --------------------------------------------------------------------------------

    def get(self, entry_id: int, device: str | torch.device | None = None,
            dtype: torch.dtype | None = None) -> Segment:
        """The entry as a Segment: K/V (dequantised) in ``dtype`` (default: the store's) on ``device``.

        Unquantised CPU results share their tensors with the RAM tier: never modify them in place.
        """
        e, tensors = self._tensors(entry_id)
        dev = torch.device(device) if device is not None else self.device
        dt = dtype or self.meta.torch_dtype

        def layer(prefix: str, li: int) -> torch.Tensor:
            t = tensors.get(f"{prefix}.{li}")
            if t is None:
                head = f"{prefix}.{li}."
                t = quant.dequantize({n[len(head):]: v for n, v in tensors.items() if n.startswith(head)}, dt)
            return t.to(device=dev, dtype=dt)

        n = self.meta.num_layers
        summary = tensors.get("key_summary")
        return Segment(kind=e.kind, keys=tuple(layer("k", i) for i in range(n)),
                       values=tuple(layer("v", i) for i in range(n)), rel_pos=tensors["rel_pos"].to(dev),
                       start_s=e.info.start_s, end_s=e.info.end_s, text=e.info.text, key_summary=summary,
                       thumbnail=e.info.thumbnail, chunk_index=e.chunk_index, source=e.info.source)

    def key_summary(self, entry_id: int) -> torch.Tensor | None:
        """The entry's key summary [L, H_kv * D] fp32 (None if it had none); reads only that tensor from disk."""
        with self._lock:
            e = self._entry(entry_id)
            tensors = self._ram.get(entry_id)
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
            return self._ram_used

    @property
    def ram_bytes_limit(self) -> int:
        return self._ram_limit

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


# ---------------------------------------------------------------------------------------------------
# helpers


def read_infos(directory: str | Path) -> list[EntryInfo]:
    """The entries of a memory directory, read without writing anything (no lock, no repair, no checksum
    pass): for read-only tools (search, export). Damaged journal lines and a cut-off last line are skipped."""
    from memory.journal import decode_line

    d = Path(directory)
    _read_config(d)  # raises ValueError when it is not a memory directory
    try:
        data = (d / JOURNAL_NAME).read_bytes()
    except FileNotFoundError:
        data = b""
    entries: dict[int, EntryInfo] = {}
    for raw in data.split(b"\n")[:-1]:  # the piece after the last newline is cut off or empty
        body = decode_line(raw) if raw.strip() else None
        if not body:
            continue
        if body.get("op") == "add":
            try:
                info = _entry_from_line(body).info
            except (KeyError, TypeError, ValueError):
                continue
            if (d / str(body["file"])).is_file():
                entries[info.entry_id] = info
        elif body.get("op") == "text" and int(body.get("id", -1)) in entries:
            i = int(body["id"])
            entries[i] = dataclasses.replace(entries[i], text=str(body.get("text", "")))
    return [entries[i] for i in sorted(entries)]


def _leftover_of_creation(p: Path) -> bool:
    """What a crash while creating a store can leave behind (the creation is simply redone)."""
    if p.name == LOCK_NAME or (p.name.startswith(".") and p.name.endswith(".tmp")):
        return True
    return p.name == SEGMENT_DIR and p.is_dir() and not any(p.iterdir())


def _read_config(directory: Path) -> StoreMeta:
    path = directory / CONFIG_NAME
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is unreadable ({e}); not a vstream memory directory") from None
    if not isinstance(d, dict) or d.get("format") != "vstream-memory":
        raise ValueError(f"{path} is not a vstream memory config")
    return StoreMeta.from_json(d, str(path))


def _entry_line(e: _Entry) -> bytes:
    """The journal's "add" line of an entry (field names are the on-disk format: keep them)."""
    i = e.info
    return encode_line({
        "op": "add", "id": i.entry_id, "kind": e.kind, "start_s": i.start_s, "end_s": i.end_s,
        "n_tokens": i.n_tokens, "span": i.span, "text": i.text, "nbytes": i.nbytes, "file": e.file,
        "sha256": e.sha256, "size": e.size, "quant": e.quant, "chunk_index": e.chunk_index,
        "thumb": base64.b64encode(i.thumbnail).decode("ascii") if i.thumbnail is not None else None,
        **({"source": i.source} if i.source else {}),
    })


def _entry_from_line(d: dict) -> _Entry:
    kind = str(d.get("kind", VISION))
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    file = str(d["file"])
    if "/" in file.replace(f"{SEGMENT_DIR}/", "", 1) or ".." in file:
        raise ValueError(f"bad segment path {file!r}")
    thumb = d.get("thumb")
    info = EntryInfo(entry_id=int(d["id"]), start_s=float(d["start_s"]), end_s=float(d["end_s"]),
                     n_tokens=int(d["n_tokens"]), span=int(d["span"]), text=str(d.get("text", "")),
                     thumbnail=base64.b64decode(thumb) if thumb is not None else None, nbytes=int(d["nbytes"]),
                     kind=kind, source=str(d.get("source", "")))
    return _Entry(info, kind=kind, file=file, sha256=str(d["sha256"]), size=int(d["size"]),
                  quant=str(d.get("quant", "none")),
                  chunk_index=None if d.get("chunk_index") is None else int(d["chunk_index"]))
