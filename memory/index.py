"""FAISS indexes over long-term entries: internal key summaries and text embeddings.

``VectorIndex`` is one inner-product index over L2-normalised vectors: exact (IndexIDMap2 + IndexFlatIP)
up to ``exact_max`` vectors, then HNSW. Vectors live under internal slot numbers, so an id can be
replaced or removed in both modes (HNSW cannot delete: dead slots are filtered at search time and
compacted away once they are an eighth of the index). The switch to HNSW and compactions rebuild the
graph under the index lock (seconds at 50k vectors; searches wait meanwhile).

``MemoryIndex`` holds the retrievers over a ``LongTermStore``:
- internal: per entry its ``key_summary`` [L, H_kv*D] (mean of its keys per layer), queried with the
  question's mean query vectors [L, H_kv*D]. Pooled mode scores an entry by the mean over layers of the
  per-layer cosines (each layer L2-normalised, concatenated, / sqrt(L)); per-layer mode also keeps one
  index per layer for ``search_per_layer``.
- text: sentence embeddings of the entry's text (commentary / captions / OCR).
- both: the two rankings fused by reciprocal-rank fusion.
Indexes are saved under ``<memory dir>/index/`` and are rebuildable from the store at any time.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import threading
import warnings
from pathlib import Path

import faiss
import numpy as np
import torch

from memory.journal import atomic_write
from memory.segment import Segment
from memory.store import LongTermStore
from memory.textvec import TextEmbedder

logger = logging.getLogger(__name__)

INDEX_DIR = "index"
INDEX_FORMAT = 1
RRF_K = 60  # reciprocal-rank fusion constant: score = sum 1 / (RRF_K + rank)
RETRIEVERS = ("internal", "text", "both")


def pool_layers(per_layer: np.ndarray) -> np.ndarray:
    """[L, H_kv*D] per-layer means -> [L*H_kv*D]: each layer unit norm, scaled by 1/sqrt(L), so the inner
    product of two pooled vectors is the mean per-layer cosine (a layer that is all zeros adds nothing)."""
    return (_normalise(per_layer).reshape(-1) / math.sqrt(per_layer.shape[0])).astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
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
        ids, vecs = ids[keep], _normalise(vecs[keep])
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
        q = _normalise(q[None])  # [1, dim]
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

    def save(self, path: str | Path, tag: int = 0) -> None:
        """Write atomically to ``path`` (a single .npz file)."""
        atomic_write(Path(path), self.to_bytes(tag), durable=True)

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


# -------------------------------------------------------------------------------------------------


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _rrf(rankings: list[list[int]], k: int) -> list[tuple[int, float]]:
    score: dict[int, float] = {}
    for ranking in rankings:
        for rank, eid in enumerate(ranking):
            score[eid] = score.get(eid, 0.0) + 1.0 / (RRF_K + rank + 1)
    return sorted(score.items(), key=lambda x: (-x[1], x[0]))[:k]


class MemoryIndex:
    """The retrievers over a long-term store (internal key summaries, text embeddings, or both).

    ``embedder``: any object with ``name``, ``dim`` and ``encode(texts) -> [N, dim]`` (default: TextEmbedder,
    the offline MiniLM), only used by the text retriever.
    """

    def __init__(self, store: LongTermStore, *, retriever: str = "internal", per_layer: bool = False,
                 exact_max: int = 50_000, embedder: TextEmbedder | None = None, hnsw_m: int = 32) -> None:
        if retriever not in RETRIEVERS:
            raise ValueError(f"retriever must be internal, text or both, got {retriever!r}")
        self.store = store
        self.retriever = retriever
        self.per_layer = bool(per_layer)
        self.exact_max = int(exact_max)
        self.hnsw_m = int(hnsw_m)
        m = store.meta
        self.num_layers = m.num_layers
        self.layer_dim = m.num_kv_heads * m.head_dim
        self.use_internal = retriever in ("internal", "both")
        self.use_text = retriever in ("text", "both")
        vkw = dict(exact_max=self.exact_max, hnsw_m=self.hnsw_m)
        self.pooled = VectorIndex(self.num_layers * self.layer_dim, **vkw) if self.use_internal else None
        self.layers = ([VectorIndex(self.layer_dim, **vkw) for _ in range(self.num_layers)]
                       if self.use_internal and self.per_layer else [])
        self.embedder = embedder if embedder is not None else (TextEmbedder() if self.use_text else None)
        self.text: VectorIndex | None = None  # created on first use (its dim comes from the embedder)
        self._text_hashes: dict[int, str] = {}
        self._lock = threading.RLock()

    # ---- vectors --------------------------------------------------------------------------------

    def _per_layer(self, means: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
        x = means.detach().to("cpu", torch.float32).numpy() if isinstance(means, torch.Tensor) else np.asarray(means)
        x = np.asarray(x, dtype=np.float32)
        if x.shape != (self.num_layers, self.layer_dim):
            raise ValueError(f"{what} must have shape [{self.num_layers}, {self.layer_dim}] (layers, H_kv*D), "
                             f"got {list(x.shape)}")
        return _normalise(x)  # [L, H_kv*D], each layer unit norm


    def _text_index(self) -> VectorIndex:
        if self.text is None:
            self.text = VectorIndex(self.embedder.dim, exact_max=self.exact_max, hnsw_m=self.hnsw_m)
        return self.text

    # ---- updates --------------------------------------------------------------------------------

    def add(self, entry_id: int, seg: Segment) -> None:
        """Index an entry: its key_summary (internal) and, when non-empty, its text embedding."""
        self._add_summary(entry_id, seg.key_summary)
        self.update_text(entry_id, seg.text)

    def _add_summary(self, entry_id: int, summary: torch.Tensor | None) -> None:
        if not self.use_internal or summary is None:
            return
        v = self._per_layer(summary, "key_summary")
        ids = np.array([entry_id], dtype=np.int64)
        with self._lock:
            self.pooled.add(ids, pool_layers(v)[None])
            for li, index in enumerate(self.layers):
                index.add(ids, v[li: li + 1])

    def update_text(self, entry_id: int, text: str) -> None:
        """(Re-)index an entry's text; empty text removes it from the text index."""
        if not self.use_text:
            return
        text = text or ""
        h = _text_hash(text)
        with self._lock:
            if self._text_hashes.get(entry_id) == h:
                return
        if not text.strip():
            with self._lock:
                if self.text is not None:
                    self.text.remove(np.array([entry_id]))
                self._text_hashes.pop(entry_id, None)
            return
        vec = self.embedder.encode([text])  # [1, dim]; outside the lock (model time)
        with self._lock:
            self._text_index().add(np.array([entry_id], dtype=np.int64), vec)
            self._text_hashes[entry_id] = h

    def _add_texts(self, items: list[tuple[int, str]]) -> None:
        items = [(i, t) for i, t in items if t and t.strip()]
        if not items:
            return
        vecs = self.embedder.encode([t for _, t in items])  # [N, dim]
        with self._lock:
            self._text_index().add(np.array([i for i, _ in items], dtype=np.int64), vecs)
            self._text_hashes.update({i: _text_hash(t) for i, t in items})

    def remove(self, entry_ids: list[int]) -> None:
        """Drop entries from every index."""
        ids = np.asarray(list(entry_ids), dtype=np.int64)
        with self._lock:
            for index in [self.pooled, self.text, *self.layers]:
                if index is not None:
                    index.remove(ids)
            for i in ids.tolist():
                self._text_hashes.pop(i, None)

    def __len__(self) -> int:
        """Entries findable by at least one retriever."""
        with self._lock:
            ids: set[int] = set()
            if self.pooled is not None:
                ids.update(self.pooled.ids().tolist())
            if self.text is not None:
                ids.update(self.text.ids().tolist())
            return len(ids)

    # ---- search ---------------------------------------------------------------------------------

    def search(self, *, query_means: torch.Tensor | None = None, query_text: str | None = None,
               k: int = 4) -> list[tuple[int, float]]:
        """Top-``k`` entries as (entry_id, score), best first.

        internal: score = mean per-layer cosine between the entry's key summary and ``query_means``
        [L, H_kv*D]; text: cosine of MiniLM embeddings; both: reciprocal-rank fusion of the two
        (a retriever whose query is missing is left out).
        """
        use_i = self.use_internal and query_means is not None
        use_t = self.use_text and query_text is not None and bool(query_text.strip())
        if not use_i and not use_t:
            need = {"internal": "query_means", "text": "query_text", "both": "query_means or query_text"}
            raise ValueError(f"the {self.retriever} retriever needs {need[self.retriever]}")
        if k <= 0:
            return []
        results: list[list[tuple[int, float]]] = []
        fetch = k if not (use_i and use_t) else max(4 * k, 20)
        if use_i:
            q = pool_layers(self._per_layer(query_means, "query_means"))
            ids, scores = self.pooled.search(q, fetch)
            results.append(list(zip(ids.tolist(), scores.tolist())))
        if use_t:
            q = self.embedder.encode([query_text])[0]
            with self._lock:
                text = self.text
            if text is None:
                results.append([])
            else:
                ids, scores = text.search(q, fetch)
                results.append(list(zip(ids.tolist(), scores.tolist())))
        if len(results) == 1:
            return results[0][:k]
        return _rrf([[i for i, _ in r] for r in results], k)

    def search_per_layer(self, query_means: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
        """per_layer mode: for every layer, its top-``k`` entries by that layer's cosine."""
        if not self.layers:
            raise ValueError("search_per_layer needs MemoryIndex(per_layer=True) with an internal retriever")
        v = self._per_layer(query_means, "query_means")
        out = []
        for li, index in enumerate(self.layers):
            ids, scores = index.search(v[li], k)
            out.append(list(zip(ids.tolist(), scores.tolist())))
        return out

    # ---- persistence ----------------------------------------------------------------------------

    def _manifest(self, tag: int) -> dict:
        m = self.store.meta
        return {"format": INDEX_FORMAT, "tag": tag, "model": m.model, "retriever": self.retriever,
                "per_layer": self.per_layer, "num_layers": self.num_layers, "layer_dim": self.layer_dim,
                "embedder": self.embedder.name if self.use_text else None,
                "text_dim": self.text.dim if self.text is not None else None,
                "text_hashes": {str(k): v for k, v in sorted(self._text_hashes.items())}}

    def save(self, directory: str | Path) -> None:
        """Write the indexes under ``directory/index/`` (the memory directory); manifest last."""
        out = Path(directory) / INDEX_DIR
        out.mkdir(parents=True, exist_ok=True)
        tag = int.from_bytes(os.urandom(7), "little")
        with self._lock:
            if self.pooled is not None:
                self.pooled.save(out / "pooled.npz", tag)
            for li, index in enumerate(self.layers):
                index.save(out / f"layer_{li:03d}.npz", tag)
            if self.text is not None:
                self.text.save(out / "text.npz", tag)
            manifest = self._manifest(tag)
        atomic_write(out / "manifest.json", json.dumps(manifest).encode(), durable=True)

    @staticmethod
    def saved_retriever(directory: str | Path) -> str | None:
        """The retriever a memory directory's index was saved with (None when there is no usable index)."""
        try:
            man = json.loads((Path(directory) / INDEX_DIR / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        r = man.get("retriever")
        return r if r in RETRIEVERS else None

    @classmethod
    def load_or_rebuild(cls, store: LongTermStore, directory: str | Path, **kw) -> "MemoryIndex":
        """The saved index brought up to date with ``store``, or a fresh one built from the store.

        A missing or damaged index, or one saved with other settings, is rebuilt; one that is behind the
        store (entries added or texts changed after it was saved) is caught up; entries the store no
        longer holds are dropped.
        """
        idx = cls(store, **kw)
        path = Path(directory) / INDEX_DIR
        if not (path / "manifest.json").is_file():
            logger.info("no saved index in %s: building it from the store (%d entries)", directory, len(store))
            idx.rebuild()
            return idx
        try:
            idx._load(path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            _warn(f"index in {path} is unusable ({e}); rebuilding it from the store")
            idx = cls(store, **kw)
            idx.rebuild()
            return idx
        idx._catch_up()
        return idx

    def _load(self, path: Path) -> None:
        man = json.loads((path / "manifest.json").read_text())
        want = self._manifest(0)
        for key in ("format", "model", "retriever", "per_layer", "num_layers", "layer_dim", "embedder"):
            if man.get(key) != want[key]:
                raise ValueError(f"it was saved with {key}={man.get(key)!r}, now {want[key]!r}")
        tag = int(man["tag"])
        vkw = dict(exact_max=self.exact_max, hnsw_m=self.hnsw_m)
        if self.pooled is not None:
            self.pooled = VectorIndex.load(path / "pooled.npz", self.num_layers * self.layer_dim, tag=tag, **vkw)
        self.layers = [VectorIndex.load(path / f"layer_{li:03d}.npz", self.layer_dim, tag=tag, **vkw)
                       for li in range(len(self.layers))]
        if self.use_text and man.get("text_dim") is not None:
            self.text = VectorIndex.load(path / "text.npz", int(man["text_dim"]), tag=tag, **vkw)
            self._text_hashes = {int(k): str(v) for k, v in man.get("text_hashes", {}).items()}

    def _catch_up(self) -> None:
        live = set(self.store.ids())
        stale = 0
        if self.pooled is not None:
            have = set(self.pooled.ids().tolist())
            gone = have - live
            if gone:
                self.remove(sorted(gone))
            for eid in sorted(live - have):
                summary = self.store.key_summary(eid)
                if summary is not None:
                    self._add_summary(eid, summary)
                    stale += 1
        if self.use_text:
            if self.text is not None:
                gone = set(self.text.ids().tolist()) - live
                if gone:
                    self.text.remove(np.array(sorted(gone)))
                    for i in gone:
                        self._text_hashes.pop(i, None)
            todo_add, todo_drop = [], []
            for info in self.store.infos():
                if info.text.strip():
                    if self._text_hashes.get(info.entry_id) != _text_hash(info.text):
                        todo_add.append((info.entry_id, info.text))
                elif info.entry_id in self._text_hashes:
                    todo_drop.append(info.entry_id)
            if todo_drop:
                self.text.remove(np.array(todo_drop))
                for i in todo_drop:
                    self._text_hashes.pop(i, None)
            self._add_texts(todo_add)
            stale += len(todo_add) + len(todo_drop)
        if stale:
            logger.info("index caught up with the store (%d entries or texts were missing)", stale)

    def rebuild(self) -> None:
        """Re-index every entry of the store from scratch."""
        with self._lock:
            vkw = dict(exact_max=self.exact_max, hnsw_m=self.hnsw_m)
            if self.pooled is not None:
                self.pooled = VectorIndex(self.num_layers * self.layer_dim, **vkw)
                self.layers = [VectorIndex(self.layer_dim, **vkw) for _ in self.layers]
            self.text = None
            self._text_hashes = {}
        infos = self.store.infos()
        if self.use_internal:
            ids, rows = [], []
            for info in infos:
                summary = self.store.key_summary(info.entry_id)
                if summary is not None:
                    ids.append(info.entry_id)
                    rows.append(self._per_layer(summary, "key_summary"))
            if ids:
                per = np.stack(rows)  # [N, L, H_kv*D]
                arr = np.array(ids, dtype=np.int64)
                with self._lock:
                    self.pooled.add(arr, per.reshape(len(ids), -1) / math.sqrt(self.num_layers))
                    for li, index in enumerate(self.layers):
                        index.add(arr, per[:, li])
        if self.use_text:
            self._add_texts([(i.entry_id, i.text) for i in infos])


def _warn(msg: str) -> None:
    logger.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
