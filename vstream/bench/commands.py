"""The ``vstream bench`` sub-parser and its three commands; each writes JSON (and a PNG) under ``--out``
and prints where, with the headline numbers, as JSON on stdout.

The benchmark modules are imported when a command runs, so building the parser stays cheap.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    """Add ``bench`` with ``ingest``, ``memory``, ``realtime``, ``fleet``, ``asr``, ``tokens``, ``ops``,
    ``pipeline``, ``gpu`` and ``serve`` to ``sub`` (argparse sub-parsers)."""
    b = sub.add_parser("bench", help="efficiency benchmarks -> JSON + PNG")
    bs = b.add_subparsers(dest="bench", required=True)
    i = bs.add_parser("ingest", help="per-chunk latency/memory: engine vs full attention vs recompute")
    i.add_argument("--model", default="small-llava-onevision")
    i.add_argument("--chunks", type=int, default=1000)
    i.add_argument("--recompute-chunks", type=int, default=200,
                   help="chunks for the recompute baseline (its per-chunk cost is flat once the window is full)")
    i.add_argument("--window", type=int, default=16)
    i.add_argument("--frames", type=int, default=2, help="frames per chunk")
    i.add_argument("--size", type=int, default=None, help="frame side in pixels (default: the model's)")
    i.add_argument("--modes", default="engine,full,recompute")
    i.add_argument("--full-max-chunks", type=int, default=None, help="stop full attention early (it grows)")
    _finish(i, _cli_ingest)
    m = bs.add_parser("memory", help="FAISS latency, KV bytes per hour, TTFT with 0 vs N stored entries")
    m.add_argument("--model", default="small-llava-onevision", help="model for the TTFT comparison")
    m.add_argument("--sizes", default="10000,100000", help="index sizes; add 1000000 for the 1M figure (slow build)")
    m.add_argument("--entries", type=int, default=10_000, help="stored entries for the TTFT comparison")
    _finish(m, _cli_memory)
    r = bs.add_parser("realtime", help="sustained FPS with commentary; TTFT mid-stream vs idle")
    r.add_argument("--models", default="tiny-qwen2.5-vl,tiny-llava-onevision,tiny-smolvlm")
    r.add_argument("--chunks", type=int, default=60)
    r.add_argument("--fps", type=float, default=2.0)
    r.add_argument("--commentary-tokens", type=int, default=20)
    r.add_argument("--max-visual-tokens", type=int, default=None, help="cap visual tokens per chunk (frame size)")
    _finish(r, _cli_realtime)
    t = bs.add_parser("tokens", help="token drop: kept share, latency, KV/h; cold-tier KV/h at 7B shapes")
    t.add_argument("--models", default="small-llava-onevision,tiny-smolvlm,tiny-qwen2.5-vl",
                   help="token drop runs per model; the channel-choice part on the first")
    t.add_argument("--clips", default=None, help="folder with mmduet_drive.mp4 and mmduet_office.mp4 "
                                                 "(default: ../shared/data/real_clips from the repository)")
    t.add_argument("--thresholds", default="0.95,0.9,0.8,0.7")
    t.add_argument("--floor", type=float, default=0.1, help="memory.token_drop_floor")
    t.add_argument("--window", type=int, default=16)
    t.add_argument("--fps", type=float, default=2.0)
    t.add_argument("--static-seconds", type=float, default=60.0, help="length of the synthetic static scene")
    t.add_argument("--max-chunks", type=int, default=60, help="chunks per source at most")
    t.add_argument("--repeats", type=int, default=3, help="fresh runs per source (more latency samples)")
    _finish(t, _cli_tokens)
    a = bs.add_parser("asr", help="speech recognition: real-time factor, WER, perception latency ASR on/off")
    a.add_argument("video", nargs="?", default="data/lecture.mp4")
    a.add_argument("--asr-model", default="default", help="faster-whisper model: default (tiny.en), name or dir")
    a.add_argument("--vad", default="silero")
    a.add_argument("--model", default="tiny-qwen2.5-vl", help="VLM for the perception latency ratio")
    a.add_argument("--fps", type=float, default=2.0)
    _finish(a, _cli_asr, device="cpu")
    f = bs.add_parser("fleet", help="many streams: batched Fleet vs separate sessions (chunks/s, latency, memory)")
    f.add_argument("--streams", default="1,2,4,8,16", help="stream counts")
    f.add_argument("--model", default="small-llava-onevision")
    f.add_argument("--chunks", type=int, default=24, help="chunks per stream")
    f.add_argument("--window", type=int, default=8)
    f.add_argument("--size", type=int, default=64, help="synthetic frame side in pixels")
    f.add_argument("--max-batch", type=int, default=16)
    f.add_argument("--repeats", type=int, default=3, help="runs per stream count and mode (median reported)")
    _finish(f, _cli_fleet)
    o = bs.add_parser("ops", help="aten ops per chunk outside the model vs inside the prefill, against W")
    o.add_argument("--model", default="small-llava-onevision")
    o.add_argument("--windows", default="8,16,32", help="window sizes W (chunks)")
    o.add_argument("--layers", default="8,16", help="language-model layer counts (random presets are cut or "
                                                    "repeated to each)")
    o.add_argument("--chunks", type=int, default=3, help="chunks counted per point, after the window is full")
    _finish(o, _cli_ops, device="cpu")
    g = bs.add_parser("gpu", help="the whole GPU suite in one run (9 min on one H100); --smoke: tiny presets on CPU")
    g.add_argument("--smoke", action="store_true", help="the same steps and code paths with tiny presets on CPU")
    g.add_argument("--only", default=None, help="comma-separated steps: realtime,ingest,memory,fleet,bf16,pipeline")
    g.add_argument("--budget", type=float, default=None, help="the whole suite's time budget in seconds "
                                                               "(default 540; 115 with --smoke)")
    g.add_argument("--budget-scale", type=float, default=1.0,
                   help="multiply every step's budget (and the suite's, unless --budget) by this: a shared machine")
    g.add_argument("--device", default="auto", help="auto (cuda; cpu with --smoke), cpu or cuda[:N]")
    g.add_argument("--out", default="bench_out/gpu")
    g.set_defaults(func=_cli_gpu)
    pl = bs.add_parser("pipeline", help="real H.264 clips end to end: ingest time over ffmpeg's decode time")
    pl.add_argument("--sizes", default="720p,1080p", help="clip sizes: 720p, 1080p")
    pl.add_argument("--seconds", type=float, default=180.0, help="clip length (the issue's runs: 120-300)")
    pl.add_argument("--model", default="tiny-smolvlm")
    pl.add_argument("--fps", type=float, default=1.0)
    pl.add_argument("--repeats", type=int, default=3, help="ingest runs per clip (each between two ffmpeg runs)")
    pl.add_argument("--threads", type=int, default=None, help="cores for ffmpeg and torch (default: all)")
    pl.add_argument("--ops-windows", default="8,16,32", help="W values for the ops-per-chunk part ('none': skip it)")
    pl.add_argument("--ops-layers", default="8,16", help="layer counts for the ops-per-chunk part")
    _finish(pl, _cli_pipeline, device="cpu")
    from vstream.bench.serve import add_parser as add_serve_parser

    add_serve_parser(bs)


def _finish(p: argparse.ArgumentParser, func: Any, device: str = "auto") -> None:
    """The options every benchmark has (--device, --out) and the function that runs it."""
    p.add_argument("--device", default=device)
    p.add_argument("--out", default="bench_out")
    p.set_defaults(func=func)


def run_cli(args: argparse.Namespace) -> int:
    """Run the parsed ``vstream bench`` command; returns the exit code."""
    return int(args.func(args) or 0)


def _report(fields: dict[str, Any]) -> None:
    print(json.dumps(fields, indent=1))  # the command's output (this is the CLI layer)


def _save(res: dict, out_dir: str, name: str, plot: Any, **fields: Any) -> int:
    """Write ``res`` as ``<out_dir>/<name>.json`` and ``plot(res, path)`` as ``<name>.png``; report both
    paths with ``fields``. Returns the exit code 0."""
    from vstream.bench.common import write_json

    out = Path(out_dir)
    p = write_json(res, out, name)
    png = out / f"{name}.png"
    plot(res, png)
    _report({"json": str(p), "png": str(png), **fields})
    return 0


def _cli_ingest(args: argparse.Namespace) -> int:
    from vstream.bench.ingest import bench_ingest, plot_ingest

    res = bench_ingest(args.model, args.chunks, args.window, args.frames, args.size,
                       tuple(m for m in args.modes.split(",") if m), args.device, args.full_max_chunks,
                       args.recompute_chunks)
    return _save(res, args.out, "ingest", plot_ingest, summary=res["summary"])


def _cli_memory(args: argparse.Namespace) -> int:
    from eval import bench_memory
    from vstream.bench.common import environment, write_json
    from vstream.bench.memory_ttft import bench_ttft_entries

    res: dict[str, Any] = {"bench": "memory", "env": environment()}
    sizes = tuple(int(s) for s in args.sizes.split(",") if s)
    res["faiss"] = bench_memory.faiss_latency(sizes=sizes)
    res["kv_bytes_per_hour"] = bench_memory.kv_table()
    res["ttft"] = bench_ttft_entries(args.model, n_entries=args.entries, device=args.device)
    p = write_json(res, Path(args.out), "memory")
    _report({"json": str(p), "ttft": res["ttft"]["summary"]})
    return 0


def _cli_realtime(args: argparse.Namespace) -> int:
    from vstream.bench.common import environment
    from vstream.bench.realtime import bench_realtime, plot_realtime

    res = bench_realtime([m for m in args.models.split(",") if m], chunks=args.chunks, fps=args.fps,
                         commentary_tokens=args.commentary_tokens, device=args.device,
                         max_visual_tokens=args.max_visual_tokens)
    res["env"] = environment()
    return _save(res, args.out, "realtime", plot_realtime, summary=res["summary"])


def _cli_tokens(args: argparse.Namespace) -> int:
    from vstream.bench.common import environment
    from vstream.bench.tokens import main_args, plot_tokens, summary

    res = main_args(args)
    res["env"] = environment()
    return _save(res, args.out, "tokens", plot_tokens, summary=summary(res))


def _cli_asr(args: argparse.Namespace) -> int:
    from vstream.bench.asr import bench_asr, bench_latency, plot_asr
    from vstream.bench.common import environment
    from vstream.config import ASRConfig

    cfg = ASRConfig(model=args.asr_model, vad=args.vad).check()
    res = bench_asr(args.video, config=cfg)
    res["bench"] = "asr"
    res["latency"] = bench_latency(args.video, args.model, cfg, device=args.device, fps=args.fps)
    res["env"] = environment()
    lat = res["latency"]
    return _save(res, args.out, "asr", plot_asr, rtf=res["rtf"], wer=res["wer"],
                 timestamp_error_s=res["timestamp_error_s"], latency_ratio_p50=lat["ratio_p50"],
                 latency_p50_off_s=lat["off"]["p50_s"], latency_p50_on_s=lat["on"]["p50_s"])


def _cli_ops(args: argparse.Namespace) -> int:
    from vstream.bench.ops import bench_ops, parse_ints, plot_ops

    windows, layers = parse_ints(args.windows, "--windows"), parse_ints(args.layers, "--layers")
    if args.chunks < 1:
        raise ValueError(f"--chunks must be >= 1, got {args.chunks}")
    res = bench_ops(args.model, windows, layers, args.chunks, device=args.device)
    return _save(res, args.out, "ops", plot_ops, summary=res["summary"])


def _cli_gpu(args: argparse.Namespace) -> int:
    from vstream.bench.gpu import main_args

    res = main_args(args)
    _report(res)
    return 0 if res["counts"]["failed"] == 0 else 1


def _cli_fleet(args: argparse.Namespace) -> int:
    from vstream.bench.fleet import run

    _report(run(args))
    return 0


def _cli_pipeline(args: argparse.Namespace) -> int:
    from vstream.bench.pipeline import run

    _report(run(args))
    return 0
