"""LongTerm: the engine's view of long-term memory (store + FAISS index + optional OCR / text embedder).

Evicted vision chunks go in through ``on_evict``; questions get entries back through ``retrieve``.
The store and index live in ``memory.store`` / ``memory.index``; this module only wires them to the
engine and to a session's memory directory. It knows tensors and plain values, not models: the caller
describes its model as a ``StoreMeta`` and its settings as a ``LongTermConfig``.
"""
from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from memory.segment import VISION, Segment
from memory.types import Retrieved, StoreMeta

__all__ = ["LongTerm", "LongTermConfig", "Retrieved", "StoreMeta", "wall_overlaps"]

logger = logging.getLogger(__name__)


def wall_overlaps(item, wall_range: tuple[float, float] | None) -> bool:
    """Whether ``item`` (an EntryInfo or Segment) overlaps the half-open wall-clock range ``[lo, hi)``.

    True for ``wall_range=None``; False for an item without wall time. An instant (end == start, e.g. text
    said at one moment) is in the range when ``lo <= start < hi``."""
    if wall_range is None:
        return True
    a = getattr(item, "wall_s", None)
    if a is None or a != a:  # None or NaN
        return False
    b = getattr(item, "wall_end_s", None)
    b = a if b is None or b != b else b
    lo, hi = wall_range
    return (lo <= a < hi) if b <= a else (a < hi and b > lo)


@dataclass(frozen=True)
class LongTermConfig:
    """Settings of one long-term memory (the store's tiers, its index and what fills entry texts).

    Checked where they are used: the store checks ``quantize`` and ``ram_bytes``, the index ``retriever``.
    """

    ram_bytes: int = 2 << 30  # RAM tier budget for K/V (LRU, bytes)
    quantize: str = "none"  # cold-tier K/V: "none" | "int8" | "int4" | "k4v2" | "k2v1.58"
    retriever: str = "internal"  # "internal" (key summaries) | "text" (entry texts) | "both"
    per_layer: bool = False  # internal retriever: layers vote with their own top entries
    exact_index_max: int = 50_000  # exact FAISS index up to this many entries, HNSW above
    ocr: bool = False  # OCR a keyframe per chunk into the entry's text


class LongTerm:
    """Long-term memory for one session."""

    def __init__(self, store, index, cfg: LongTermConfig, directory: Path | None, ocr=None) -> None:
        self.store = store
        self.index = index
        self.cfg = cfg
        self.directory = directory
        self._ocr = ocr
        self._stored_chunks: set[float] = {info.start_s for info in store.infos() if info.kind == VISION}
        self._stored_texts: set[tuple[float, str]] = {(i.start_s, i.text) for i in store.infos() if i.kind != VISION}
        self._lock = threading.Lock()

    @classmethod
    def create(cls, meta: StoreMeta, cfg: LongTermConfig, directory: str | Path | None = None, *,
               load_existing: bool = False) -> "LongTerm":
        """Open (load_existing) or start a long-term memory for the model ``meta`` describes, in
        ``directory`` or a private temp dir."""
        from memory.index import MemoryIndex
        from memory.store import LongTermStore

        if not isinstance(meta, StoreMeta):
            raise ValueError(f"LongTerm.create needs a StoreMeta describing the model (layers, kv heads, head_dim, "
                             f"pos_dims, dtype), got {type(meta).__name__}; build one from the model first")
        d = Path(directory) if directory is not None else None
        embedder = None
        if cfg.retriever in ("text", "both"):
            from memory.textvec import TextEmbedder

            embedder = TextEmbedder()
        if load_existing:
            if d is None or not (d / "config.json").exists():
                raise ValueError(f"{directory!s} is not a vstream memory directory (no config.json); give the "
                                 f"directory written by `vstream watch --memory-dir` or session.save()")
            # a reader never changes the directory: damage is skipped (and the index rebuilt) in memory only
            store = LongTermStore.open(d, expected=meta, ram_bytes=cfg.ram_bytes, device="cpu", read_only=True)
            index = MemoryIndex.load_or_rebuild(store, d, retriever=cfg.retriever, per_layer=cfg.per_layer,
                                                exact_max=cfg.exact_index_max, embedder=embedder)
        else:
            if d is not None and (d / "config.json").exists():
                store = LongTermStore.open(d, expected=meta, ram_bytes=cfg.ram_bytes, device="cpu")
                logger.info("appending to existing memory in %s (%d entries)", d, len(store))
                index = MemoryIndex.load_or_rebuild(store, d, retriever=cfg.retriever, per_layer=cfg.per_layer,
                                                    exact_max=cfg.exact_index_max, embedder=embedder)
            else:
                store = LongTermStore(meta, d, ram_bytes=cfg.ram_bytes, quantize=cfg.quantize, device="cpu")
                index = MemoryIndex(store, retriever=cfg.retriever, per_layer=cfg.per_layer,
                                    exact_max=cfg.exact_index_max, embedder=embedder)
        ocr = None
        if cfg.ocr:
            from memory.textvec import OCR

            ocr = OCR()
        return cls(store, index, cfg, d, ocr=ocr)

    # ---- engine hooks --------------------------------------------------------------------------
    @property
    def ocr(self):
        return self._ocr.read if self._ocr is not None else None

    @property
    def read_only(self) -> bool:
        """True for a memory opened to answer from (``load_existing``): nothing is written to it."""
        return bool(getattr(self.store, "read_only", False))

    @property
    def persistent(self) -> bool:
        """True when what is added goes to a caller's directory (False for a read-only memory)."""
        return self.directory is not None and not self.read_only

    def __len__(self) -> int:
        return len(self.store)

    def on_evict(self, seg: Segment) -> None:
        """Store an evicted chunk or tagged text segment (speech) (K/V to RAM/disk) and index it (not in a
        read-only memory)."""
        with self._lock:
            if self.read_only:
                logger.debug("read-only memory: chunk at %.2fs is not stored", seg.start_s)
                return
            key = (seg.start_s, seg.text)
            if (seg.start_s in self._stored_chunks) if seg.kind == VISION else (key in self._stored_texts):
                return
            cpu = self._for_store(seg)
            entry_id = self.store.add(cpu)
            self.index.add(entry_id, cpu)
            if seg.kind == VISION:
                self._stored_chunks.add(seg.start_s)
            else:
                self._stored_texts.add(key)

    def attach_text(self, start_s: float, end_s: float, text: str) -> int:
        """Append ``text`` to the stored vision entries overlapping ``[start_s, end_s]``; returns how many."""
        n = 0
        if self.read_only:
            return n
        with self._lock:
            for info in self.store.infos():
                if info.kind == VISION and info.start_s < end_s and info.end_s > start_s and text not in info.text:
                    new = f"{info.text} {text}".strip()
                    self.store.set_text(info.entry_id, new)
                    self.index.update_text(info.entry_id, new)
                    n += 1
        return n

    def _for_store(self, seg: Segment) -> Segment:
        """The segment on CPU in the store's dtype (a store reopened from another device may differ)."""
        return seg.to("cpu", dtype=self.store.meta.torch_dtype)

    def retrieve(self, *, question: str, query_means: torch.Tensor | None, k: int, before_s: float,
                 device: torch.device, dtype: torch.dtype | None = None,
                 wall_range: tuple[float, float] | None = None) -> list[Retrieved]:
        """Top-k entries that started before ``before_s`` (causality), best first, K/V on ``device``.

        ``wall_range`` (UTC epoch seconds, half-open): only entries whose wall-clock span overlaps it
        (entries without wall time never do)."""
        if k <= 0 or len(self.store) == 0:
            return []
        if self.cfg.retriever == "internal" and query_means is None:
            return []  # nothing to search with
        want = k + 32
        while True:
            hits = self._search(question, query_means, want)
            ok = [(i, s) for i, s in hits if self.store.info(i).start_s < before_s
                  and wall_overlaps(self.store.info(i), wall_range)]
            if len(ok) >= k or len(hits) < want or want >= len(self.store):
                break
            want *= 4
        if self._stored_texts:
            ok = [(i, s) for i, s in self._with_speech(ok, before_s) if wall_overlaps(self.store.info(i), wall_range)]
        out = []
        for entry_id, score in ok[:k]:
            seg = self.store.get(entry_id, device=device, dtype=dtype)
            out.append(Retrieved(segment=seg, score=float(score), entry_id=int(entry_id)))
        return out

    def count_in_range(self, wall_range: tuple[float, float] | None) -> int:
        """Stored entries whose wall-clock span overlaps ``wall_range`` (all of them for None)."""
        return sum(1 for i in self.store.infos() if wall_overlaps(i, wall_range))

    def _with_speech(self, hits: list[tuple[int, float]], before_s: float) -> list[tuple[int, float]]:
        """A vision entry that carries a transcript brings the text entry of that speech right after it (the
        words' own K/V), at the same score; order kept, no entry twice."""
        texts = [i for i in self.store.infos() if i.kind != VISION and i.start_s < before_s]
        out: list[tuple[int, float]] = []
        seen: set[int] = set()
        for eid, score in hits:
            if eid in seen:
                continue
            out.append((eid, score))
            seen.add(eid)
            info = self.store.info(eid)
            if info.kind != VISION:
                continue
            for t in texts:
                if t.entry_id not in seen and t.start_s < info.end_s and info.start_s < t.end_s and t.text in info.text:
                    out.append((t.entry_id, score))
                    seen.add(t.entry_id)
        return out

    def _search(self, question: str, query_means: torch.Tensor | None, n: int) -> list[tuple[int, float]]:
        """(entry_id, score) best first. Per-layer mode: every layer that has a query picks its top-n,
        and entries are ranked by how many layers picked them, then by their summed cosine (one shared
        set goes into the context, as every layer must see the same positions)."""
        if not (self.cfg.per_layer and query_means is not None and self.cfg.retriever == "internal"):
            return self.index.search(query_means=query_means, query_text=question, k=n)
        active = [li for li in range(query_means.shape[0]) if bool(query_means[li].abs().sum() > 0)]
        votes: dict[int, list[float]] = {}
        for li, hits in enumerate(self.index.search_per_layer(query_means, n)):
            if li in active:
                for entry_id, score in hits:
                    votes.setdefault(entry_id, []).append(float(score))
        ranked = sorted(votes.items(), key=lambda kv: (-len(kv[1]), -sum(kv[1])))
        return [(i, sum(sc) / len(active)) for i, sc in ranked[:n]]

    # ---- persistence --------------------------------------------------------------------------
    def flush(self, live: Sequence[Segment]) -> None:
        """Write chunks still in the window too (at close or save), then the index (no-op when read-only)."""
        if self.read_only:
            return
        for seg in live:
            self.on_evict(seg)
        if self.directory is not None:
            self.index.save(self.directory)

    def save(self, directory: str | Path, extra: Sequence[Segment] = ()) -> None:
        """Write everything (stored entries + ``extra`` live chunks) to ``directory``."""
        d = Path(directory)
        if self.directory is not None and d.resolve() == self.directory.resolve():
            self.flush(extra)
            return
        from memory.index import MemoryIndex
        from memory.store import LongTermStore

        if d.exists() and any(d.iterdir()):
            raise ValueError(f"{d} exists and is not empty; choose a new directory to save memory into")
        tmp = d.with_name(d.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        out = LongTermStore(self.store.meta, tmp, ram_bytes=0, quantize=self.cfg.quantize, device="cpu")
        idx = MemoryIndex(out, retriever=self.cfg.retriever, per_layer=self.cfg.per_layer,
                          exact_max=self.cfg.exact_index_max, embedder=self.index.embedder)
        seen = set()
        for info in self.store.infos():
            seg = self.store.get(info.entry_id)
            seen.add((seg.start_s, seg.text) if seg.kind != VISION else seg.start_s)
            idx.add(out.add(seg), seg)
        for seg in extra:
            if ((seg.start_s, seg.text) if seg.kind != VISION else seg.start_s) not in seen:
                cpu = self._for_store(seg)
                idx.add(out.add(cpu), cpu)
        idx.save(tmp)
        out.close()
        if d.exists():
            d.rmdir()
        tmp.rename(d)

    def latest_end_s(self) -> float:
        """End of the newest stored entry (0 when empty)."""
        return max((i.end_s for i in self.store.infos()), default=0.0)

    def ram_bytes(self) -> int:
        return self.store.ram_bytes_used()

    def disk_bytes(self) -> int:
        return self.store.disk_bytes_used()

    def close(self) -> None:
        """Save the index (writers only) and release the store."""
        if self.directory is not None and not self.read_only:
            self.index.save(self.directory)
        self.store.close()
