"""Result dataclasses returned by the public API (vstream.api)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Evidence:
    """A piece of memory an answer used."""

    start_s: float
    end_s: float
    score: float  # retrieval score (long-term) or similarity to the question (recent window)
    tier: str = "window"  # where it was found: "window" (active context) | "long_term"
    entry_id: int | None = None  # long-term entry id when tier == "long_term"
    thumbnail: bytes | None = field(default=None, repr=False)  # small JPEG
    source: str = "vision"  # what it is: "vision" (video chunk) | "speech" (recognised audio) | "text"
    text: str = ""  # the entry's text (marker, OCR, transcript)
    wall_s: float | None = None  # wall-clock time (UTC epoch seconds) at start_s; None: the source had no clock
    wall_end_s: float | None = None  # ... at end_s
    tz: str = ""  # the source's IANA time-zone name

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("thumbnail")
        return d


@dataclass
class Answer:
    """An answer to a question asked at stream time ``asked_at_s``."""

    question: str
    text: str
    asked_at_s: float
    evidence: list[Evidence] = field(default_factory=list)
    ttft_s: float = 0.0  # wall time from the question's turn to the first token
    latency_s: float = 0.0  # wall time from the question's turn to the last token
    tokens: int = 0
    cancelled: bool = False
    token_ids: list[int] = field(default_factory=list)  # the decoded ids (compare answers exactly)
    memory_s: float | None = None  # stream time the memory it was answered on reaches (end of its last chunk)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["evidence"] = [e.to_dict() for e in self.evidence]
        return d


@dataclass
class CommentaryItem:
    """Live commentary produced after one chunk."""

    start_s: float
    end_s: float
    text: str
    chunk_index: int
    latency_s: float = 0.0
    token_ids: list[int] = field(default_factory=list)  # the words' ids whose K/V entered memory (exact replay)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Alert:
    """A standing instruction that fired."""

    condition: str
    at_s: float
    probability: float
    answer: Answer | None = None
    wall_s: float | None = None  # wall-clock time (UTC epoch seconds) at at_s, when the source has a clock

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["answer"] = self.answer.to_dict() if self.answer else None
        return d


@dataclass
class ChunkReport:
    """What perception did with one chunk."""

    index: int
    start_s: float
    end_s: float
    n_tokens: int
    latency_s: float  # embed + prefill + bookkeeping, wall time
    evicted: int  # segments evicted from the active context by this chunk
    context_tokens: int  # tokens in the active context after the chunk
    visual_kept: int = 0  # visual tokens prefilled (all of them without token drop)
    visual_dropped: int = 0  # visual tokens skipped by token drop (memory.token_drop)
