"""KVBuffer: the active context's K/V in preallocated storage (model-agnostic: tensors + a sequence dim).

One ``Storage`` holds, per group of layers that share device, dtype and shape, three blocks
[L_g, 1, H, cap, D]: ``k`` (post-RoPE keys at their current positions: what attention reads), ``v``
(values) and ``c`` (canonical keys: each token's key as if its segment started at position 0). A cache
layer (``BufferLayer``) exposes views ``[1, H, n, D]`` of its slices, so the model reads and appends
without copies of the whole context:

- a prefill appends in place (``append``: one copy per layer for keys and for values);
- ``extract`` turns the last ``s`` tokens into a canonical segment with one rotation per layer group;
- ``relayout`` (after an eviction) writes the new layout into a *free* storage: the unchanged prefix is
  copied, surviving segments are copied in runs, new segments (previous text) come from their canonical
  keys, and every key from the first change on is re-rotated from its canonical form in **one** batched
  rotation per layer group with a per-token delta. The number of tensor ops does not depend on the number
  of segments in the window, and every key is still rotated once from canonical (no drift).

Snapshots stay immutable: readers hold views of a storage; a storage is only written past the length any
view of it has (appends), or when it is free — not the current one, not the published one, and no pinned
snapshot alive (``pin``). Relayouts therefore go to another storage (copy-on-write, ping-pong between two
in the steady state), and a snapshot taken before an eviction still reads exactly what it read.
"""
from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from transformers.cache_utils import DynamicLayer

logger = logging.getLogger(__name__)

RotateFn = Callable[[torch.Tensor, Any], torch.Tensor]  # (keys [..., S, D], delta int | [S]) -> keys
MIN_CAPACITY = 256  # tokens of the first storage; it doubles when a prefill needs more
SPARES = 2  # free storages kept for reuse


@dataclass(eq=False)
class Group:
    """Layers that share device, dtype and [H, D]: their blocks [L_g, 1, H, cap, D]."""

    layers: list[int]
    k: torch.Tensor
    v: torch.Tensor
    c: torch.Tensor


@dataclass(eq=False)
class Storage:
    """One generation of buffers; snapshots hold views of it (``pins``: the live ones handed out)."""

    groups: list[Group]
    cap: int
    k_rows: list[torch.Tensor]  # per layer [1, H, cap, D] views of the k blocks
    v_rows: list[torch.Tensor]
    pins: weakref.WeakValueDictionary = field(default_factory=weakref.WeakValueDictionary)

    @classmethod
    def like(cls, groups: Sequence[Group], n_layers: int, cap: int) -> "Storage":
        """Empty blocks shaped like ``groups`` with room for ``cap`` tokens."""
        new = []
        for g in groups:
            shape = (*g.k.shape[:3], cap, g.k.shape[-1])
            new.append(Group(list(g.layers), g.k.new_empty(shape), g.v.new_empty(shape), g.c.new_empty(shape)))
        return cls.of(new, n_layers, cap)

    @classmethod
    def of(cls, groups: list[Group], n_layers: int, cap: int) -> "Storage":
        k_rows: list[Any] = [None] * n_layers
        v_rows: list[Any] = [None] * n_layers
        for g in groups:
            for j, (kr, vr) in enumerate(zip(g.k.unbind(0), g.v.unbind(0))):
                k_rows[g.layers[j]], v_rows[g.layers[j]] = kr, vr
        return cls(groups, cap, k_rows, v_rows)


class BufferLayer(DynamicLayer):
    """A cache layer whose keys/values are views into a ``KVBuffer`` (``update`` appends in place)."""

    def __init__(self, buf: "KVBuffer", idx: int, device: torch.device) -> None:
        super().__init__()
        self.buf, self.idx, self.device = buf, idx, device
        self.is_initialized = True
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return self.buf.append(self.idx, key_states, value_states)

    def get_seq_length(self) -> int:
        return self.length


class KVBuffer:
    """The storage of the active context and the cache layers that view it (one writer)."""

    def __init__(self, rotate: RotateFn) -> None:
        self.rotate = rotate
        self.storage: Storage | None = None
        self.layers: list[BufferLayer] = []
        self.published: Storage | None = None  # the storage the published snapshot views
        self.spare: list[Storage] = []
        self.lock = threading.Lock()  # pin / publish / taking a free storage
        self.extracted: tuple[int, int] | None = None  # [a, b): canonical keys already written by extract
        self.storages_made = 0
        self.grows = 0

    @property
    def adopted(self) -> bool:
        return self.storage is not None

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    # ---- set-up ---------------------------------------------------------------------------------
    def adopt(self, cache) -> None:
        """Move a filled cache's layers (plain tensors [1, H, n, D]) into storage; the cache's layers become
        ``BufferLayer`` views (appends from now on write in place)."""
        if self.adopted:
            return
        src = [(l.keys, l.values) for l in cache.layers]
        if not src or any(k is None for k, _ in src):
            raise RuntimeError("the cache has no K/V yet: prefill something before extracting a segment")
        n = int(src[0][0].shape[-2])
        if any(int(k.shape[-2]) != n for k, _ in src):
            raise RuntimeError("cache layers hold different numbers of tokens")
        if any(k.shape[0] != 1 for k, _ in src):
            raise RuntimeError(f"the active context holds one sequence, got batch {src[0][0].shape[0]}")
        cap = max(MIN_CAPACITY, 2 * n)
        by: dict[tuple, list[int]] = {}
        for i, (k, _) in enumerate(src):
            by.setdefault((k.device, k.dtype, k.shape[1], k.shape[3]), []).append(i)
        groups = []
        for (dev, dt, h, d), idx in by.items():
            shape = (len(idx), 1, h, cap, d)
            groups.append(Group(idx, torch.empty(shape, device=dev, dtype=dt), torch.empty(shape, device=dev, dtype=dt),
                                torch.empty(shape, device=dev, dtype=dt)))
        st = Storage.of(groups, len(src), cap)
        self.storages_made += 1
        self.layers = [BufferLayer(self, i, src[i][0].device) for i in range(len(src))]
        for i, (k, v) in enumerate(src):
            st.k_rows[i].narrow(-2, 0, n).copy_(k)
            st.v_rows[i].narrow(-2, 0, n).copy_(v)
        self._switch(st, n)
        cache.layers[:] = self.layers

    # ---- writing --------------------------------------------------------------------------------
    def append(self, idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``idx``: write k, v [1, H, s, D] after its tokens; returns its views [1, H, n + s, D]."""
        layer = self.layers[idx]
        n, s = layer.length, int(k.shape[-2])
        if n + s > self.storage.cap:
            self._grow(n + s)
        st = self.storage
        st.k_rows[idx].narrow(-2, n, s).copy_(k)
        st.v_rows[idx].narrow(-2, n, s).copy_(v)
        layer.length = n + s
        layer.keys = st.k_rows[idx].narrow(-2, 0, n + s)
        layer.values = st.v_rows[idx].narrow(-2, 0, n + s)
        return layer.keys, layer.values

    def extract(self, n_tokens: int, start: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Canonical K/V of the last ``n_tokens`` (placed at ``start``): per layer [1, H, n_tokens, D], new
        tensors (never written again). Their canonical keys are also kept for later relayouts."""
        b = self.length
        if any(l.length != b for l in self.layers):
            raise RuntimeError("cache layers hold different numbers of tokens (an interrupted prefill?)")
        a = b - n_tokens
        if a < 0 or n_tokens < 1:
            raise RuntimeError(f"cannot extract {n_tokens} tokens from a cache of {b}")
        keys: list[Any] = [None] * len(self.layers)
        values: list[Any] = [None] * len(self.layers)
        for g in self.storage.groups:
            ck = self.rotate(g.k.narrow(-2, a, n_tokens), -start)  # [L_g, 1, H, s, D]
            if start == 0:
                ck = ck.clone()  # the rotation by 0 returned the view itself
            g.c.narrow(-2, a, n_tokens).copy_(ck)
            cv = g.v.narrow(-2, a, n_tokens).clone()
            for j, (kk, vv) in enumerate(zip(ck.unbind(0), cv.unbind(0))):
                keys[g.layers[j]], values[g.layers[j]] = kk, vv
        self.extracted = (a, b)
        return tuple(keys), tuple(values)

    def note_committed(self, a: int, seg) -> None:
        """Tokens [a, a + n) hold ``seg`` (just prefilled there): keep its canonical keys for relayouts."""
        b = a + seg.n_tokens
        if b != self.length:
            raise RuntimeError(f"a committed segment must be the last {seg.n_tokens} tokens of the cache "
                               f"(cache has {self.length}, layout ends at {a})")
        if self.extracted == (a, b):
            return
        for g in self.storage.groups:  # a segment that did not come from extract (canonical keys given)
            g.c.narrow(-2, a, seg.n_tokens).copy_(torch.stack([seg.keys[i] for i in g.layers]))

    def relayout(self, a: int, plan: Sequence[tuple[int | None, Any, int]]) -> int:
        """Rewrite the context from token ``a`` on; tokens before ``a`` stay.

        ``plan``: the new segments from ``a`` on, in order, as (old token offset or None for a segment not in
        the buffer, segment, new start position). Returns the new length. The result goes to a free storage.
        """
        src = self.storage
        new_len = a + sum(seg.n_tokens for _, seg, _ in plan)
        with self.lock:
            dst = self._take_free(max(src.cap, new_len))
        deltas: list[int] = []
        runs: list[tuple[int | None, int, int, Any]] = []  # (old offset, new offset, n, fresh segment)
        at = a
        for old, seg, pos in plan:
            n = seg.n_tokens
            deltas.extend([pos] * n)
            if old is not None and runs and runs[-1][0] is not None and runs[-1][3] is None \
                    and runs[-1][0] + runs[-1][2] == old:
                o, nw, m, _ = runs[-1]
                runs[-1] = (o, nw, m + n, None)
            else:
                runs.append((old, at, n, None if old is not None else seg))
            at += n
        delta = torch.tensor(deltas, dtype=torch.float32, device=src.groups[0].k.device) if deltas else None
        for gs, gd in zip(src.groups, dst.groups):
            if a:
                for t in ("k", "v", "c"):
                    getattr(gd, t).narrow(-2, 0, a).copy_(getattr(gs, t).narrow(-2, 0, a))
            for old, nw, m, seg in runs:
                if seg is None:
                    gd.c.narrow(-2, nw, m).copy_(gs.c.narrow(-2, old, m))
                    gd.v.narrow(-2, nw, m).copy_(gs.v.narrow(-2, old, m))
                else:
                    gd.c.narrow(-2, nw, m).copy_(torch.stack([seg.keys[i] for i in gd.layers]))
                    gd.v.narrow(-2, nw, m).copy_(torch.stack([seg.values[i] for i in gd.layers]))
            if delta is not None:
                d = delta if delta.device == gd.k.device else delta.to(gd.k.device)
                gd.k.narrow(-2, a, new_len - a).copy_(self.rotate(gd.c.narrow(-2, a, new_len - a), d))
        self.extracted = None
        self._switch(dst, new_len)
        return new_len

    # ---- storages -------------------------------------------------------------------------------
    def pin(self, snap: Any, storage: Storage | None) -> None:
        """Keep ``storage`` unwritten while ``snap`` lives (call under ``lock``)."""
        if storage is not None:
            storage.pins[id(snap)] = snap

    def _free(self, st: Storage) -> bool:
        return st is not self.storage and st is not self.published and len(st.pins) == 0

    def _take_free(self, cap: int) -> Storage:
        for i, st in enumerate(self.spare):
            if st.cap >= cap and self._free(st):
                return self.spare.pop(i)
        self.storages_made += 1
        return Storage.like(self.storage.groups, len(self.layers), cap)

    def _switch(self, st: Storage, n: int) -> None:
        """Make ``st`` current with ``n`` tokens in every layer; the old storage becomes a spare."""
        old = self.storage
        if old is not None and old is not st:
            self.spare = [s for s in self.spare if s.cap >= st.cap and s is not st][:SPARES - 1] + [old]
        self.storage = st
        for i, layer in enumerate(self.layers):
            layer.length = n
            layer.keys = st.k_rows[i].narrow(-2, 0, n)
            layer.values = st.v_rows[i].narrow(-2, 0, n)

    def _grow(self, need: int) -> None:
        """A bigger current storage (a prefill ran past the capacity): copy every layer's tokens over."""
        src = self.storage
        with self.lock:
            dst = Storage.like(src.groups, len(self.layers), max(2 * src.cap, need))
        self.storages_made += 1
        self.grows += 1
        top = max(l.length for l in self.layers)
        for gs, gd in zip(src.groups, dst.groups):
            for t in ("k", "v", "c"):
                getattr(gd, t).narrow(-2, 0, top).copy_(getattr(gs, t).narrow(-2, 0, top))
        lengths = [l.length for l in self.layers]
        self._switch(dst, 0)
        for i, layer in enumerate(self.layers):  # layers of an interrupted prefill keep their own lengths
            layer.length = lengths[i]
            layer.keys = dst.k_rows[i].narrow(-2, 0, lengths[i])
            layer.values = dst.v_rows[i].narrow(-2, 0, lengths[i])
        logger.debug("KV buffer grown to %d tokens", dst.cap)

    def nbytes(self) -> int:
        """Bytes of the K/V in use (keys and values of every layer)."""
        return sum(l.keys.numel() * l.keys.element_size() * 2 for l in self.layers)
