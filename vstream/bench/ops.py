"""`vstream bench ops`: aten ops per ingested chunk outside the model against the window size W.

On a GPU every aten op is (at least) one kernel launch, so bookkeeping that grows with W costs real time
before the model does anything. Ops are counted with a ``TorchDispatchMode`` (deterministic: no timing),
split into three parts per chunk:

- ``prefill``: inside the LLM prefill (``adapter.forward``), the model's own work;
- ``vision``: inside the vision encoder and embedding (``adapter.embed_chunk``), also the model;
- ``outside``: everything else ``Engine.ingest`` runs: token drop, extracting the chunk's segment,
  eviction, re-indexing, the long-term store, snapshots.

The steady state is measured: the window is filled first (``W + 2`` chunks, evictions happening), then
``chunks`` more chunks are counted and averaged.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vstream.bench.common import environment, new_figure, random_chunks, save_png

logger = logging.getLogger(__name__)


class OpCounter(TorchDispatchMode):
    """Counts aten ops by the part of the work that runs them (``part`` is set by the caller)."""

    def __init__(self) -> None:
        super().__init__()
        self.part = "outside"
        self.counts: Counter[str] = Counter()
        self.by_op: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[self.part] += 1
        if self.part == "outside":
            self.by_op[func._schema.name] += 1
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def within(self, part: str) -> Iterator[None]:
        """Count the ops of the block as ``part`` (nested blocks: the innermost wins)."""
        prev, self.part = self.part, part
        try:
            yield
        finally:
            self.part = prev


@contextlib.contextmanager
def counting(adapter) -> Iterator[OpCounter]:
    """An ``OpCounter`` active in the block, with the adapter's model calls marked as the model's parts."""
    counter = OpCounter()
    originals = {n: getattr(adapter, n) for n in ("forward", "embed_chunk", "embed_chunks")}

    def wrap(fn, part):
        def inner(*args, **kwargs):
            with counter.within(part):
                return fn(*args, **kwargs)
        return inner

    adapter.forward = wrap(originals["forward"], "prefill")
    adapter.embed_chunk = wrap(originals["embed_chunk"], "vision")
    adapter.embed_chunks = wrap(originals["embed_chunks"], "vision")
    try:
        with counter:
            yield counter
    finally:
        for n in originals:
            delattr(adapter, n)  # back to the class methods


def with_layers(adapter, num_layers: int):
    """The adapter with its language model cut to, or repeated up to, ``num_layers`` decoder layers
    (random-weight presets: op counts depend on the layer count, not on the weights)."""
    lm = adapter.language_model()
    layers = list(lm.layers)
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    new = []
    for i in range(num_layers):
        layer = layers[i] if i < len(layers) else copy.deepcopy(layers[i % len(layers)])
        layer.self_attn.layer_idx = i
        new.append(layer)
    lm.layers = torch.nn.ModuleList(new)
    cfg = lm.config
    types = list(getattr(cfg, "layer_types", None) or ["full_attention"] * len(layers))
    cfg.layer_types = [types[i % len(types)] for i in range(num_layers)]
    cfg.num_hidden_layers = num_layers
    adapter.model.config.get_text_config(decoder=True).num_hidden_layers = num_layers
    adapter.num_layers = num_layers
    adapter._hooks_installed = False  # the new layers need the projection hooks too
    return adapter


def ops_per_chunk(model: str, window_chunks: int, num_layers: int | None = None, chunks: int = 6, *,
                  frames: int = 2, size: int = 32, long_term: bool = True, device: str = "cpu",
                  adapter=None) -> dict[str, Any]:
    """Mean aten ops per chunk at the steady state (window full, one eviction per chunk).

    Returns ``{"outside", "prefill", "vision", "total", "evicted_per_chunk", "window_chunks", "num_layers",
    "top_outside", ...}``: ops per chunk outside the model, inside the LLM prefill and inside the vision
    encoder, segments evicted per measured chunk, and the most frequent ops outside the model. ``adapter`` reuses a loaded model (its layer count must then
    be ``num_layers`` or None).
    """
    if window_chunks < 1:
        raise ValueError(f"window_chunks must be >= 1, got {window_chunks}")
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}")
    from vstream.config import from_name
    from vstream.engine.core import Engine
    from vstream.engine.longterm import open_long_term
    from vstream.models.registry import load_model

    if adapter is None:
        adapter = load_model(model, device=device, dtype="float32")
        if num_layers is not None and num_layers != adapter.num_layers:
            adapter = with_layers(adapter, num_layers)
    elif num_layers is not None and num_layers != adapter.num_layers:
        raise ValueError(f"the given adapter has {adapter.num_layers} layers, not {num_layers}")
    cfg = from_name("default").replace(**{"memory.window_chunks": window_chunks, "memory.long_term": long_term})
    lt = open_long_term(adapter, cfg.memory) if long_term else None
    eng = Engine(adapter, cfg, long_term=lt)
    warm = window_chunks + 2
    stream = list(random_chunks(warm + chunks, frames, size))
    with torch.inference_mode():
        eng.start()
        for ch in stream[:warm]:
            eng.ingest(ch)
        ev0 = eng.memory.evicted_total
        with counting(adapter) as counter:
            for ch in stream[warm:]:
                eng.ingest(ch)
        evicted = (eng.memory.evicted_total - ev0) / chunks
    if lt is not None:
        lt.close()
    parts = {k: counter.counts[k] / chunks for k in ("outside", "prefill", "vision")}
    return {**parts, "total": sum(parts.values()), "window_chunks": window_chunks,
            "num_layers": adapter.num_layers, "chunks": chunks, "long_term": long_term,
            "evicted_per_chunk": evicted,
            "top_outside": {k: v / chunks for k, v in counter.by_op.most_common(12)}}


def parse_ints(text: str, flag: str) -> tuple[int, ...]:
    """"8,16,32" -> (8, 16, 32), each >= 1 (ValueError naming ``flag`` otherwise)."""
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated whole numbers, e.g. 8,16,32; got {text!r}") from None
    if not vals or min(vals) < 1:
        raise ValueError(f"{flag} needs at least one number, each >= 1; got {text!r}")
    return vals


def bench_ops(model: str = "small-llava-onevision", windows=(8, 16, 32), layer_counts=(8, 16), chunks: int = 3,
              device: str = "cpu") -> dict[str, Any]:
    """``ops_per_chunk`` for every window size and layer count, with the W = max / W = min ratios."""
    from vstream.models.registry import load_model

    rows = []
    for n_layers in layer_counts:
        adapter = with_layers(load_model(model, device=device, dtype="float32"), n_layers)
        for w in windows:
            r = ops_per_chunk(model, w, n_layers, chunks, device=device, adapter=adapter)
            logger.info("ops: %d layers, W=%d: %.0f outside, %.0f prefill", n_layers, w, r["outside"], r["prefill"])
            rows.append(r)
    summary = {}
    for n_layers in layer_counts:
        mine = [r for r in rows if r["num_layers"] == n_layers]
        lo, hi = mine[0], mine[-1]
        summary[f"{n_layers}_layers"] = {
            "outside_per_chunk": {str(r["window_chunks"]): r["outside"] for r in mine},
            "prefill_per_chunk": {str(r["window_chunks"]): r["prefill"] for r in mine},
            f"outside_W{hi['window_chunks']}_over_W{lo['window_chunks']}": hi["outside"] / lo["outside"],
            "outside_over_prefill_max": max(r["outside"] / r["prefill"] for r in mine)}
    return {"bench": "ops", "model": model, "windows": list(windows), "layer_counts": list(layer_counts),
            "rows": rows, "summary": summary, "env": environment()}


def plot_ops(res: dict[str, Any], path: Path) -> None:
    """Ops per chunk outside the model and inside the prefill against W, one line pair per layer count."""
    fig, ax = new_figure(figsize=(6, 4))
    for n_layers in res["layer_counts"]:
        mine = [r for r in res["rows"] if r["num_layers"] == n_layers]
        ws = [r["window_chunks"] for r in mine]
        ax.plot(ws, [r["outside"] for r in mine], "o-", label=f"outside the model, {n_layers} layers")
        ax.plot(ws, [r["prefill"] for r in mine], "s--", label=f"LLM prefill, {n_layers} layers")
    ax.set_xlabel("window W (chunks)")
    ax.set_ylabel("aten ops per chunk")
    ax.set_xticks(res["windows"])
    ax.set_ylim(bottom=0)
    ax.set_title(f"ops per ingested chunk ({res['model']})")
    ax.legend(fontsize=8)
    save_png(fig, path)
