"""The one place where vstream's model and config meet memory/'s plain values.

memory/ knows tensors, not models: ``memory.longterm.LongTerm`` is opened with a ``StoreMeta`` (what the
entries' K/V look like) and a ``LongTermConfig`` (its own settings). This module builds both from a
model adapter and ``MemoryConfig``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Protocol

import torch

from memory.longterm import LongTerm, LongTermConfig
from memory.segment import Segment
from memory.types import Retrieved, StoreMeta
from vstream.config import MemoryConfig


def store_meta(adapter) -> StoreMeta:
    """Describe the adapter's model (name, family, KV shape, position dims, dtype) for the store."""
    return StoreMeta(model=adapter.name, family=adapter.family, num_layers=adapter.num_layers,
                     num_kv_heads=adapter.num_kv_heads, head_dim=adapter.head_dim, pos_dims=adapter.pos_dims,
                     dtype=str(adapter.dtype).replace("torch.", ""))


def long_term_config(cfg: MemoryConfig) -> LongTermConfig:
    """The long-term settings of ``cfg`` (LongTermConfig's fields carry MemoryConfig's names)."""
    return LongTermConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(LongTermConfig)})


def open_long_term(adapter, cfg: MemoryConfig, directory: str | Path | None = None, *,
                   load_existing: bool = False) -> LongTerm:
    """``LongTerm.create`` for this adapter's model and this memory config."""
    return LongTerm.create(store_meta(adapter), long_term_config(cfg), directory, load_existing=load_existing)


class LongTermMemory(Protocol):
    """What the engine needs from the long-term store (memory.longterm.LongTerm implements it)."""

    def on_evict(self, seg: Segment) -> None: ...
    def retrieve(self, *, question: str, query_means: torch.Tensor | None, k: int, before_s: float,
                 device: torch.device, dtype: torch.dtype | None = None,
                 wall_range: tuple[float, float] | None = None) -> list[Retrieved]: ...
    def count_in_range(self, wall_range: tuple[float, float] | None) -> int: ...
    def __len__(self) -> int: ...
