"""Entry I/O of the long-term store: an entry's journal line, its segment file, and reading them back.

- ``entry_line`` / ``entry_from_line``: the journal's "add" record of an entry (field names are the on-disk
  format: keep them).
- ``encode_segment`` / ``decode_segment``: a ``Segment`` to the flat tensor dict written as one safetensors
  file (K/V per layer, quantised by the cold tier) and back.
- ``read_segment`` / ``check_segment``: a segment file read and checked against its size and sha256.
- ``read_infos``: the entries of a directory read without writing anything (for read-only tools).

No pickle anywhere: json, base64 and safetensors only.
"""
from __future__ import annotations

import base64
import dataclasses
import errno
import hashlib
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from memory import quant
from memory.journal import decode_line, encode_line
from memory.segment import KINDS, VISION, Segment
from memory.store_format import JOURNAL_NAME, QUANT_BITS, SEGMENT_DIR, read_config
from memory.store_tiers import Tensors
from memory.types import EntryInfo, StoreMeta


class UnknownEntryError(KeyError, ValueError):
    """An entry id that the store does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass
class StoredEntry:
    """The store's record of an entry: its public info plus where and how its K/V lie on disk."""

    info: EntryInfo
    kind: str
    file: str  # relative to the memory directory: segments/00000042.safetensors
    sha256: str
    size: int
    quant: str
    chunk_index: int | None


def io_error(action: str, directory: Path, e: OSError) -> RuntimeError:
    """The one-line error for a failed disk operation while ``action`` (a full disk named as such)."""
    if e.errno == errno.ENOSPC:
        return RuntimeError(f"disk full while {action} in memory directory {directory}; entries already stored "
                            f"are intact: free disk space or use another memory directory, then retry")
    return RuntimeError(f"I/O error while {action} in memory directory {directory} ({e.strerror or e}); entries "
                        f"already stored are intact: check the disk and retry")


# ---------------------------------------------------------------------------------------------------
# journal records


def entry_line(e: StoredEntry) -> bytes:
    """The journal's "add" line of an entry (field names are the on-disk format: keep them)."""
    i = e.info
    return encode_line({
        "op": "add", "id": i.entry_id, "kind": e.kind, "start_s": i.start_s, "end_s": i.end_s,
        "n_tokens": i.n_tokens, "span": i.span, "text": i.text, "nbytes": i.nbytes, "file": e.file,
        "sha256": e.sha256, "size": e.size, "quant": e.quant, "chunk_index": e.chunk_index,
        "thumb": base64.b64encode(i.thumbnail).decode("ascii") if i.thumbnail is not None else None,
        **({"source": i.source} if i.source else {}),
        **({"wall_s": i.wall_s, "wall_end_s": i.wall_end_s, "tz": i.tz} if i.wall_s is not None else {}),
    })


def entry_from_line(d: dict) -> StoredEntry:
    """The entry an "add" record describes; KeyError / TypeError / ValueError when it is malformed."""
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
                     kind=kind, source=str(d.get("source", "")),
                     wall_s=None if d.get("wall_s") is None else float(d["wall_s"]),
                     wall_end_s=None if d.get("wall_end_s") is None else float(d["wall_end_s"]),
                     tz=str(d.get("tz") or ""))
    return StoredEntry(info, kind=kind, file=file, sha256=str(d["sha256"]), size=int(d["size"]),
                       quant=str(d.get("quant", "none")),
                       chunk_index=None if d.get("chunk_index") is None else int(d["chunk_index"]))


def new_entry(entry_id: int, seg: Segment, blob: bytes, kv_bytes: int, quantize: str) -> StoredEntry:
    """The record of ``seg`` stored as entry ``entry_id`` in the segment file ``blob`` (``kv_bytes`` of K/V)."""
    info = EntryInfo(entry_id=entry_id, start_s=float("nan") if seg.start_s is None else float(seg.start_s),
                     end_s=float("nan") if seg.end_s is None else float(seg.end_s), n_tokens=seg.n_tokens,
                     span=seg.span, text=seg.text or "", thumbnail=seg.thumbnail, nbytes=kv_bytes, kind=seg.kind,
                     source=seg.source, wall_s=None if seg.wall_s is None else float(seg.wall_s),
                     wall_end_s=None if seg.wall_end_s is None else float(seg.wall_end_s),
                     tz=seg.tz if seg.wall_s is not None else "")
    return StoredEntry(info, kind=seg.kind, file=f"{SEGMENT_DIR}/{entry_id:08d}.safetensors",
                       sha256=hashlib.sha256(blob).hexdigest(), size=len(blob), quant=quantize,
                       chunk_index=seg.chunk_index)


# ---------------------------------------------------------------------------------------------------
# segment files


def validate_segment(meta: StoreMeta, seg: Segment) -> None:
    """Raise ValueError (one line) unless ``seg`` fits a store written by ``meta``'s model."""
    m = meta
    if seg.kind not in KINDS:
        raise ValueError(f"unknown segment kind {seg.kind!r}")
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


def encode_segment(seg: Segment, quantize: str) -> tuple[Tensors, int]:
    """The flat tensor dict written for ``seg`` (CPU, contiguous, owning its memory) and its K/V bytes.

    Names: ``k.{layer}`` / ``v.{layer}`` [1, H_kv, S, D] as is, or ``k.{layer}.{part}`` quantised parts;
    ``rel_pos`` [pos_dims, S] int64; ``key_summary`` [L, H_kv * D] fp32 when the segment has one."""
    kbits, vbits = QUANT_BITS[quantize]
    out: Tensors = {}
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


def decode_segment(e: StoredEntry, tensors: Tensors, num_layers: int, device: torch.device,
                   dtype: torch.dtype) -> Segment:
    """The entry as a Segment: K/V per layer (dequantised) in ``dtype`` on ``device``."""

    def layer(prefix: str, li: int) -> torch.Tensor:
        t = tensors.get(f"{prefix}.{li}")
        if t is None:
            head = f"{prefix}.{li}."
            t = quant.dequantize({n[len(head):]: v for n, v in tensors.items() if n.startswith(head)}, dtype)
        return t.to(device=device, dtype=dtype)

    return Segment(kind=e.kind, keys=tuple(layer("k", i) for i in range(num_layers)),
                   values=tuple(layer("v", i) for i in range(num_layers)), rel_pos=tensors["rel_pos"].to(device),
                   start_s=e.info.start_s, end_s=e.info.end_s, text=e.info.text,
                   key_summary=tensors.get("key_summary"), thumbnail=e.info.thumbnail, chunk_index=e.chunk_index,
                   source=e.info.source, wall_s=e.info.wall_s, wall_end_s=e.info.wall_end_s, tz=e.info.tz)


def read_segment(directory: Path, e: StoredEntry) -> Tensors:
    """The entry's tensors from its segment file; RuntimeError when it is unreadable or changed on disk."""
    path = directory / e.file
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise RuntimeError(f"memory entry {e.info.entry_id}: cannot read {path} ({err.strerror or err}); "
                           f"reopen the store to skip damaged entries") from None
    if len(blob) != e.size or hashlib.sha256(blob).hexdigest() != e.sha256:
        raise RuntimeError(f"memory entry {e.info.entry_id}: {path} fails its checksum (changed on disk); "
                           f"reopen the store to skip damaged entries")
    return safetensors.torch.load(blob)


def check_segment(directory: Path, e: StoredEntry, full: bool) -> str | None:
    """What is wrong with the entry's segment file (None when nothing): missing, wrong size, or (``full``)
    failing its sha256."""
    path = directory / e.file
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


# ---------------------------------------------------------------------------------------------------
# reading without opening a store


def read_infos(directory: str | Path) -> list[EntryInfo]:
    """The entries of a memory directory, read without writing anything (no lock, no repair, no checksum
    pass): for read-only tools (search, export). Damaged journal lines and a cut-off last line are skipped."""
    d = Path(directory)
    read_config(d)  # raises ValueError when it is not a memory directory
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
                info = entry_from_line(body).info
            except (KeyError, TypeError, ValueError):
                continue
            if (d / str(body["file"])).is_file():
                entries[info.entry_id] = info
        elif body.get("op") == "text" and int(body.get("id", -1)) in entries:
            i = int(body["id"])
            entries[i] = dataclasses.replace(entries[i], text=str(body.get("text", "")))
    return [entries[i] for i in sorted(entries)]
