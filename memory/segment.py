"""Segment: the immutable K/V of one span of context (sinks, a video chunk, a piece of text).

Keys are stored *canonical*: post-RoPE as if the segment started at position 0. Placing the segment at
position p is one delta rotation by p (see ``vstream.models.base.rope_delta_rotate``), so every key is
rotated exactly once from its canonical form, whatever the number of evictions before (no drift).
Tensors are never modified after creation; a snapshot of memory is a list of references.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field

import torch

_ids = itertools.count()

#: Segment kinds.
SINK, VISION, TEXT, PREV_TEXT = "sink", "vision", "text", "prev_text"
KINDS = (SINK, VISION, TEXT, PREV_TEXT)


def next_segment_id() -> int:
    return next(_ids)


@dataclass(eq=False)
class Segment:
    """K/V of one span of context, plus what is known about it."""

    kind: str
    keys: tuple[torch.Tensor, ...]  # per layer [1, H_kv, S, D], canonical (segment starts at position 0)
    values: tuple[torch.Tensor, ...]  # per layer [1, H_kv, S, D]
    rel_pos: torch.Tensor  # [P, S] int64 positions relative to the segment start
    start_s: float | None = None  # stream time covered (vision chunks; text: when it was said)
    end_s: float | None = None
    text: str = ""  # marker + commentary / captions / OCR (vision), or the text itself
    token_ids: tuple[int, ...] = ()  # text segments: their token ids (prev-text trimming re-uses them)
    key_summary: torch.Tensor | None = None  # [L, H_kv * D] fp32: per-layer mean of pre-RoPE keys
    thumbnail: bytes | None = None  # small JPEG of a keyframe
    chunk_index: int | None = None
    source: str = ""  # text: where it came from ("speech": recognised audio, kept in long-term on eviction)
    wall_s: float | None = None  # wall-clock time (UTC epoch seconds) at start_s, when the source knows it
    wall_end_s: float | None = None  # ... at end_s
    tz: str = ""  # the source's IANA time-zone name (with wall_s)
    seg_id: int = field(default_factory=next_segment_id)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown segment kind {self.kind!r}")
        if len(self.keys) != len(self.values) or not self.keys:
            raise ValueError("keys and values must be non-empty per-layer tuples of equal length")

    @property
    def n_tokens(self) -> int:
        return int(self.keys[0].shape[-2])

    @functools.cached_property
    def span(self) -> int:
        """Positions the segment occupies (M-RoPE chunks may span fewer positions than tokens); computed once
        (a device sync), the segment never changes."""
        return int(self.rel_pos.max().item()) + 1 if self.rel_pos.numel() else 0

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    def nbytes(self) -> int:
        """Bytes held by the K/V tensors."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in zip(self.keys, self.values))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None,
           non_blocking: bool = False) -> "Segment":
        """A copy with K/V on another device and/or dtype (same id and metadata)."""
        keys = tuple(k.to(device, dtype=dtype, non_blocking=non_blocking) for k in self.keys)
        values = tuple(v.to(device, dtype=dtype, non_blocking=non_blocking) for v in self.values)
        return Segment(kind=self.kind, keys=keys, values=values, rel_pos=self.rel_pos.to(device),
                       start_s=self.start_s, end_s=self.end_s, text=self.text, token_ids=self.token_ids,
                       key_summary=self.key_summary, thumbnail=self.thumbnail, chunk_index=self.chunk_index,
                       source=self.source, wall_s=self.wall_s, wall_end_s=self.wall_end_s, tz=self.tz,
                       seg_id=self.seg_id)
