"""`vstream bench realtime`: frame rate sustained with live commentary; time to first token mid-stream vs idle.

Per model preset:

1. **Sustained FPS with commentary.** ``chunks`` chunks of synthetic frames sampled at ``fps`` go through
   ``Engine.ingest`` + ``Engine.commentary`` one after the other, as perception does. Stop tokens are
   disabled so that every chunk decodes exactly ``commentary_tokens`` tokens (the same work per chunk).
   sustained FPS = frames processed / wall seconds (at this chunk shape: ``fps * chunk_seconds`` frames a
   chunk); it keeps up with the stream when it is >= ``fps``. Per-token latency = chunk time (vision
   encoding + prefill + decoding) / tokens decoded, the papers' definition; its median over the first
   and the last chunks shows whether it stays flat.
2. **Time to first token mid-stream vs idle.** A background session ingests a synthetic stream with
   commentary on, as fast as it can (the busiest case); questions are asked on snapshots while it runs,
   through the responder. Then the session stops and the same questions are answered on the same
   snapshots with nothing ingesting. The ratio is the price of answering while watching.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from concurrent.futures import Future
from typing import Any, Iterator, Sequence

from vstream.bench.common import device_mem, median_or_none, new_figure, save_png, sync

logger = logging.getLogger(__name__)

DEFAULT_MODELS = ("tiny-qwen2.5-vl", "tiny-llava-onevision", "tiny-smolvlm")
QUESTION = "What is happening on the screen right now?"


@contextlib.contextmanager
def no_stop_tokens(adapter) -> Iterator[None]:
    """Within the block, this adapter instance has no stop tokens: decoding always runs to its budget."""
    cls = type(adapter)
    adapter.__class__ = type(f"{cls.__name__}NoStop", (cls,), {"eos_token_ids": property(lambda self: [])})
    try:
        yield
    finally:
        adapter.__class__ = cls


def synthetic_chunks(adapter, n: int, fps: float, chunk_seconds: float = 1.0, size: tuple[int, int] = (160, 120),
                     seed: int = 0) -> list:
    """``n`` chunks of a synthetic scene sampled at ``fps``, chunked the way a session chunks them."""
    from vstream.sources import Chunker, Sampler, SyntheticSource

    if n < 1:
        raise ValueError(f"chunks must be >= 1, got {n}")
    adapter.configure_sampling(fps)
    src = SyntheticSource(seed=seed, duration_s=n * chunk_seconds, fps=fps, size=size)
    chunker = Chunker(chunk_seconds, frames_per_chunk=adapter.frames_per_chunk(fps, chunk_seconds), origin=0.0)
    out = list(chunker(Sampler(fps)(iter(src))))
    if not out:
        raise ValueError(f"fps={fps} with chunk_seconds={chunk_seconds} gives no frames; raise --fps")
    return out[:n]


def cap_visual_tokens(adapter, sample, cap: int | None):
    """Shrink the frame size until a chunk like ``sample`` has at most ``cap`` vision tokens.

    Qwen2.5-VL: the longest side goes down in steps of 28 px. SmolVLM: the square side goes down in
    steps of patch * scale_factor (the adapter is rebuilt around the same model). LLaVA-OneVision's
    tower takes one fixed size: it is left as is (``within_cap`` False). Returns (adapter, info).
    """
    if cap is not None and cap < 1:
        raise ValueError(f"max_visual_tokens must be >= 1, got {cap}")
    n = adapter.embed_chunk(sample.marker, sample.frames).n_vision
    info: dict[str, Any] = {"max_visual_tokens": cap, "visual_tokens_uncapped": n}
    if cap is not None and n > cap:
        if adapter.family == "qwen2.5-vl":
            step = adapter.patch_size * adapter.merge_size
            side = adapter.target_side
            while n > cap and side > step:
                side -= step
                adapter.frame_size = side
                n = adapter.embed_chunk(sample.marker, sample.frames).n_vision
        elif adapter.family == "smolvlm":
            step = adapter.patch_size * adapter.scale_factor
            side = adapter.frame_size
            while n > cap and side > step:
                side -= step
                adapter = type(adapter)(adapter.model, adapter.tokenizer, name=adapter.name, frame_size=side,
                                        image_mean=adapter.image_mean.flatten().tolist(),
                                        image_std=adapter.image_std.flatten().tolist())
                n = adapter.embed_chunk(sample.marker, sample.frames).n_vision
        if n > cap:
            logger.warning("%s: cannot bring a chunk below %d vision tokens (has %d); measuring as is",
                           adapter.name, cap, n)
    info["visual_tokens_per_chunk"] = n
    info["within_cap"] = cap is None or n <= cap
    info["frame_size"] = getattr(adapter, "target_side", None) or adapter.frame_size
    return adapter, info


def measure_sustained(adapter, config, chunks: Sequence, commentary_tokens: int, progress: bool = True
                      ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Ingest + commentary chunk after chunk on one engine; per-chunk rows and the summary."""
    from tqdm import tqdm

    from vstream.engine.core import Engine

    warm = Engine(adapter, config)  # first calls pay for lazy initialisation: keep them out of the numbers
    warm.start()
    for ch in chunks[:2]:
        warm.ingest(ch)
        warm.commentary(ch, commentary_tokens)
    del warm
    eng = Engine(adapter, config)
    eng.start()
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for ch in tqdm(chunks, desc=f"realtime [{adapter.name}]", disable=None if progress else True, leave=False):
        sync()
        t0 = time.perf_counter()
        rep = eng.ingest(ch)
        sync()
        t1 = time.perf_counter()
        item = eng.commentary(ch, commentary_tokens)
        sync()
        t2 = time.perf_counter()
        n_out = len(item.token_ids)  # == commentary_tokens: stop tokens are off during the benchmark
        rows.append({"chunk": ch.index, "frames": len(ch), "tokens_in": rep.n_tokens, "ingest_s": t1 - t0,
                     "commentary_s": t2 - t1, "chunk_s": t2 - t0, "tokens_out": n_out,
                     "per_token_s": (t2 - t0) / max(1, n_out), "context_tokens": eng.memory.context_tokens,
                     "device_bytes": device_mem()})
    wall = time.perf_counter() - t_start
    frames = sum(r["frames"] for r in rows)
    k = max(3, len(rows) // 10)
    w = config.memory.window_chunks  # early = just after the vision window filled (when the run is long enough)
    e0 = w if len(rows) >= w + 2 * k else 0
    early = median_or_none([r["per_token_s"] for r in rows[e0:e0 + k]])
    late = median_or_none([r["per_token_s"] for r in rows[-k:]])
    summary = {
        "frames_per_chunk": rows[0]["frames"], "chunks": len(rows), "wall_s": wall,
        "sustained_fps": frames / wall if wall > 0 else None,
        "chunk_s_p50": median_or_none([r["chunk_s"] for r in rows]),
        "ingest_s_p50": median_or_none([r["ingest_s"] for r in rows]),
        "commentary_s_p50": median_or_none([r["commentary_s"] for r in rows]),
        "early_chunks": [rows[e0]["chunk"], rows[min(e0 + k, len(rows)) - 1]["chunk"]],
        "late_chunks": [rows[max(0, len(rows) - k)]["chunk"], rows[-1]["chunk"]],
        "per_token_latency_early_s": early, "per_token_latency_late_s": late,
        "per_token_late_over_early": late / early if early else None,
        "per_token_flat": bool(early and late / early <= 1.5),
        "context_tokens_max": max(r["context_tokens"] for r in rows),
    }
    return rows, summary


def measure_ttft(adapter, config, fps: float, chunk_seconds: float, size: tuple[int, int], questions: int = 3,
                 warm_chunks: int = 4, max_new_tokens: int = 4, timeout_s: float = 600.0) -> dict[str, Any]:
    """TTFT of questions asked while a background session ingests with commentary, then on the same snapshots idle."""
    from vstream.api import Agent
    from vstream.session.responder import Query, Responder
    from vstream.sources import SyntheticSource

    agent = Agent(adapter, config)
    src = SyntheticSource(seed=1, duration_s=math.inf, fps=fps, size=size)
    session = agent.watch(src, background=True, commentary=True)
    snaps, mid, ingested = [], [], []
    try:
        if not session.wait_chunks(warm_chunks, timeout=timeout_s):
            raise RuntimeError(f"perception did not ingest {warm_chunks} chunks in {timeout_s:.0f}s")
        for i in range(questions + 1):  # the first question is a warm-up
            session.wait_chunks(session.engine.memory.chunks_ingested + 1, timeout=timeout_s)  # mid-stream
            snap = session.engine.snapshot()
            q = Query(question=QUESTION, snapshot=snap, future=Future(), max_new_tokens=max_new_tokens, history=False)
            n0 = session.engine.memory.chunks_ingested
            ans = session.responder.submit(q).result(timeout_s)
            if i:
                snaps.append(snap)
                mid.append(ans.ttft_s)
                ingested.append(session.engine.memory.chunks_ingested - n0)
        if session.error:
            raise RuntimeError(f"the background session failed: {session.error}")
    finally:
        session.close()
    deadline = time.monotonic() + timeout_s
    while not session.ended and time.monotonic() < deadline:  # perception finishes its last chunk
        time.sleep(0.01)
    # idle: perception has stopped; the same snapshots are answered the same way (a responder thread)
    idle_responder = Responder(session.engine.answer, maxsize=len(snaps) + 1, name="vstream-bench-idle")
    try:
        idle = []
        for i, snap in enumerate([snaps[0]] + snaps):  # the first is a warm-up
            q = Query(question=QUESTION, snapshot=snap, future=Future(), max_new_tokens=max_new_tokens, history=False)
            ans = idle_responder.submit(q).result(timeout_s)
            if i:
                idle.append(ans.ttft_s)
    finally:
        idle_responder.close(timeout_s)
    m, i_ = median_or_none(mid), median_or_none(idle)
    return {"ttft_mid_stream_s": mid, "ttft_idle_s": idle, "chunks_ingested_while_answering": ingested,
            "context_tokens": [s.context_tokens for s in snaps],
            "ttft_mid_stream_p50_s": m, "ttft_idle_p50_s": i_, "ttft_mid_over_idle": m / i_ if i_ else None}


def bench_realtime(models: Sequence[str] = DEFAULT_MODELS, chunks: int = 60, fps: float = 2.0,
                   commentary_tokens: int = 20, device: str = "auto", max_visual_tokens: int | None = None, *,
                   chunk_seconds: float = 1.0, frame_size: tuple[int, int] = (160, 120), questions: int = 3,
                   config: str = "default", progress: bool = True, frame_side: int | None = None,
                   window: int | None = None) -> dict[str, Any]:
    """Sustained FPS with commentary and TTFT mid-stream vs idle for each model; rows plus a summary.

    ``config`` is a config preset name; long-term memory is off (the window and text memory are what a
    live stream exercises every chunk). ``frame_side`` sets the adapter's frame size before the
    ``max_visual_tokens`` cap walks it down (start large to land just under the cap); ``window`` overrides
    the preset's W. Returns ``{"bench", "settings", "rows", "summary"}`` where ``summary[model]`` holds the
    headline numbers.
    """
    from vstream.config import from_name
    from vstream.models.registry import load_model

    if not models:
        raise ValueError("no models given; pass e.g. --models tiny-smolvlm")
    if not fps > 0 or not chunk_seconds > 0:
        raise ValueError(f"fps and chunk_seconds must be > 0, got {fps} and {chunk_seconds}")
    if commentary_tokens < 1:
        raise ValueError(f"commentary_tokens must be >= 1, got {commentary_tokens}")
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for name in models:
        adapter = load_model(name, device=device)
        if frame_side is not None:
            adapter.frame_size = int(frame_side)
        extra = {} if window is None else {"memory.window_chunks": int(window)}
        cfg = from_name(config).replace(model=adapter.name, **{
            "memory.long_term": False, "sampler.fps": fps, "sampler.chunk_seconds": chunk_seconds,
            "responder.commentary_tokens": commentary_tokens, "responder.close_timeout_s": 2.0, **extra}).validate()
        chunk_list = synthetic_chunks(adapter, chunks, fps, chunk_seconds, frame_size)
        adapter, cap = cap_visual_tokens(adapter, chunk_list[0], max_visual_tokens)
        logger.info("%s: %d chunks of %d frames, %d vision tokens each", name, len(chunk_list),
                    len(chunk_list[0]), cap["visual_tokens_per_chunk"])
        with no_stop_tokens(adapter):
            model_rows, sus = measure_sustained(adapter, cfg, chunk_list, commentary_tokens, progress)
            ttft = measure_ttft(adapter, cfg, fps, chunk_seconds, frame_size, questions)
        rows += [{"model": name, **r} for r in model_rows]
        summary[name] = {**cap, **sus, "input_fps": fps, "keeps_up": bool(sus["sustained_fps"] >= fps),
                         **{k: v for k, v in ttft.items() if not isinstance(v, list)},
                         "ttft_detail": {k: v for k, v in ttft.items() if isinstance(v, list)}}
        del adapter
    return {"bench": "realtime", "settings": {"models": list(models), "chunks": chunks, "fps": fps,
                                              "chunk_seconds": chunk_seconds, "commentary_tokens": commentary_tokens,
                                              "max_visual_tokens": max_visual_tokens, "frame_size": list(frame_size),
                                              "config": config, "device": device, "questions": questions,
                                              "frame_side": frame_side, "window": cfg.memory.window_chunks},
            "rows": rows, "summary": summary}


def plot_realtime(result: dict[str, Any], path) -> None:
    """Per-token latency against stream position, one line per model (PNG)."""
    fig, ax = new_figure(figsize=(8, 4.5))
    for name in result["summary"]:
        rs = [r for r in result["rows"] if r["model"] == name]
        s = result["summary"][name]
        ax.plot([r["chunk"] for r in rs], [r["per_token_s"] * 1000 for r in rs],
                label=f"{name} ({s['sustained_fps']:.1f} fps sustained)")
    st = result["settings"]
    ax.set_xlabel("stream position (chunk)")
    ax.set_ylabel("per-token latency (ms): chunk time / tokens")
    ax.set_title(f"ingest + {st['commentary_tokens']}-token commentary at {st['fps']:g} fps")
    ax.legend()
    save_png(fig, path)
