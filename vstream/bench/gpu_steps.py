"""The steps of `vstream bench gpu`, each run in its own process (``python -m vstream.bench.gpu_steps NAME
SETTINGS_JSON OUT``) so that a step that fails, hangs or breaks the CUDA context cannot take the others
with it, and a step over its time budget can be stopped.

Each step builds its model itself (random presets are created on the target device directly: see
``vstream.models.registry.load_model``), measures through the existing benchmarks (``realtime``,
``ingest``, ``memory_ttft``, ``fleet``, ``pipeline``) and writes ``OUT/gpu_NAME.json`` and ``.png``.
The JSON holds ``headline`` (the numbers the summary quotes), ``build`` (model build time, where the
weights were created), ``env`` and the step's full result. A step that cannot run here returns
``{"status": "skipped", "reason": ...}`` (the process still exits 0).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from vstream.bench.common import environment, new_figure, save_png, sync, write_json

logger = logging.getLogger(__name__)

QUESTION = "What is happening on the screen right now?"


def build(model: str, device: str, dtype: str = "auto") -> tuple[Any, dict[str, Any]]:
    """Load ``model`` (a preset: random weights made on ``device``); the adapter and how it was built."""
    from vstream.models.registry import load_model

    sync()
    t0 = time.perf_counter()
    adapter = load_model(model, device=device, dtype=dtype)
    sync()
    params = list(adapter.model.parameters())
    info = {"model": model, "build_s": time.perf_counter() - t0, "dtype": str(adapter.dtype),
            "weights_on": sorted({str(p.device) for p in params}),
            "parameters": int(sum(p.numel() for p in params))}
    logger.info("built %s in %.1f s on %s", model, info["build_s"], info["weights_on"])
    return adapter, info


def _peak() -> int | None:
    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def _chunks(adapter, s: dict[str, Any]):
    """Synthetic chunks at the step's fps, with the frame size walked down to ``max_visual_tokens``."""
    from vstream.bench.realtime import cap_visual_tokens, synthetic_chunks

    if s.get("frame_side"):
        adapter.frame_size = int(s["frame_side"])
    chunks = synthetic_chunks(adapter, s["chunks"], s["fps"], s.get("chunk_seconds", 1.0), tuple(s["source_size"]))
    adapter, cap = cap_visual_tokens(adapter, chunks[0], s.get("max_visual_tokens"))
    return adapter, chunks, cap


# ---- 1. realtime with commentary ------------------------------------------------------------------------
def step_realtime(s: dict[str, Any], out: Path) -> dict[str, Any]:
    """StreamingVLM's setting: sustained FPS with commentary, per-token latency late / early, TTFT."""
    from vstream.bench.realtime import bench_realtime, plot_realtime

    t0 = time.perf_counter()
    res = bench_realtime([s["model"]], chunks=s["chunks"], fps=s["fps"], commentary_tokens=s["commentary_tokens"],
                         device=s["device"], max_visual_tokens=s["max_visual_tokens"],
                         frame_size=tuple(s["source_size"]), questions=s["questions"], frame_side=s.get("frame_side"),
                         window=s["window"], progress=False)
    plot_realtime(res, out / "gpu_realtime.png")
    m = res["summary"][s["model"]]
    res["headline"] = {k: m[k] for k in ("sustained_fps", "per_token_latency_early_s", "per_token_latency_late_s",
                                         "per_token_late_over_early", "visual_tokens_per_chunk", "within_cap",
                                         "chunk_s_p50", "ttft_idle_p50_s", "ttft_mid_stream_p50_s")}
    res["build"] = {"model": s["model"], "bench_s": time.perf_counter() - t0, "peak_device_bytes": _peak()}
    return res


# ---- 2. pure ingest and its split -----------------------------------------------------------------------
def step_ingest(s: dict[str, Any], out: Path) -> dict[str, Any]:
    """Ingest FPS without commentary (same model and chunks as step 1); vision / prefill / bookkeeping split."""
    from vstream.bench.ingest import measure_ingest_split
    from vstream.config import from_name

    adapter, info = build(s["model"], s["device"])
    adapter, chunks, cap = _chunks(adapter, s)
    cfg = from_name("default").replace(**{"memory.window_chunks": s["window"], "memory.long_term": False})
    res = measure_ingest_split(adapter, cfg, chunks, progress=False)
    sm = res["summary"]
    rows = res["rows"]
    fig, ax = new_figure(figsize=(8, 4.5))
    x = [r["chunk"] for r in rows]
    bottom = [0.0] * len(rows)
    for k in ("vision_s", "prefill_s", "bookkeeping_s"):
        ys = [r[k] * 1000 for r in rows]
        ax.bar(x, ys, bottom=bottom, label=k[:-2])
        bottom = [b + y for b, y in zip(bottom, ys)]
    ax.set_xlabel("chunk")
    ax.set_ylabel("ms")
    ax.set_title(f"{s['model']}: ingest {sm['ingest_fps']:.1f} frames/s, {cap['visual_tokens_per_chunk']} vision tok/chunk")
    ax.legend()
    save_png(fig, out / "gpu_ingest.png")
    headline = {k: sm[k] for k in ("ingest_fps", "chunk_s_p50", "split_vision_s_p50", "split_prefill_s_p50",
                                   "split_bookkeeping_s_p50", "tokens_per_chunk")}
    return {**res, "cap": cap, "headline": headline, "build": {**info, "peak_device_bytes": _peak()}}


# ---- 3. TTFT with an hour of long-term memory -------------------------------------------------------------
def step_memory(s: dict[str, Any], out: Path) -> dict[str, Any]:
    """TTFT of a question with ~1 h of long-term entries on the disk tier vs with none."""
    from vstream.bench.memory_ttft import bench_ttft_entries

    res = bench_ttft_entries(s["model"], n_entries=s["entries"], device=s["device"], window=s["window"],
                             repeats=s["repeats"], progress=False, size=s["size"], frames=s["frames"],
                             chunk_seconds=s["chunk_seconds"], ram_bytes=s["ram_bytes"], quantize=s["quantize"],
                             add_budget_s=s["add_budget_s"])
    sm = res["summary"]
    fig, ax = new_figure(figsize=(6, 4))
    ax.boxplot([[t * 1000 for t in res["ttft_empty_s"]], [t * 1000 for t in res["ttft_full_s"]]])
    ax.set_xticks([1, 2], ["no long-term memory", f"{sm['entries']} entries ({sm['memory_hours']:.2f} h)"])
    ax.set_ylabel("time to first token (ms)")
    ax.set_title(s["model"])
    save_png(fig, out / "gpu_memory.png")
    res["headline"] = {"ttft_none_ms": sm["ttft_median_empty_s"] * 1000, "ttft_1h_ms": sm["ttft_median_full_s"] * 1000,
                       "entries": sm["entries"], "memory_hours": sm["memory_hours"], "ratio": sm["ratio"],
                       "tokens_per_entry": res["tokens_per_entry"]}
    res["build"] = {"model": s["model"], "peak_device_bytes": _peak()}
    return res


# ---- 4. the fleet -----------------------------------------------------------------------------------------
def step_fleet(s: dict[str, Any], out: Path) -> dict[str, Any]:
    """Batched Fleet over separate sessions at 1 / 4 / 16 streams."""
    from vstream.bench.fleet import bench_fleet, plot_fleet

    res = bench_fleet(tuple(s["streams"]), s["model"], s["chunks"], s["window"], s["size"], s["max_batch"],
                      s["device"], s["repeats"])
    plot_fleet(res, out / "gpu_fleet.png")
    res["headline"] = {f"speedup_{n}": res["summary"][str(n)]["speedup"] for n in s["streams"]}
    res["headline"].update({f"batched_chunks_per_s_{n}": res["summary"][str(n)]["batched_chunks_per_s"]
                            for n in s["streams"]})
    res["build"] = {"model": s["model"], "peak_device_bytes": _peak()}
    return res


# ---- 5. bf16 streaming vs one full HF forward -------------------------------------------------------------
def step_bf16(s: dict[str, Any], out: Path) -> dict[str, Any]:
    """Next-token logits after streaming ``chunks`` chunks (nothing evicted) vs HF's own full forward, both in
    ``dtype``: max |Δ logit| / max |logit|, and whether the top token agrees."""
    from vstream.config import from_name
    from vstream.engine.core import Engine

    adapter, info = build(s["model"], s["device"], s.get("dtype", "bfloat16"))
    adapter, chunks, cap = _chunks(adapter, s)
    cfg = from_name("default").replace(**{"memory.window_chunks": len(chunks) + 1, "memory.long_term": False})
    eng = Engine(adapter, cfg)
    eng.start()
    for ch in chunks:
        eng.ingest(ch)
    context_tokens = eng.memory.context_tokens
    with torch.inference_mode():
        _, _, logits, _, _ = eng.prepare(QUESTION, eng.snapshot())  # [1, V]
        stream = logits[0].float()
        del eng
        pieces = [adapter.system_text(cfg.system_prompt)] + [(c.marker, c.frames) for c in chunks] \
            + [adapter.question_text(QUESTION)]
        ref = adapter.reference_logits(pieces).float()  # [V]
    diff = (stream - ref).abs()
    scale = ref.abs().max().item()
    rel = diff.max().item() / scale if scale > 0 else float("inf")
    fig, ax = new_figure(figsize=(5, 5))
    idx = torch.linspace(0, ref.numel() - 1, min(ref.numel(), 5000)).long()
    ax.scatter(ref[idx].cpu(), stream[idx].cpu(), s=2)
    ax.set_xlabel("full HF forward logit")
    ax.set_ylabel("streaming engine logit")
    ax.set_title(f"{s['model']} {info['dtype']}: max|Δ|/max|logit| = {rel:.2e}")
    save_png(fig, out / "gpu_bf16.png")
    headline = {"max_abs_diff": diff.max().item(), "max_abs_logit": scale, "relative_error": rel,
                "bound": s["bound"], "within_bound": bool(rel <= s["bound"]),
                "top1_agrees": bool(int(stream.argmax()) == int(ref.argmax())),
                "context_tokens": context_tokens, "visual_tokens_per_chunk": cap["visual_tokens_per_chunk"]}
    return {"cap": cap, "headline": headline, "build": {**info, "peak_device_bytes": _peak()}}


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# ---- 6. 1080p H.264 file ingest over the decode bound ---------------------------------------------------
def step_pipeline(s: dict[str, Any], out: Path) -> dict[str, Any]:
    """A rendered 1080p H.264 clip: time to ingest it over the time to only decode it."""
    import shutil
    import tempfile

    try:
        from vstream.bench.pipeline import ingest_over_decode, render_clip
    except ImportError as e:
        return {"status": "skipped", "reason": f"the decode pipeline benchmark is not on this branch ({e})"}
    if shutil.which("ffmpeg") is None:  # renders the clip and times the decode bound
        return {"status": "skipped", "reason": "ffmpeg is not on PATH on this machine (it renders the clip and "
                                               "times the decode bound)"}
    if not any(_importable(m) for m in ("decord", "av")):
        return {"status": "skipped", "reason": "neither decord nor PyAV is installed here: no file source to ingest"}

    with tempfile.TemporaryDirectory(prefix="vstream-gpu-clip-") as tmp:
        clip = Path(tmp) / "clip_1080p.mp4"
        render_clip(str(clip), s["width"], s["height"], s["seconds"], fps=s["clip_fps"])
        res = ingest_over_decode(str(clip), model=s["model"], fps=s["fps"], device=s["device"])
    fig, ax = new_figure(figsize=(5, 4))
    ax.bar(["decode only", "decode + ingest"], [res["decode_s"], res["ingest_s"]])
    ax.set_ylabel("seconds")
    ax.set_title(f"{s['width']}x{s['height']} H.264, {s['seconds']} s: ratio {res['ratio']:.2f}")
    save_png(fig, out / "gpu_pipeline.png")
    return {"result": res, "headline": {k: res[k] for k in ("ingest_s", "decode_s", "ratio", "ratio_noref",
                                                             "decoded_on")},
            "build": {"model": s["model"], "peak_device_bytes": _peak()}}


# ---- 7. answer decoding: dynamic cache, static cache, CUDA graphs -----------------------------------------
def step_decode(s: dict[str, Any], out: Path) -> dict[str, Any]:
    """Per-token latency of an answer with ``generation.decode`` = dynamic / static / graphs, and whether
    the greedy words agree (no stop token: every answer runs its whole budget)."""
    import statistics

    from vstream.config import from_name
    from vstream.engine.core import Engine

    adapter, info = build(s["model"], s["device"])
    adapter, chunks, cap = _chunks(adapter, s)
    cls = type(adapter)
    adapter.__class__ = type(f"{cls.__name__}NoStop", (cls,), {"eos_token_ids": property(lambda self: [])})
    rows: dict[str, Any] = {}
    for mode in ("dynamic", "static", "graphs"):
        cfg = from_name("default").replace(**{"memory.window_chunks": s["window"], "memory.long_term": False,
                                              "generation.temperature": 0.0, "generation.decode": mode})
        eng = Engine(adapter, cfg)
        eng.start()
        for ch in chunks:
            eng.ingest(ch)
        snap = eng.snapshot()
        eng.answer(QUESTION, snap, max_new_tokens=4)  # warm-up (and, for graphs, the capture)
        per_token, ans = [], None
        for _ in range(s["repeats"]):
            sync()
            ans = eng.answer(QUESTION, snap, max_new_tokens=s["tokens"])
            sync()
            per_token.append((ans.latency_s - ans.ttft_s) / max(1, ans.tokens - 1))
        dec = eng.static_decoders.get("answer")
        rows[mode] = {"ms_per_token_p50": 1000 * statistics.median(per_token), "tokens": ans.tokens,
                      "token_ids": ans.token_ids, "context_tokens": eng.memory.context_tokens,
                      "graph_captures": dec.captures if dec is not None else 0,
                      "graph_failed": bool(dec.graph_failed) if dec is not None else False}
    ref = rows["dynamic"]["token_ids"]

    def agree(ids: list[int]) -> int:  # leading words equal to the dynamic path's
        return next((i for i, (x, y) in enumerate(zip(ids, ref)) if x != y), min(len(ids), len(ref)))

    fig, ax = new_figure(figsize=(5, 4))
    ax.bar(list(rows), [r["ms_per_token_p50"] for r in rows.values()])
    ax.set_ylabel("ms per token (median)")
    ax.set_title(f"{s['model']}: answer decoding, {rows['dynamic']['context_tokens']} context tokens")
    save_png(fig, out / "gpu_decode.png")
    dyn = rows["dynamic"]["ms_per_token_p50"]
    headline = {"dynamic_ms_per_token": dyn, "static_ms_per_token": rows["static"]["ms_per_token_p50"],
                "graphs_ms_per_token": rows["graphs"]["ms_per_token_p50"],
                "graphs_speedup": dyn / rows["graphs"]["ms_per_token_p50"],
                "graph_captured": rows["graphs"]["graph_captures"] > 0,
                "static_words_agree": agree(rows["static"]["token_ids"]),
                "graphs_words_agree": agree(rows["graphs"]["token_ids"]), "tokens": s["tokens"]}
    return {"rows": rows, "cap": cap, "headline": headline, "settings": s,
            "build": {**info, "peak_device_bytes": _peak()}}


STEPS: dict[str, Callable[[dict[str, Any], Path], dict[str, Any]]] = {
    "realtime": step_realtime, "ingest": step_ingest, "memory": step_memory, "fleet": step_fleet,
    "bf16": step_bf16, "pipeline": step_pipeline, "decode": step_decode}


def main(argv: list[str]) -> int:
    """``NAME SETTINGS_JSON OUT``: run one step, write ``OUT/gpu_NAME.json``; exit 0 (ok or skipped)."""
    if len(argv) != 3 or argv[0] not in STEPS:
        raise SystemExit(f"usage: python -m vstream.bench.gpu_steps {{{','.join(STEPS)}}} SETTINGS_JSON OUT")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    name, settings, out = argv[0], json.loads(argv[1]), Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = STEPS[name](settings, out)
    res.setdefault("status", "ok")
    res.update(bench=f"gpu_{name}", step=name, settings=settings, env=environment(),
               step_wall_s=time.perf_counter() - t0)
    write_json(res, out, f"gpu_{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
