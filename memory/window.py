"""Eviction policy of the active context: a small object with a few verbs (streaming-llm style).

The active context is ``| sinks | previous text | live |`` where *live* holds vision chunks and text
segments (commentary, questions and answers) in the order they happened. The policy keeps the last
``window_chunks`` vision chunks and the newest text segments that fit in ``text_window_tokens``; it
only does bookkeeping, no tensors.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from memory.segment import TEXT, VISION, Segment

logger = logging.getLogger(__name__)


@dataclass
class WindowPolicy:
    """Decides which live segments leave the active context."""

    window_chunks: int
    text_window_tokens: int

    def __post_init__(self) -> None:
        if self.window_chunks < 1:
            raise ValueError(f"window_chunks must be >= 1, got {self.window_chunks}")
        if self.text_window_tokens < 0:
            raise ValueError(f"text_window_tokens must be >= 0, got {self.text_window_tokens}")

    def evictions(self, live: Sequence[Segment]) -> list[Segment]:
        """Segments of ``live`` (oldest first) that must leave; the caller removes them."""
        out: list[Segment] = []
        vision = [s for s in live if s.kind == VISION]
        out.extend(vision[: max(0, len(vision) - self.window_chunks)])
        texts = [s for s in live if s.kind == TEXT]
        kept_tokens = 0
        keep_from = len(texts)
        for i in range(len(texts) - 1, -1, -1):  # newest first
            if kept_tokens + texts[i].n_tokens > self.text_window_tokens:
                break
            kept_tokens += texts[i].n_tokens
            keep_from = i
        out.extend(texts[:keep_from])
        order = {id(s): i for i, s in enumerate(live)}
        return sorted(out, key=lambda s: order[id(s)])
