"""FAISS indexes over long-term entries: internal key summaries and text embeddings.

``VectorIndex`` (one FAISS index, exact then HNSW) lives in ``memory.vectors``.

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
import json
import logging
import math
import os
import threading
import zipfile
from pathlib import Path

import numpy as np
import torch

from memory.journal import atomic_write, warn
from memory.segment import Segment
from memory.store import LongTermStore
from memory.textvec import TextEmbedder
from memory.vectors import INDEX_FORMAT, VectorIndex, normalise, pool_layers

logger = logging.getLogger(__name__)

INDEX_DIR = "index"
RRF_K = 60  # reciprocal-rank fusion constant: score = sum 1 / (RRF_K + rank)
RETRIEVERS = ("internal", "text", "both")

__all__ = ["MemoryIndex", "VectorIndex", "pool_layers", "RETRIEVERS"]


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
        return normalise(x)  # [L, H_kv*D], each layer unit norm


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
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
            warn(f"index in {path} is unusable ({type(e).__name__}: {e}); rebuilding it from the store")
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
