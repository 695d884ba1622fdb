"""Vector search for long-term memory: one FAISS index over (id, vector), and layer pooling.

``VectorIndex`` is one inner-product index over L2-normalised vectors: exact (IndexIDMap2 + IndexFlatIP)
up to ``exact_max`` vectors, then HNSW. Vectors live under internal slot numbers, so an id can be
replaced or removed in both modes (HNSW cannot delete: dead slots are filtered at search time and
compacted away once they are an eighth of the index). The switch to HNSW and compactions rebuild the
graph under the index lock (seconds at 50k vectors; searches wait meanwhile).
"""
from __future__ import annotations

import io
import logging
import math
import threading
from pathlib import Path

import faiss
import numpy as np

from memory.fsops import FileOps
from memory.journal import atomic_write

logger = logging.getLogger(__name__)

INDEX_FORMAT = 1  # version of the saved index files (vector files and the index manifest)


def pool_layers(per_layer: np.ndarray) -> np.ndarray:
    """[L, H_kv*D] per-layer means -> [L*H_kv*D]: each layer unit norm, scaled by 1/sqrt(L), so the inner
    product of two pooled vectors is the mean per-layer cosine (a layer that is all zeros adds nothing)."""
    return (normalise(per_layer).reshape(-1) / math.sqrt(per_layer.shape[0])).astype(np.float32)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` [..., dim] scaled to unit L2 norm, as contiguous float32 (zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norm, 1e-12), dtype=np.float32)


class VectorIndex:
    """One FAISS index over (id, vector): inner product on L2-normalised vectors, exact then HNSW."""

    def __init__(self, dim: int, *, exact_max: int = 50_000, hnsw_m: int = 32, ef_search: int = 128,
                 ef_construction: int = 80) -> None:
        if dim < 1:
            raise ValueError(f"index dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.exact_max = int(exact_max)
        self.hnsw_m = int(hnsw_m)
        self.ef_search = int(ef_search)
        self.ef_construction = int(ef_construction)
        self._hnsw = False
        self._index = self._new_index(hnsw=False)
        self._slot_ids = np.full(1024, -1, dtype=np.int64)  # slot -> entry id (-1: dead or unused)
        self._n_slots = 0
        self._slot_of: dict[int, int] = {}  # live entry id -> slot
        self._n_dead = 0  # dead slots still inside the FAISS index (HNSW only)
        self._lock = threading.RLock()

    @property
    def is_hnsw(self) -> bool:
        return self._hnsw

    def _new_index(self, hnsw: bool) -> faiss.Index:
        if hnsw:
            inner = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self.ef_construction
            inner.hnsw.efSearch = self.ef_search
        else:
            inner = faiss.IndexFlatIP(self.dim)
        return faiss.IndexIDMap2(inner)  # faiss's wrapper keeps a reference to ``inner``

    def __len__(self) -> int:
        with self._lock:
            return len(self._slot_of)

    def __contains__(self, entry_id: object) -> bool:
        with self._lock:
            return entry_id in self._slot_of

    def ids(self) -> np.ndarray:
        """Live ids, ascending."""
        with self._lock:
            return np.array(sorted(self._slot_of), dtype=np.int64)

    # ---- updates --------------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Add vectors [N, dim] under ``ids`` [N] (an id already present is replaced)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vecs = np.asarray(vecs, dtype=np.float32)
        if vecs.ndim == 1:
            vecs = vecs[None]
        if vecs.shape != (len(ids), self.dim):
            raise ValueError(f"vectors must have shape [{len(ids)}, {self.dim}], got {list(vecs.shape)}")
        if not np.isfinite(vecs).all():
            raise ValueError("cannot index vectors with inf/nan values")
        if len(ids) == 0:
            return
        _, last = np.unique(ids[::-1], return_index=True)  # duplicates in one call: the last one wins
        keep = np.sort(len(ids) - 1 - last)
        ids, vecs = ids[keep], normalise(vecs[keep])
        with self._lock:
            self._remove_slots([self._slot_of[i] for i in ids.tolist() if i in self._slot_of])
            slots = np.arange(self._n_slots, self._n_slots + len(ids), dtype=np.int64)
            self._grow(self._n_slots + len(ids))
            self._slot_ids[slots] = ids
            self._n_slots += len(ids)
            self._slot_of.update(zip(ids.tolist(), slots.tolist()))
            self._index.add_with_ids(vecs, slots)
            if not self._hnsw and len(self._slot_of) > self.exact_max:
                self._rebuild(hnsw=True)
            else:
                self._maybe_compact()

    def remove(self, ids: np.ndarray) -> None:
        """Drop ``ids`` (absent ids are ignored)."""
        with self._lock:
            self._remove_slots([self._slot_of[i] for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
                                if i in self._slot_of])
            self._maybe_compact()

    def _remove_slots(self, slots: list[int]) -> None:
        if not slots:
            return
        for s in slots:
            del self._slot_of[int(self._slot_ids[s])]
            self._slot_ids[s] = -1
        if self._hnsw:
            self._n_dead += len(slots)  # HNSW cannot delete: filtered at search, compacted later
        else:
            self._index.remove_ids(np.asarray(slots, dtype=np.int64))

    def _grow(self, n: int) -> None:
        if n > len(self._slot_ids):
            new = np.full(max(n, 2 * len(self._slot_ids)), -1, dtype=np.int64)
            new[: len(self._slot_ids)] = self._slot_ids
            self._slot_ids = new

    def _maybe_compact(self) -> None:
        if self._hnsw and self._n_dead > max(256, len(self._slot_of) // 8):
            self._rebuild(hnsw=True)

    def _live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids [N], vectors [N, dim]) of the live entries, read back from the FAISS index."""
        n = self._index.ntotal
        if n == 0:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        inner = faiss.downcast_index(self._index.index)
        vecs = inner.reconstruct_n(0, n)  # [n, dim]
        slots = faiss.vector_to_array(self._index.id_map).astype(np.int64)  # [n]
        ids = self._slot_ids[slots]
        live = ids >= 0
        return ids[live], vecs[live]

    def _rebuild(self, hnsw: bool) -> None:
        ids, vecs = self._live_vectors()
        logger.info("rebuilding %s index over %d vectors (dim %d)", "HNSW" if hnsw else "exact", len(ids), self.dim)
        self._hnsw = hnsw
        self._index = self._new_index(hnsw)
        self._slot_ids = np.full(max(1024, len(ids)), -1, dtype=np.int64)
        self._slot_ids[: len(ids)] = ids
        self._n_slots = len(ids)
        self._slot_of = dict(zip(ids.tolist(), range(len(ids))))
        self._n_dead = 0
        if len(ids):
            self._index.add_with_ids(vecs, np.arange(len(ids), dtype=np.int64))

    # ---- search ---------------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by cosine: (ids [k'], scores [k']) best first, k' = min(k, len)."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query has {q.shape[0]} dims, the index has {self.dim}")
        if not np.isfinite(q).all():
            raise ValueError("query has inf/nan values")
        q = normalise(q[None])  # [1, dim]
        with self._lock:
            if k <= 0 or not self._slot_of:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            total = self._index.ntotal
            want = min(k, len(self._slot_of))
            # dead slots (HNSW) may take some of the top places: over-fetch, widening until k live ones
            fetch = min(total, k if not self._n_dead else max(2 * k, k + 16))
            while True:
                if self._hnsw:
                    faiss.downcast_index(self._index.index).hnsw.efSearch = max(self.ef_search, fetch)
                scores, slots = self._index.search(q, fetch)
                slots, scores = slots[0], scores[0]
                ok = slots >= 0
                ids, scores = self._slot_ids[slots[ok]], scores[ok]
                live = ids >= 0
                if int(live.sum()) >= want or fetch >= total:
                    break
                fetch = min(total, fetch * 4)
        return ids[live][:k], scores[live][:k].astype(np.float32)

    # ---- persistence ----------------------------------------------------------------------------

    def to_bytes(self, tag: int = 0) -> bytes:
        """One .npz (no pickle): the serialised FAISS index, the slot map and a header."""
        with self._lock:
            buf = io.BytesIO()
            header = np.array([INDEX_FORMAT, self.dim, int(self._hnsw), self.hnsw_m, self.exact_max, self._n_slots,
                               self._n_dead, int(tag)], dtype=np.int64)
            np.savez(buf, header=header, faiss=faiss.serialize_index(self._index),
                     slots=self._slot_ids[: self._n_slots].copy())
            return buf.getvalue()

    def save(self, path: str | Path, tag: int = 0, fs: FileOps | None = None) -> None:
        """Write atomically to ``path`` (a single .npz file) through ``fs`` (default: the real file ops)."""
        atomic_write(Path(path), self.to_bytes(tag), durable=True, fs=fs)

    @classmethod
    def load(cls, path: str | Path, dim: int, *, tag: int | None = None, **kw) -> "VectorIndex":
        """Read an index written by :meth:`save`; ValueError if it is damaged, of another dim or tag."""
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                header, blob, slots = z["header"], z["faiss"], z["slots"]
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise ValueError(f"index file {path} is unreadable ({e})") from None
        fmt, d, hnsw, m, exact_max, n_slots, n_dead, file_tag = (int(x) for x in header.tolist())
        if fmt != INDEX_FORMAT or d != dim:
            raise ValueError(f"index file {path} has format {fmt} / dim {d}, expected {INDEX_FORMAT} / {dim}")
        if tag is not None and file_tag != tag:
            raise ValueError(f"index file {path} belongs to another save (tag mismatch)")
        try:
            index = faiss.deserialize_index(np.ascontiguousarray(blob, dtype=np.uint8))
        except RuntimeError as e:
            raise ValueError(f"index file {path} holds a damaged FAISS index ({e})") from None
        kw.setdefault("exact_max", exact_max)
        kw.setdefault("hnsw_m", m)
        out = cls(dim, **kw)
        out._hnsw = bool(hnsw)
        if not isinstance(index, faiss.IndexIDMap2) or index.d != dim:  # (rebinding a downcast would free it)
            raise ValueError(f"index file {path} does not hold an IndexIDMap2 of dim {dim}")
        out._index = index
        in_faiss = faiss.vector_to_array(index.id_map)
        n_live = int((slots >= 0).sum())
        if (len(slots) != n_slots or len(in_faiss) != index.ntotal or index.ntotal != n_live + n_dead
                or (len(in_faiss) and int(in_faiss.max()) >= n_slots)):
            raise ValueError(f"index file {path} is inconsistent (slot map {len(slots)}, header {n_slots}, "
                             f"FAISS {index.ntotal} vectors)")
        out._grow(n_slots)
        out._slot_ids[:n_slots] = slots
        out._n_slots = n_slots
        live = np.nonzero(slots >= 0)[0]
        out._slot_of = dict(zip(slots[live].tolist(), live.tolist()))
        out._n_dead = n_dead
        if out._hnsw:
            faiss.downcast_index(out._index.index).hnsw.efSearch = out.ef_search
        elif len(out._slot_of) > out.exact_max:  # saved exact, now past a smaller exact_max
            out._rebuild(hnsw=True)
        return out
