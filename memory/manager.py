"""MemoryManager: the active KV context and its bookkeeping (model-agnostic: tensors + a sequence dim).

Layout of the active context, re-indexed contiguously from position 0 after every change::

    | sinks | previous text (first N + last N tokens) | live: vision chunks and text, in stream order |

and, for a question, ``| sinks | previous text | retrieved long-term (chronological) | live | question |``.

The manager is driven by one writer (the perception thread). The active context's K/V live in a
``memory.kvbuffer.KVBuffer`` (preallocated per-layer buffers: prefills append in place, an eviction
re-lays the window out with a constant number of tensor ops). Readers take a ``Snapshot``: views of a
buffer generation that is never written below their length while the snapshot lives (copy-on-write).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from transformers import DynamicCache

from memory.kvbuffer import KVBuffer, Storage
from memory.segment import PREV_TEXT, TEXT, VISION, Segment
from memory.window import WindowPolicy

logger = logging.getLogger(__name__)

RotateFn = Callable[[torch.Tensor, int], torch.Tensor]  # (keys [B, H, S, D], delta) -> keys


def fill_cache(cache: DynamicCache, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> DynamicCache:
    """Put per-layer tensors [1, H, S, D] into an empty DynamicCache (by reference, no copy)."""
    if not cache.layers:  # a cache built without a config creates its layers on first update
        for l, (k, v) in enumerate(zip(keys, values)):
            cache.update(k, v, l)
        return cache
    if len(cache.layers) != len(keys):
        raise RuntimeError(f"cache has {len(cache.layers)} layers but {len(keys)} key tensors were given")
    for layer, k, v in zip(cache.layers, keys, values):
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
    return cache


def cache_tensors(cache: DynamicCache) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """References to the per-layer key and value tensors of a cache."""
    return tuple(l.keys for l in cache.layers), tuple(l.values for l in cache.layers)


def place(segments: Sequence[Segment], rotate: RotateFn, start: int = 0
          ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], int]:
    """Concatenate segments at contiguous positions from ``start``.

    Returns per-layer keys and values [1, H, sum S, D] and the next free position. Each segment's
    canonical keys are rotated once, by the position where it now starts.
    """
    if not segments:
        raise ValueError("place() needs at least one segment")
    n_layers = segments[0].num_layers
    ks: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    vs: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    pos = start
    for seg in segments:
        for l in range(n_layers):
            ks[l].append(rotate(seg.keys[l], pos))
            vs[l].append(seg.values[l])
        pos += seg.span
    keys = tuple(torch.cat(k, dim=-2) if len(k) > 1 else k[0] for k in ks)
    values = tuple(torch.cat(v, dim=-2) if len(v) > 1 else v[0] for v in vs)
    return keys, values, pos


def slice_text(seg: Segment, a: int, b: int, rotate: RotateFn, kind: str = PREV_TEXT) -> Segment:
    """Tokens [a, b) of a text segment as a new canonical segment (positions restart at 0)."""
    if seg.kind not in (TEXT, PREV_TEXT):
        raise ValueError("only text segments can be sliced by tokens")
    if not 0 <= a < b <= seg.n_tokens:
        raise ValueError(f"bad slice [{a}, {b}) of a segment of {seg.n_tokens} tokens")
    shift = int(seg.rel_pos[0, a].item())
    keys = tuple(rotate(k[:, :, a:b], -shift) for k in seg.keys)
    values = tuple(v[:, :, a:b].clone() for v in seg.values)
    return Segment(kind=kind, keys=keys, values=values, rel_pos=seg.rel_pos[:, a:b] - shift,
                   start_s=seg.start_s, end_s=seg.end_s, text=seg.text if (a, b) == (0, seg.n_tokens) else "",
                   token_ids=seg.token_ids[a:b])


def concat_text(parts: Sequence[Segment], rotate: RotateFn, kind: str = PREV_TEXT) -> Segment:
    """Join text segments into one canonical segment."""
    keys, values, _ = place(parts, rotate)
    rel, off = [], 0
    for p in parts:
        rel.append(p.rel_pos + off)
        off += p.span
    return Segment(kind=kind, keys=keys, values=values, rel_pos=torch.cat(rel, dim=1),
                   start_s=parts[0].start_s, end_s=parts[-1].end_s, text=" ".join(p.text for p in parts if p.text),
                   token_ids=tuple(t for p in parts for t in p.token_ids))


@dataclass(frozen=True)
class Snapshot:
    """Memory as of one moment: references only."""

    sinks: tuple[Segment, ...]
    prev_text: tuple[Segment, ...]
    live: tuple[Segment, ...]
    keys: tuple[torch.Tensor, ...]  # per layer [1, H, N, D]: the materialised active context
    values: tuple[torch.Tensor, ...]
    next_pos: int
    stream_time_s: float
    chunks_ingested: int
    storage: Storage | None = field(default=None, compare=False, repr=False)  # the buffer generation viewed

    @property
    def segments(self) -> tuple[Segment, ...]:
        return self.sinks + self.prev_text + self.live

    @property
    def context_tokens(self) -> int:
        return int(self.keys[0].shape[-2]) if self.keys else 0


class MemoryManager:
    """Owns the active context: sinks, previous-text block, live window; evicts through one hook."""

    def __init__(self, *, rotate: RotateFn, new_cache: Callable[[], DynamicCache], window_chunks: int,
                 text_window_tokens: int, prev_text_head: int, prev_text_tail: int,
                 on_evict: Callable[[Segment], None] | None = None) -> None:
        self.rotate = rotate
        self.new_cache = new_cache
        self.policy = WindowPolicy(window_chunks, text_window_tokens)
        self.prev_head_max, self.prev_tail_max = prev_text_head, prev_text_tail
        self.on_evict = on_evict
        self.sinks: list[Segment] = []
        self.prev_head: Segment | None = None  # first <= N tokens of all text that left the text window
        self.prev_tail: Segment | None = None  # last <= N tokens of it
        self.live: list[Segment] = []
        self.cache: DynamicCache = new_cache()
        self.kv = KVBuffer(rotate)  # takes the cache's layers over at the first extract
        self._layout: list[Segment] = []  # the segments in buffer order (sinks, previous text, live)
        self._offsets: dict[int, int] = {}  # id(segment) -> token offset in the buffer (layout segments)
        self._layout_tokens = 0  # tokens of the layout (the cache may hold more: a prefill not committed yet)
        self.next_pos = 0
        self.stream_time_s = 0.0
        self.chunks_ingested = 0
        self.evicted_total = 0
        self.rebuilds = 0
        self._published: Snapshot | None = None

    # ---- reading --------------------------------------------------------------------------------
    @property
    def prev_text(self) -> list[Segment]:
        return [s for s in (self.prev_head, self.prev_tail) if s is not None]

    def segments(self) -> list[Segment]:
        return self.sinks + self.prev_text + self.live

    @property
    def context_tokens(self) -> int:
        return self.cache.get_seq_length()

    def device_bytes(self) -> int:
        """Bytes held by the materialised active context."""
        if self.kv.adopted:
            return self.kv.nbytes()
        return sum(l.keys.numel() * l.keys.element_size() * 2 for l in self.cache.layers if l.is_initialized)

    def snapshot(self) -> Snapshot:
        """The memory as of the last completed change (safe to call from any thread).

        The snapshot's tensors stay exactly as they are while it lives (its buffer is pinned)."""
        with self.kv.lock:
            snap = self._published
            if snap is None:
                snap = self._published = self._make_snapshot()
                self.kv.published = snap.storage
            self.kv.pin(snap, snap.storage)
        return snap

    def _publish(self) -> None:
        snap = self._make_snapshot()
        with self.kv.lock:  # readers see the old or the new snapshot, and pin what they got
            self._published = snap
            self.kv.published = snap.storage

    def _make_snapshot(self) -> Snapshot:
        keys, values = cache_tensors(self.cache) if self.context_tokens else ((), ())
        return Snapshot(sinks=tuple(self.sinks), prev_text=tuple(self.prev_text), live=tuple(self.live),
                        keys=keys, values=values, next_pos=self.next_pos, stream_time_s=self.stream_time_s,
                        chunks_ingested=self.chunks_ingested, storage=self.kv.storage)

    # ---- writing --------------------------------------------------------------------------------
    def extract(self, n_tokens: int, start: int, rel_pos: torch.Tensor, kind: str, **meta) -> Segment:
        """Build a canonical Segment from the last ``n_tokens`` of the active cache (placed at ``start``)."""
        self.kv.adopt(self.cache)
        keys, values = self.kv.extract(n_tokens, start)
        return Segment(kind=kind, keys=keys, values=values, rel_pos=rel_pos, **meta)

    def append_prefilled(self, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
        """Append per-layer K/V [1, H, s, D] computed elsewhere (a batched prefill) after the cache's tokens."""
        for l, (k, v) in enumerate(zip(keys, values)):
            self.cache.update(k, v, l)

    def _placed(self, seg: Segment) -> None:
        """``seg`` joins the buffer layout: it was just prefilled as the last tokens of the cache, or, when the
        cache holds nothing after the layout (bookkeeping callers), it is placed from its canonical keys."""
        end = self._layout_tokens
        have = self.kv.length if self.kv.adopted else self.cache.get_seq_length()
        if have == end:
            for l, (k, v) in enumerate(zip(seg.keys, seg.values)):
                self.cache.update(self.rotate(k, self.next_pos), v, l)
        self.kv.adopt(self.cache)
        self.kv.note_committed(end, seg)
        self._layout.append(seg)
        self._offsets[id(seg)] = end
        self._layout_tokens = end + seg.n_tokens

    def commit_sink(self, seg: Segment) -> None:
        """Record a segment that was just prefilled at the end of the context as a sink (never evicted)."""
        if self.live or self.prev_text:
            raise RuntimeError("sinks must be added before any stream content")
        self._placed(seg)
        self.sinks.append(seg)
        self.next_pos += seg.span
        self._publish()

    def commit(self, seg: Segment) -> list[Segment]:
        """Record a live segment that was just prefilled at the end of the context; evict as needed.

        Returns the evicted segments (vision chunks and tagged text such as speech went to ``on_evict``;
        text went to previous text).
        """
        if seg.kind not in (VISION, TEXT):
            raise ValueError(f"live segments are vision or text, got {seg.kind!r}")
        self._placed(seg)
        self.live.append(seg)
        self.next_pos += seg.span
        if seg.kind == VISION:
            self.chunks_ingested += 1
            if seg.end_s is not None:
                self.stream_time_s = max(self.stream_time_s, seg.end_s)
        evicted = self.policy.evictions(self.live)
        if evicted:
            gone = {id(s) for s in evicted}
            self.live = [s for s in self.live if id(s) not in gone]
            texts = [s for s in evicted if s.kind == TEXT]
            if texts:
                self._absorb_prev_text(texts)
            self._rebuild()
            self.evicted_total += len(evicted)
            if self.on_evict is not None:
                for s in evicted:
                    if s.kind == VISION or s.source:  # tagged text (speech) is kept in long-term too
                        self.on_evict(s)
        self._publish()
        return evicted

    def set_stream_time(self, t_s: float) -> None:
        """Start the stream clock at ``t_s`` (a session resumed over stored memory)."""
        self.stream_time_s = float(t_s)
        self._publish()

    def add_previous_text(self, seg: Segment) -> None:
        """Put a text segment straight into the previous-text block (e.g. the caller's initial text)."""
        self._absorb_prev_text([seg])
        self._rebuild()
        self._publish()

    def _absorb_prev_text(self, texts: Sequence[Segment]) -> None:
        """Move text into the previous-text block: keep the first N and the last N tokens (KV kept)."""
        for t in texts:
            rest = t
            head_len = self.prev_head.n_tokens if self.prev_head else 0
            room = self.prev_head_max - head_len
            if room > 0:
                take = min(room, rest.n_tokens)
                part = slice_text(rest, 0, take, self.rotate)
                self.prev_head = part if self.prev_head is None else concat_text([self.prev_head, part], self.rotate)
                rest = slice_text(rest, take, rest.n_tokens, self.rotate) if take < rest.n_tokens else None
            if rest is None or self.prev_tail_max == 0:
                continue
            tail = rest if self.prev_tail is None else concat_text([self.prev_tail, rest], self.rotate)
            if tail.n_tokens > self.prev_tail_max:
                tail = slice_text(tail, tail.n_tokens - self.prev_tail_max, tail.n_tokens, self.rotate)
            elif tail.kind != PREV_TEXT:
                tail = slice_text(tail, 0, tail.n_tokens, self.rotate)
            self.prev_tail = tail

    def _rebuild(self) -> None:
        """Re-lay the active context out at contiguous positions 0..N-1 after the segments changed.

        Segments before the first change keep their tokens; from there on, surviving segments are moved
        and every key is re-rotated from its canonical form (``KVBuffer.relayout``: a constant number of
        tensor ops, however many segments the window holds)."""
        new = self.segments()
        old = self._layout
        i = 0
        while i < min(len(new), len(old)) and new[i] is old[i]:
            i += 1
        a = sum(s.n_tokens for s in new[:i])
        pos = sum(s.span for s in new[:i])
        plan = []
        offsets = {id(s): self._offsets[id(s)] for s in new[:i]}
        at = a
        for s in new[i:]:
            plan.append((self._offsets.get(id(s)), s, pos))  # None: not in the buffer (new previous text)
            offsets[id(s)] = at
            at += s.n_tokens
            pos += s.span
        if plan or self.kv.length != a:
            self.kv.relayout(a, plan)
        self._layout, self._offsets, self._layout_tokens = list(new), offsets, at
        self.next_pos = pos
        self.rebuilds += 1

    def assemble(self, snap: Snapshot, retrieved: Sequence[Segment]) -> tuple[DynamicCache, int]:
        """A fresh cache for answering: sinks | previous text | retrieved (chronological) | live.

        Without retrieved segments the snapshot's tensors are reused by reference.
        """
        if not retrieved:
            cache = self.new_cache()
            if snap.keys:
                fill_cache(cache, snap.keys, snap.values)
            return cache, snap.next_pos
        ordered = sorted(retrieved, key=lambda s: (s.start_s if s.start_s is not None else -1.0))
        # Contiguous positions with the origin moved back by the retrieved span R: sinks and previous
        # text go to [-R, P - R), retrieved entries to [P - R, P), and the live window keeps the
        # positions it already has in the snapshot, so its (largest) part needs no re-rotation. RoPE
        # scores depend on position differences only: this equals the layout that starts at 0.
        head = list(snap.sinks) + list(snap.prev_text)
        n_head = sum(s.n_tokens for s in head)
        p_head = sum(s.span for s in head)
        r_span = sum(s.span for s in ordered)
        r_keys, r_values, _ = place(ordered, self.rotate, start=p_head - r_span)
        keys = tuple(torch.cat([self.rotate(k[:, :, :n_head], -r_span), rk, k[:, :, n_head:]], dim=-2)
                     for k, rk in zip(snap.keys, r_keys))
        values = tuple(torch.cat([v[:, :, :n_head], rv, v[:, :, n_head:]], dim=-2)
                       for v, rv in zip(snap.values, r_values))
        return fill_cache(self.new_cache(), keys, values), snap.next_pos

    def assemble_only(self, snap: Snapshot, retrieved: Sequence[Segment], keep: Callable[[Segment], bool]
                      ) -> tuple[DynamicCache, int]:
        """A fresh cache of the sinks, the retrieved entries (chronological) and the live segments ``keep``
        accepts, at contiguous positions from 0 (a question about a time range: nothing else is seen).

        Every kept segment is placed (rotated) anew; the previous-text block is left out (its text is from
        other times). Returns the cache and the next free position.
        """
        ordered = sorted(retrieved, key=lambda s: -1.0 if s.start_s is None else s.start_s)  # chronological
        segs = list(snap.sinks) + ordered + [s for s in snap.live if keep(s)]
        keys, values, pos = place(segs, self.rotate)
        return fill_cache(self.new_cache(), keys, values), pos
