"""`vstream eval ...`: the argparse sub-parser and its entry point (mounted by vstream/cli/main.py).

    vstream eval streamingbench BENCH.json --out runs/sb --model M [--video-root DIR] [--limit N] [--resume]
    vstream eval ovobench BENCH.json --out runs/ovo ...
    vstream eval rvs BENCH.json --out runs/rvs-ego --judge-url URL --judge-model NAME ...
    vstream eval infstreams METADATA.jsonl --out runs/inf [--start-time 1000] [--windows W.jsonl --judge-url ...]
    vstream eval infstreams-judge MERGED.jsonl WINDOWS.jsonl --out runs/inf [--other OTHER_MERGED.jsonl] ...
    vstream eval synthetic --out runs/syn --model tiny-smolvlm [--videos 3] [--long-videos 1]
    vstream eval report bench_out/ingest.json [more.json ...] --out reports/
    vstream eval score ovobench results/LongVU/ [--out DIR]     (official numbers from official result files)

Every run follows the benchmark's official protocol unless ``--protocol vstream`` is given; every
summary names the protocol (and, for StreamingBench, the context: --context-seconds 60 or the whole stream).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _common(p: argparse.ArgumentParser, *, model: bool = True, run: bool = True) -> None:
    if model:
        g = p.add_argument_group("model")
        g.add_argument("--model", default=None, help="preset (tiny-smolvlm ...), hub id or local checkpoint")
        g.add_argument("--config", default=None, help="config preset: default, streamingvlm, rekv, tiny")
        g.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1")
        g.add_argument("--dtype", default=None, help="auto, float32, bfloat16, float16")
        g.add_argument("--fps", type=float, default=None, help="frames kept per second of stream")
        g.add_argument("--chunk-seconds", type=float, default=None, help="stream seconds per chunk")
        g.add_argument("--window", type=int, default=None, help="recent window in chunks")
        g.add_argument("--max-new-tokens", type=int, default=None, help="tokens per answer")
        g.add_argument("--no-long-term", action="store_true", help="drop evicted chunks (no long-term memory)")
        g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any config field, e.g. --set memory.retrieve_k=8 (repeatable)")
    if run:
        g = p.add_argument_group("run")
        g.add_argument("--out", required=True, help="output directory")
        g.add_argument("--video-root", default=None, help="directory that relative video paths start from "
                                                           "(default: the benchmark file's directory)")
        g.add_argument("--limit", type=int, default=None, help="first N questions (videos for infstreams)")
        g.add_argument("--videos", default=None, help="only these videos: comma-separated names or paths")
        g.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
        g.add_argument("--overwrite", action="store_true", help="discard earlier results in --out")
        g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _judge_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("judge")
    g.add_argument("--judge-url", default=None, help="OpenAI-compatible API base, e.g. https://HOST/v1")
    g.add_argument("--judge-model", default=None, help="judge model name")
    g.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    g.add_argument("--offline-judge", action="store_true",
                   help="word-overlap judge without an LLM (smoke runs; not comparable with published numbers)")


def _protocol_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", choices=["official", "vstream"], default="official",
                   help="official: the benchmark's own prompts, parsing and scoring (default); vstream: ours")


def add_eval_parser(subparsers: Any, build_agent: Callable[[argparse.Namespace], Any]) -> argparse.ArgumentParser:
    """Add ``eval`` with its sub-commands to ``subparsers``; ``args.func`` is ``run_eval``.

    ``build_agent(args)``: the Agent of a run from its model/config options (the vstream CLI's own, so that
    ``eval`` takes the options ``watch`` and ``ask`` take)."""
    ev = subparsers.add_parser("eval", help="benchmark runs -> JSONL predictions + scores",
                               description="Streaming benchmark runs: one pass per video, resumable.")
    sub = ev.add_subparsers(dest="eval_cmd", required=True)

    p = sub.add_parser("streamingbench", help="StreamingBench (real-time, sequential QA, proactive)")
    p.add_argument("bench", help="StreamingBench JSON")
    _common(p)
    _protocol_arg(p)
    p.add_argument("--context-seconds", type=float, default=None,
                   help="answer from only the last N seconds (the published main table uses 60); "
                        "default: the whole stream as vstream remembers it")
    p.add_argument("--proactive-mode", choices=["probe", "ask", "official"], default=None,
                   help="proactive polling: official (default with --protocol official), probe (P(yes), default "
                        "with --protocol vstream) or ask (a reply starting with yes fires)")
    p.add_argument("--threshold", type=float, default=None, help="probe P(yes) that fires (default: config)")

    p = sub.add_parser("ovobench", help="OVO-Bench (backward, real-time, forward REC/SSR/CRR)")
    p.add_argument("bench", help="OVO-Bench JSON")
    _common(p)
    _protocol_arg(p)

    p = sub.add_parser("rvs", help="RVS-Ego / RVS-Movie (open-ended, LLM-judged)")
    p.add_argument("bench", help="RVS JSON (or JSONL)")
    p.add_argument("--name", default="rvs", help="label in results, e.g. rvs-ego or rvs-movie")
    _common(p)
    _protocol_arg(p)
    _judge_args(p)

    p = sub.add_parser("infstreams", help="Inf-Streams commentary run (optionally judged)")
    p.add_argument("metadata", help="eval_all_metadata.jsonl")
    p.add_argument("--start-time", type=float, default=1000.0, help="commentary starts here (s)")
    p.add_argument("--end-time", type=float, default=None, help="stop here (default: the end of each video)")
    p.add_argument("--commentary-tokens", type=int, default=None, help="new tokens per chunk (default 20)")
    p.add_argument("--windows", default=None, help="scoring windows JSONL: judge right after the run")
    p.add_argument("--other", default=None, help="another run's merged JSONL (default: the reference text)")
    _common(p)
    _protocol_arg(p)
    _judge_args(p)

    p = sub.add_parser("infstreams-judge", help="pairwise-judge an Inf-Streams run (both orders per window)")
    p.add_argument("merged", help="this run's merged.jsonl (or chunks.jsonl)")
    p.add_argument("windows", help="scoring windows JSONL")
    p.add_argument("--other", default=None, help="another run's merged JSONL (default: the reference text)")
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, default=None, help="first N windows")
    p.add_argument("--videos", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    _protocol_arg(p)
    _judge_args(p)

    p = sub.add_parser("synthetic", help="generate the synthetic benchmark and run every protocol on it")
    _common(p)
    p.add_argument("--bench-dir", default=None, help="where to write the benchmark (default: OUT/bench)")
    p.add_argument("--num-videos", type=int, default=2, help="short videos (MP4 files)")
    p.add_argument("--duration", type=int, default=20, help="short video length (s)")
    p.add_argument("--size", default="96x72", help="short video frame size WxH")
    p.add_argument("--long-videos", type=int, default=0, help="long-stream videos rendered on the fly")
    p.add_argument("--long-duration", type=int, default=3600, help="long video length (s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--benchmarks", default="streamingbench,ovobench,rvs,infstreams")
    _protocol_arg(p)
    p.add_argument("--context-seconds", type=float, default=None, help="StreamingBench context (see streamingbench)")
    _judge_args(p)

    p = sub.add_parser("score", help="official numbers from prediction files in the official result formats")
    p.add_argument("benchmark", choices=["ovobench", "streamingbench", "infstreams", "rvs"])
    p.add_argument("files", nargs="+", help="result files or directories (OVO-Bench results/<model>/, "
                                            "StreamingBench output JSON, score_segments_*.jsonl, RVS judged JSON)")
    p.add_argument("--model", default=None, help="StreamingBench: the model's key in the output file")
    p.add_argument("--out", default=None, help="also write score.json + score.txt here")

    p = sub.add_parser("report", help="render `vstream bench` JSON results into Markdown + PNG")
    p.add_argument("inputs", nargs="+", help="bench result JSON files or directories")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--name", default="efficiency", help="file name stem")

    ev.set_defaults(func=run_eval, build_agent=build_agent)
    return ev


def _agent(args: argparse.Namespace) -> Any:
    """The agent of a run: a uniform-N preset answers from N frames re-sampled over the stream."""
    from eval.uniform import PRESET_FRAMES, UniformAgent

    agent = args.build_agent(args)
    n = PRESET_FRAMES.get(getattr(args, "config", None) or "")
    return UniformAgent(agent, n) if n else agent


def judge_from_args(args: argparse.Namespace, *, required: bool, default_offline: bool = False) -> Any:
    """ChatJudge from --judge-url/--judge-model, LexicalJudge with --offline-judge, else None (or an error)."""
    from eval.judge import ChatJudge, LexicalJudge

    if args.judge_url:
        if not args.judge_model:
            raise ValueError("--judge-url needs --judge-model NAME")
        return ChatJudge(args.judge_url, args.judge_model, api_key_env=args.judge_key_env)
    if args.offline_judge or default_offline:
        return LexicalJudge()
    if required:
        raise ValueError("no judge: pass --judge-url URL --judge-model NAME (key in $OPENAI_API_KEY) "
                         "or --offline-judge")
    return None


def _watch_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if getattr(args, "fps", None):
        kw["fps"] = args.fps
    if getattr(args, "chunk_seconds", None):
        kw["chunk_seconds"] = args.chunk_seconds
    return kw


def _run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(video_root=args.video_root, limit=args.limit, videos=args.videos, resume=args.resume,
                overwrite=args.overwrite, show_progress=not args.no_progress, watch_kwargs=_watch_kwargs(args))


def preflight(args: argparse.Namespace) -> None:
    """Load the benchmark file and check its (selected) videos before a model is loaded, so a missing
    file or field fails in a second with a one-line error."""
    from eval import formats
    from eval.runner import parse_video_filter, take

    cmd = args.eval_cmd
    wanted = parse_video_filter(args.videos)
    if cmd == "streamingbench":  # omni items are watched with their audio too
        srcs = [(q.source, q.video_path, True)
                for q in formats.load_streamingbench(args.bench, args.video_root)]
    elif cmd == "ovobench":
        srcs = [(q.source, q.video, True) for q in formats.load_ovobench(args.bench, args.video_root)]
    elif cmd == "rvs":
        srcs = [(q.source, q.video_id, True) for q in formats.load_rvs(args.bench, args.video_root)]
    elif cmd == "infstreams":
        srcs = [(m.source, m.video, True) for m in formats.load_infstreams_metadata(args.metadata, args.video_root)]
        if args.windows:
            formats.load_infstreams_windows(args.windows)
    else:
        return
    selected = take([(s, need) for s, name, need in srcs if formats.video_matches(s, wanted, name)], args.limit)
    if not selected:
        raise ValueError("no video selected; check --videos" if wanted else "the benchmark file has no items")
    selected = [s for s, need in selected if need]
    if not args.resume:  # on resume, finished videos may be gone; the run checks what it still needs
        formats.check_videos(selected)
    files = {"infstreams": ["chunks.jsonl", "videos_done.jsonl", "merged.jsonl"],
             "rvs": ["predictions.jsonl", "judgements.jsonl"]}.get(cmd, ["predictions.jsonl"])
    out = Path(args.out)
    existing = [f for f in files if (out / f).exists() and (out / f).stat().st_size > 0]
    if existing and not args.resume and not args.overwrite:
        raise ValueError(f"{out / existing[0]} already exists; pass --resume to continue that run or "
                         "--overwrite to start again")


def _done(out: str, headline: str) -> int:
    sys.stdout.write(f"{headline}\nresults in {out}\n")
    sys.stdout.flush()
    return 0


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}%"


def run_eval(args: argparse.Namespace) -> int:
    """Run the chosen ``vstream eval`` sub-command; returns the exit code (errors raise ValueError /
    RuntimeError with one-line messages, which vstream/cli/main.py prints)."""
    cmd = args.eval_cmd
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        raise ValueError("--resume and --overwrite contradict each other; pass one")
    if cmd == "score":
        from eval.rescore import render, score_files, write_outputs

        summary = score_files(args.benchmark, args.files, model=args.model)
        text = render(summary)
        if args.out:
            write_outputs(summary, args.out)
            text += f"\nresults in {args.out}"
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return 0
    if cmd == "report":
        from eval.report import render_report

        md, png = render_report(args.inputs, args.out, name=args.name)
        return _done(args.out, f"report: {md} + {png}")
    if cmd == "infstreams-judge":
        from eval.infstreams import judge_infstreams

        judge = judge_from_args(args, required=True)
        s = judge_infstreams(args.merged, args.windows, args.out, judge, protocol=args.protocol, other=args.other,
                             videos=args.videos,
                             limit=args.limit, resume=args.resume, overwrite=args.overwrite,
                             show_progress=not args.no_progress)
        return _done(args.out, f"Inf-Streams win rate vs {s['other']} ({args.protocol} protocol): "
                               f"{_pct(s['win_rate'])} ({s['windows']} windows, {s['invalid']} invalid judge replies)")
    mnt = args.max_new_tokens
    cs = getattr(args, "context_seconds", None)
    if cs is not None and cs <= 0:
        raise ValueError(f"--context-seconds must be > 0, got {cs:g}; e.g. --context-seconds 60")
    preflight(args)
    if cmd == "streamingbench":
        from eval.streamingbench import run_streamingbench

        agent = _agent(args)
        s = run_streamingbench(agent, args.bench, args.out, protocol=args.protocol,
                               context_seconds=args.context_seconds, max_new_tokens=mnt or 8,
                               proactive_mode=args.proactive_mode, threshold=args.threshold, **_run_kwargs(args))
        what = "real-time file total" if args.protocol == "official" else "accuracy"
        return _done(args.out, f"StreamingBench {what} ({args.protocol} protocol, context: {s['context']}): "
                               f"{_pct(s['overall'])} ({s['n_scored']} scored, {s['n_skipped']} skipped)")
    if cmd == "ovobench":
        from eval.ovobench import run_ovobench

        agent = _agent(args)
        s = run_ovobench(agent, args.bench, args.out, protocol=args.protocol, max_new_tokens=mnt or 8,
                         **_run_kwargs(args))
        return _done(args.out, f"OVO-Bench overall ({args.protocol} protocol): {_pct(s['overall'])} "
                               f"({s['n']} queries/probes)")
    if cmd == "rvs":
        from eval.rvs import run_rvs

        judge = judge_from_args(args, required=False)
        if judge is None:
            logger.warning("no judge given: answers only; rerun with --resume --judge-url ... to score them")
        agent = _agent(args)
        s = run_rvs(agent, args.bench, args.out, judge, name=args.name, protocol=args.protocol, max_new_tokens=mnt,
                    **_run_kwargs(args))
        return _done(args.out, f"{args.name} ({args.protocol} protocol): accuracy {_pct(s['accuracy'])}, mean score "
                               f"{'-' if s['mean_score'] is None else round(s['mean_score'], 3)} "
                               f"({s['judged']} judged, {s['invalid']} invalid)")
    if cmd == "infstreams":
        from eval.infstreams import judge_infstreams, run_infstreams

        judge = judge_from_args(args, required=False) if args.windows else None
        if args.windows and judge is None:
            raise ValueError("--windows needs a judge: pass --judge-url URL --judge-model NAME or --offline-judge")
        agent = _agent(args)
        run = run_infstreams(agent, args.metadata, args.out, protocol=args.protocol, start_time=args.start_time,
                             end_time=args.end_time, **_run_kwargs(args))
        head = f"Inf-Streams run ({args.protocol} protocol): {run['videos']} videos, {run['chunks']} chunks"
        if judge is not None:
            s = judge_infstreams(str(Path(args.out) / "merged.jsonl"), args.windows, args.out, judge,
                                 protocol=args.protocol, other=args.other, resume=args.resume, overwrite=args.overwrite,
                                 show_progress=not args.no_progress)
            head += f"; win rate vs {s['other']}: {_pct(s['win_rate'])} ({s['invalid']} invalid)"
        return _done(args.out, head)
    if cmd == "synthetic":
        from eval.suite import run_synthetic_suite
        from eval.synthetic import make_bench

        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise ValueError(f"--size {args.size!r} is not WxH; write e.g. --size 96x72") from None
        bench = make_bench(args.bench_dir or Path(args.out) / "bench", videos=args.num_videos,
                           duration_s=args.duration, size=(w, h), seed=args.seed, long_videos=args.long_videos,
                           long_duration_s=args.long_duration)
        judge = judge_from_args(args, required=False, default_offline=True)
        agent = _agent(args)
        kw = _run_kwargs(args)
        kw.pop("video_root")
        if kw.pop("videos"):
            raise ValueError("--videos is not supported by `eval synthetic`; use --num-videos")
        s = run_synthetic_suite(agent, bench, args.out, judge=judge, protocol=args.protocol,
                                context_seconds=args.context_seconds,
                                benchmarks=tuple(b.strip() for b in args.benchmarks.split(",") if b.strip()),
                                max_new_tokens=mnt or 8, **kw)
        return _done(args.out, f"synthetic suite done ({args.protocol} protocol): " + ", ".join(s["results"]))
    raise ValueError(f"unknown eval command {cmd!r}")
