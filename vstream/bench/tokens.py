"""`vstream bench tokens`: what token drop saves, and what each cold-tier format stores per hour.

1. **Token drop** (``memory.token_drop``). Per source (the synthetic static-camera scene, the shared real
   clips, the sample video) the chunks are decoded once; then every chunk goes, in turn, through one engine
   per setting (drop off and each threshold), so all settings see the same machine load in one run.
   Reported per setting: the kept share of visual tokens, chunk latency (p50 and its ratio to drop off),
   and the KV bytes per hour the live memory fills at the model's shape (bf16, the cold tier's input).
2. **KV bytes per hour at 7B shapes** (LLaVA-OneVision-7B, Qwen2.5-VL-7B) for every cold-tier format, from
   the bytes the store's codecs really produce for one entry's tensors (scales, masks and padding included),
   without token drop and with the kept shares measured in (1).
3. **Which key channels get 1 bit** (k2v1.58). On one source, the live window's vision K/V are replaced by
   their quantised copies and the next-token distribution for a question is compared with full precision:
   keys only (values exact) with the 1-bit half chosen by smallest range (the tier's rule), at random, or by
   largest range, plus all-2-bit keys and the whole k2v1.58 / k4v2 tiers. Random-weight models: this shows
   the rule's effect on real attention arithmetic over real video features, not accuracy on a benchmark.
"""
from __future__ import annotations

import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vstream.bench.common import new_figure, save_png, sync

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (0.95, 0.9, 0.8, 0.7)
QUESTIONS = ("What is happening in the video?", "What changed in the last seconds?", "Describe the scene.")
#: Published text-model shapes and the tokens a stream adds (the adapters' defaults; ReKV's 0.5 fps for LLaVA-OV).
SHAPES_7B = (
    {"name": "llava-onevision-7b", "layers": 28, "kv_heads": 4, "head_dim": 128, "tokens_per_frame": 196, "fps": 0.5},
    {"name": "qwen2.5-vl-7b", "layers": 28, "kv_heads": 4, "head_dim": 128, "tokens_per_frame": 128, "fps": 2.0},
)
FORMATS = ("none", "int8", "int4", "k4v2", "k2v1.58")


def static_scene(duration_s: float, fps: float, size: tuple[int, int] = (320, 240), seed: int = 3):
    """A fixed camera: still background and caption, a clock overlay, one object crossing mid-stream."""
    from vstream.sources import SyntheticSource

    events = [{"kind": "shape", "shape": "circle", "color": "red", "pos": (0.15, 0.55), "size": 0.16,
               "velocity": (0.12, 0.0), "start_s": 0.4 * duration_s, "end_s": 0.7 * duration_s}]
    return SyntheticSource(seed=seed, duration_s=duration_s, fps=fps, size=size, n_shapes=0, events=events,
                           caption="LOBBY CAM 2")


def load_chunks(adapter, spec: Any, fps: float, max_chunks: int, chunk_seconds: float = 1.0) -> list:
    """Decode ``spec`` (a path or a source) into chunks the way a session does (sampler + chunker)."""
    from vstream.sources import Chunker, Sampler, open_source

    adapter.configure_sampling(fps)
    src = open_source(spec)
    try:
        chunker = Chunker(chunk_seconds, frames_per_chunk=adapter.frames_per_chunk(fps, chunk_seconds))
        out = []
        for ch in chunker(Sampler(fps)(iter(src))):
            out.append(ch)
            if len(out) >= max_chunks:
                break
    finally:
        src.close()
    if not out:
        raise ValueError(f"{spec} gave no chunks at {fps} fps")
    return out


def _engine(adapter, threshold: float | None, floor: float, window: int):
    from vstream.config import from_name
    from vstream.engine.core import Engine

    cfg = from_name("default").replace(**{"memory.window_chunks": window, "memory.long_term": False,
                                          "memory.token_drop": threshold, "memory.token_drop_floor": floor})
    eng = Engine(adapter, cfg)
    eng.start()
    return eng


def run_drop(adapter, chunks: Sequence, thresholds: Sequence[float], floor: float, window: int,
             chunk_seconds: float = 1.0, repeats: int = 1) -> list[dict[str, Any]]:
    """One engine per setting, chunks fed round-robin; a row per setting (threshold None = drop off).

    ``repeats`` runs the stream again on fresh engines (same decisions, more latency samples: the
    per-chunk on/off ratios of all repeats are pooled).
    """
    settings: list[float | None] = [None] + list(thresholds)
    _engine(adapter, None, floor, window).ingest(chunks[0])  # warm-up (first-call costs) outside the figures
    lat: list[list[float]] = [[] for _ in settings]
    cpu: list[list[float]] = [[] for _ in settings]  # process CPU seconds per chunk: steadier on a shared machine
    tokens: list[list[int]] = [[] for _ in settings]
    kept = [0] * len(settings)
    dropped = [0] * len(settings)
    for r in range(max(1, repeats)):
        engines = [_engine(adapter, t, floor, window) for t in settings]
        for i, ch in enumerate(chunks):
            order = list(range(len(settings)))
            if (i + r) % 2:
                order.reverse()  # no setting always runs right after the same one
            for j in order:
                sync()
                c0 = time.process_time()
                rep = engines[j].ingest(ch)
                sync()
                cpu[j].append(time.process_time() - c0)
                lat[j].append(rep.latency_s)
                if r == 0:
                    tokens[j].append(rep.n_tokens)
                    kept[j] += rep.visual_kept
                    dropped[j] += rep.visual_dropped
    per_token = adapter.kv_bytes_per_token(torch.bfloat16)
    base_p50 = statistics.median(lat[0])
    base_tokens = statistics.fmean(tokens[0])
    rows = []
    for j, t in enumerate(settings):
        p50 = statistics.median(lat[j])
        ratios = [a / b for a, b in zip(lat[j], lat[0])]
        cpu_ratios = [a / b for a, b in zip(cpu[j], cpu[0]) if b > 0]
        toks = statistics.fmean(tokens[j])
        rows.append({"threshold": t, "chunks": len(chunks), "visual_kept": kept[j], "visual_dropped": dropped[j],
                     "kept_share": kept[j] / max(1, kept[j] + dropped[j]),
                     "latency_p50_s": p50, "latency_ratio_p50": p50 / base_p50,
                     "latency_ratio_median_per_chunk": statistics.median(ratios),
                     "cpu_s_p50": statistics.median(cpu[j]),
                     "cpu_ratio_median_per_chunk": statistics.median(cpu_ratios) if cpu_ratios else None,
                     "tokens_per_chunk": toks, "tokens_ratio": toks / base_tokens,
                     "kv_bytes_per_hour_bf16": toks * per_token * 3600.0 / chunk_seconds})
    return rows


def unrelated_similarity(adapter, chunk_sets: Sequence[Sequence]) -> float:
    """Mean cosine similarity of same-cell visual tokens between the first frames of different sources.

    What "different picture" looks like to this model: with random weights the projector's output shares a
    large common direction, so unrelated frames can sit above a threshold a real checkpoint would use.
    """
    firsts = []
    for chunks in chunk_sets:
        t = adapter.embed_chunk(chunks[0].marker, chunks[0].frames)
        frame, cell, _ = adapter.visual_cells(t)
        m = frame == 0
        order = torch.argsort(cell[m])
        firsts.append(t.inputs_embeds[0][m][order].float())  # [C, D] in cell order
    sims = [float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())
            for i, a in enumerate(firsts) for b in firsts[i + 1:] if a.shape == b.shape]
    return statistics.fmean(sims) if sims else float("nan")


# ---- KV bytes per hour per cold-tier format ---------------------------------------------------------------

def entry_kv_bytes(quantize: str, layers: int, kv_heads: int, head_dim: int, tokens: int) -> int:
    """K+V bytes one entry of ``tokens`` tokens takes in the store's cold tier ``quantize`` (bf16 when none)."""
    from memory import quant
    from memory.store_format import quant_bits

    kbits, vbits = quant_bits(quantize)
    t = torch.randn(1, kv_heads, tokens, head_dim, generator=torch.Generator().manual_seed(0))
    total = 0
    for bits in (kbits, vbits):
        total += (quant.nbytes(quant.quantize(t, bits)) if bits else t.numel() * 2) * layers
    return total


def kv_per_hour(shape: dict, quantize: str, kept_share: float = 1.0) -> dict[str, Any]:
    """Bytes per hour at ``shape`` when ``kept_share`` of the visual tokens are stored (one entry per chunk:
    ``tokens_per_frame * max(1, fps)`` tokens before dropping, as the memory bench counts)."""
    per_entry = shape["tokens_per_frame"] * max(1.0, shape["fps"])
    entries_per_hour = shape["tokens_per_frame"] * shape["fps"] * 3600.0 / per_entry
    tokens = max(1, round(per_entry * kept_share))
    b = entry_kv_bytes(quantize, shape["layers"], shape["kv_heads"], shape["head_dim"], tokens) * entries_per_hour
    return {"model": shape["name"], "quantize": quantize, "kept_share": kept_share, "entry_tokens": tokens,
            "bytes_per_hour": int(b), "gib_per_hour": b / 2 ** 30,
            "bits_per_element": 8 * b / entries_per_hour / (2 * shape["layers"] * shape["kv_heads"]
                                                            * shape["head_dim"] * tokens)}


# ---- which key channels get 1 bit ----------------------------------------------------------------------------

def _quantised_copy(seg, keys_fn, values_fn):
    from memory.segment import Segment

    return Segment(kind=seg.kind, keys=tuple(keys_fn(k) for k in seg.keys),
                   values=tuple(values_fn(v) for v in seg.values), rel_pos=seg.rel_pos, start_s=seg.start_s,
                   end_s=seg.end_s, chunk_index=seg.chunk_index)


def channel_choice(adapter, chunks: Sequence, window: int) -> list[dict[str, Any]]:
    """Next-token distribution error when the window's vision K/V are quantised, per channel rule."""
    from memory import quant
    from memory.manager import fill_cache, place
    from memory.segment import VISION
    from vstream.engine.generate import prefill

    eng = _engine(adapter, None, 0.1, window)
    for ch in chunks[:window]:
        eng.ingest(ch)
    segs = eng.memory.segments()
    dt = adapter.dtype

    def keys_rule(choose: str, fraction: float):
        def f(k):
            one = quant.one_bit_channels(k, fraction, choose)
            return quant.dequantize(quant.quantize_keys_2_1(k, one), dt)
        return f

    def same(x):
        return x

    def deq(bits):
        return lambda x: quant.dequantize(quant.quantize(x, bits), dt)

    rules = {
        "keys 2-bit, 1-bit half = smallest range (k2v1.58 rule)": (keys_rule("smallest", 0.5), same),
        "keys 2-bit, 1-bit half = random": (keys_rule("random", 0.5), same),
        "keys 2-bit, 1-bit half = largest range": (keys_rule("largest", 0.5), same),
        "keys all 2-bit": (keys_rule("smallest", 0.0), same),
        "k2v1.58 (keys as above, ternary values)": (keys_rule("smallest", 0.5), deq(quant.TERNARY5)),
        "k4v2 (int4 keys, ternary values)": (deq(4), deq(2)),
    }

    def logits_for(segments, question):
        keys, values, pos = place(segments, adapter.rotate_keys)
        cache = fill_cache(adapter.new_cache(), keys, values)
        q = adapter.embed_text(adapter.question_text(question))
        with torch.inference_mode():
            return prefill(adapter, cache, q, pos)[0].float()  # [V]

    refs = {q: logits_for(segs, q) for q in QUESTIONS}
    rows = []
    for name, (kf, vf) in rules.items():
        qsegs = [_quantised_copy(s, kf, vf) if s.kind == VISION else s for s in segs]
        kl, dmax, top1 = [], [], 0
        for q in QUESTIONS:
            lg = logits_for(qsegs, q)
            p, lq = torch.log_softmax(refs[q], -1), torch.log_softmax(lg, -1)
            kl.append(float((p.exp() * (p - lq)).sum()))
            dmax.append(float((lg - refs[q]).abs().max()))
            top1 += int(lg.argmax() == refs[q].argmax())
        rows.append({"rule": name, "kl_mean": statistics.fmean(kl), "max_abs_logit_diff": max(dmax),
                     "top1_agree": top1 / len(QUESTIONS)})
    return rows


# ---- the whole benchmark ---------------------------------------------------------------------------------------

def default_sources(repo: Path, clips_dir: Path, static_s: float, fps: float) -> list[tuple[str, Any]]:
    """(name, spec) of the four sources; missing real clips are skipped with a warning."""
    out: list[tuple[str, Any]] = [("static scene (synthetic)", ("static", static_s, fps))]
    for name in ("mmduet_drive.mp4", "mmduet_office.mp4"):
        p = clips_dir / name
        if p.is_file():
            out.append((name.replace(".mp4", ""), str(p)))
        else:
            logger.warning("real clip %s not found; skipped (give --clips DIR)", p)
    sample = repo / "data" / "sample.mp4"
    if sample.is_file():
        out.append(("sample.mp4", str(sample)))
    return out


def bench_tokens(models: Sequence[str], sources: Sequence[tuple[str, Any]],
                 thresholds: Sequence[float] = DEFAULT_THRESHOLDS, floor: float = 0.1, window: int = 16,
                 fps: float = 2.0, max_chunks: int = 60, device: str = "auto", choice_source: int = 1,
                 repeats: int = 1) -> dict[str, Any]:
    """Run all three parts (see the module docstring); returns the JSON-ready result.

    Token drop runs for every model in ``models``; the channel-choice part on the first one.
    """
    from vstream.models.registry import load_model

    t0 = time.perf_counter()
    per_source = []
    choice = None
    pick = 0
    for mi, model in enumerate(models):
        adapter = load_model(model, device=device)
        chunk_sets = []
        for name, spec in sources:
            if isinstance(spec, tuple) and spec[0] == "static":
                spec = static_scene(spec[1], spec[2])
            chunks = load_chunks(adapter, spec, fps, max_chunks)
            chunk_sets.append(chunks)
            logger.info("token drop, %s on %s: %d chunks", model, name, len(chunks))
            rows = run_drop(adapter, chunks, thresholds, floor, window, repeats=repeats)
            per_source.append({"model": model, "family": adapter.family, "source": name, "rows": rows})
        for ps in per_source[-len(sources):]:
            ps["unrelated_frames_cosine"] = unrelated_similarity(adapter, chunk_sets)
        if mi == 0:
            pick = min(choice_source, len(chunk_sets) - 1)
            choice = channel_choice(adapter, chunk_sets[pick], min(window, len(chunk_sets[pick])))
    kv = []
    for shape in SHAPES_7B:
        for fmt in FORMATS:
            kv.append({**kv_per_hour(shape, fmt), "source": None, "threshold": None, "measured_on": None})
            for ps in per_source:
                by_t = {r["threshold"]: r["kept_share"] for r in ps["rows"]}
                t = 0.9 if 0.9 in by_t else thresholds[0]
                kv.append({**kv_per_hour(shape, fmt, by_t[t]), "source": ps["source"], "threshold": t,
                           "measured_on": ps["model"]})
    return {"bench": "tokens", "models": list(models), "fps": fps, "window": window, "floor": floor,
            "thresholds": list(thresholds), "repeats": repeats, "token_drop": per_source, "kv_per_hour_7b": kv,
            "channel_choice": {"model": models[0], "source": sources[pick][0], "rows": choice},
            "seconds": time.perf_counter() - t0}


def plot_tokens(res: dict[str, Any], path: Path) -> None:
    """Kept share and latency ratio vs threshold per source; GiB/h per format at 7B shapes; channel rules."""
    fig, ax = new_figure(2, 2, figsize=(13, 9))
    styles = ("-", "--", ":", "-.")
    colors = {}
    for ps in res["token_drop"]:
        rows = [r for r in ps["rows"] if r["threshold"] is not None]
        ts = [r["threshold"] for r in rows]
        ls = styles[res["models"].index(ps["model"]) % len(styles)]
        color = colors.setdefault(ps["source"], f"C{len(colors)}")
        label = f"{ps['source']} ({ps['model']})"
        ax[0, 0].plot(ts, [100 * r["kept_share"] for r in rows], marker="o", ls=ls, color=color, label=label)
        ax[0, 1].plot(ts, [r["latency_ratio_median_per_chunk"] for r in rows], marker="o", ls=ls, color=color,
                      label=label)
    ax[0, 0].set(xlabel="threshold (cosine similarity)", ylabel="visual tokens kept (%)",
                 title="token drop: kept share of visual tokens")
    ax[0, 1].axhline(1.0, color="gray", lw=0.8)
    ax[0, 1].set(xlabel="threshold (cosine similarity)", ylabel="chunk latency, drop on / off (median per chunk)",
                 title="token drop: chunk latency ratio (same run, interleaved)")
    for a in (ax[0, 0], ax[0, 1]):
        a.invert_xaxis()
        a.legend(fontsize=6)
    kv = res["kv_per_hour_7b"]
    models = [s["name"] for s in SHAPES_7B]
    width = 0.38
    x = np.arange(len(FORMATS))
    for i, m in enumerate(models):
        vals = [next(r["gib_per_hour"] for r in kv if r["model"] == m and r["quantize"] == f and r["source"] is None)
                for f in FORMATS]
        bars = ax[1, 0].bar(x + (i - 0.5) * width, vals, width, label=m)
        ax[1, 0].bar_label(bars, fmt="%.2f", fontsize=7)
    ax[1, 0].axhline(1.0, color="red", lw=0.8, ls="--", label="1 GiB/h")
    ax[1, 0].set_yscale("log")
    ax[1, 0].set(xticks=x, xticklabels=FORMATS, ylabel="GiB per hour (log)",
                 title="cold tier KV per hour at 7B shapes (no token drop)")
    ax[1, 0].legend(fontsize=8)
    ch = res["channel_choice"]["rows"]
    ax[1, 1].barh([r["rule"] for r in ch], [r["kl_mean"] for r in ch], color="tab:purple")
    ax[1, 1].invert_yaxis()
    ax[1, 1].set_xscale("log")
    ax[1, 1].tick_params(axis="y", labelsize=7)
    ax[1, 1].set(xlabel="KL(full precision || quantised), next token (log)",
                 title=f"key channels at 1 bit ({res['channel_choice']['source']})")
    save_png(fig, path)


def summary(res: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers: kept share and latency ratio at each threshold per source; GiB/h per format."""
    out: dict[str, Any] = {}
    for ps in res["token_drop"]:
        out[f"{ps['model']} / {ps['source']}"] = {
            str(r["threshold"]): {"kept": round(r["kept_share"], 3), "latency": round(r["latency_ratio_median_per_chunk"], 3),
                                  "cpu": round(r["cpu_ratio_median_per_chunk"] or float("nan"), 3)}
            for r in ps["rows"] if r["threshold"] is not None}
    out["gib_per_hour"] = {f"{r['model']} {r['quantize']}": round(r["gib_per_hour"], 3)
                           for r in res["kv_per_hour_7b"] if r["source"] is None}
    return out


def default_clips_dir(repo: Path) -> Path:
    """The shared real clips next to the repository (``../shared/data/real_clips``)."""
    return repo.parent / "shared" / "data" / "real_clips"


def _repo() -> Path:
    return Path(__file__).resolve().parents[2]


def main_args(args) -> dict[str, Any]:
    """Run from parsed ``vstream bench tokens`` arguments."""
    repo = _repo()
    clips = Path(args.clips) if args.clips else default_clips_dir(repo)
    sources = default_sources(repo, clips, args.static_seconds, args.fps)
    thresholds = tuple(float(t) for t in args.thresholds.split(",") if t)
    if not thresholds or any(not -1 <= t <= 1 for t in thresholds):
        raise ValueError(f"--thresholds must be cosine similarities in [-1, 1], got {args.thresholds!r}")
    if not math.isfinite(args.floor) or not 0 <= args.floor <= 1:
        raise ValueError(f"--floor must be in [0, 1], got {args.floor}")
    models = [m for m in args.models.split(",") if m]
    if not models:
        raise ValueError("--models needs at least one model preset, e.g. small-llava-onevision")
    return bench_tokens(models, sources, thresholds, args.floor, args.window, args.fps, args.max_chunks,
                        args.device, repeats=args.repeats)
