"""Value types of long-term memory: what a store was written by, what an entry is, what a search returns.

Plain values only (no model objects): the caller maps its model onto a ``StoreMeta``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from memory.segment import Segment

#: Newest memory format this code reads. 1: vision entries only, K/V as is or int8 / int4 / k4v2. 2: entries may
#: also be text (``kind="text"``, e.g. ``source="speech"``): a reader of format 1 would take them for video
#: chunks, so a store is marked 2 once it holds one. 3: the k2v1.58 cold tier (mixed 2/1-bit keys, ternary values
#: packed five per byte). A store is written with the lowest version its content needs (memory.store_format.
#: format_version_for, upgraded in place when a text entry or a k2v1.58 entry first needs more), so older
#: readers keep reading what they can.
#: 4: entries may carry wall-clock time (``wall_s``, ``wall_end_s``, ``tz``); a reader of format 3 would drop it
#: silently, so a store is marked 4 once it holds an entry with wall time (memory.store_format).
FORMAT_VERSION = 4
TEXT_FORMAT_VERSION = 2  # the first format with text entries
CLOCK_FORMAT_VERSION = 4  # the first format with wall-clock time on entries
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class StoreMeta:
    """What a memory directory was written by; entries only make sense for the same model."""

    model: str
    family: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    pos_dims: int
    dtype: str  # "float32" | "bfloat16" | "float16": the dtype K/V are stored and returned in
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"StoreMeta.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("num_layers", "num_kv_heads", "head_dim", "pos_dims"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"StoreMeta.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def describe(self) -> str:
        return (f"{self.model!r} ({self.family}, {self.num_layers} layers, {self.num_kv_heads} kv heads, "
                f"head_dim {self.head_dim}, pos_dims {self.pos_dims}, format {self.format_version})")

    def check_readable(self, where: str) -> None:
        """Raise ValueError (one line) when this format version is newer than this code reads."""
        if self.format_version > FORMAT_VERSION:
            raise ValueError(f"memory at {where} has format version {self.format_version}, newer than this "
                             f"vstream supports ({FORMAT_VERSION}); upgrade vstream or use another memory directory")

    def check_compatible(self, other: "StoreMeta", where: str) -> None:
        """Raise ValueError (one line, naming both models) when ``other`` (found at ``where``) cannot be used.

        The dtype is not compared: K/V of the same model in another dtype are cast by ``get(dtype=...)``.
        """
        other.check_readable(where)
        keys = ("model", "family", "num_layers", "num_kv_heads", "head_dim", "pos_dims")  # any version <= ours reads
        if any(getattr(self, k) != getattr(other, k) for k in keys):
            raise ValueError(f"memory at {where} was written by model {other.describe()}, but this run uses "
                             f"{self.describe()}; use a fresh memory directory for this model")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict, where: str = "config.json") -> "StoreMeta":
        try:
            return cls(model=str(d["model"]), family=str(d["family"]), num_layers=int(d["num_layers"]),
                       num_kv_heads=int(d["num_kv_heads"]), head_dim=int(d["head_dim"]), pos_dims=int(d["pos_dims"]),
                       dtype=str(d["dtype"]), format_version=int(d.get("format_version", 1)))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{where} is not a vstream memory config (bad or missing field {e})") from None


@dataclass(frozen=True)
class EntryInfo:
    """Everything about an entry except its K/V (cheap: held in RAM)."""

    entry_id: int
    start_s: float
    end_s: float
    n_tokens: int
    span: int
    text: str
    thumbnail: bytes | None
    nbytes: int  # K/V bytes as stored (after quantisation)
    kind: str = "vision"  # "vision" (a video chunk) | "text" (format 2: e.g. recognised speech)
    source: str = ""  # text entries: "speech"
    wall_s: float | None = None  # format 4: wall-clock time (UTC epoch seconds) at start_s; None: unknown
    wall_end_s: float | None = None  # format 4: ... at end_s
    tz: str = ""  # format 4: the source's IANA time-zone name


@dataclass
class Retrieved:
    """A long-term entry brought back for a question."""

    segment: Segment
    score: float
    entry_id: int
