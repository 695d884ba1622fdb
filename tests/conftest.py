"""Shared fixtures: tiny models (built once per session), synthetic chunks, the repo paths."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models: threads cost more than they give, and tests run in parallel with nothing

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY_PRESETS = ["tiny-qwen2.5-vl", "tiny-llava-onevision", "tiny-smolvlm"]

_adapters: dict[str, object] = {}


def tiny_adapter(name: str):
    """A tiny random adapter, fp32 on CPU, built once per test session."""
    from vstream.models.registry import load_model

    if name not in _adapters:
        _adapters[name] = load_model(name, device="cpu", dtype="float32", seed=0)
    return _adapters[name]


@pytest.fixture(params=TINY_PRESETS)
def preset(request) -> str:
    return request.param


def make_chunks(n: int, frames: int = 2, size: int = 32, seed: int = 0, start_index: int = 0):
    """Deterministic chunks of random frames, 1 s each."""
    from vstream.sources import Chunk

    rng = np.random.default_rng(seed)
    out = []
    for i in range(start_index, start_index + n):
        fr = rng.integers(0, 256, size=(frames, size, size, 3), dtype=np.uint8)
        out.append(Chunk(index=i, start_s=float(i), end_s=float(i + 1), frames=fr,
                         timestamps=[i + j / frames for j in range(frames)]))
    return out
