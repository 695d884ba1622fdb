"""`vstream ...`: watch, ask, search, export, models, bench, doctor, eval. Errors are one line on stderr and a
non-zero exit.

The top layer: it may import everything below it (``vstream.api``, ``vstream.bench``, ``eval.cli``);
nothing imports it but ``vstream.__main__``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import warnings
from typing import Any, Sequence

from eval.cli import add_eval_parser
from vstream import bench
from vstream.cli import doctor
from vstream.cli.args import agent_from_args
from vstream.cli.fleet import add_parser as add_fleet_parser
from vstream.cli.serve import add_parser as add_serve_parser
from vstream.cli.timeopts import (add_time_args, add_timeline_parser, check_time_args, session_span, span_text,
                                  when_text)
from vstream.cli.push import add_parser as add_push_parser

logger = logging.getLogger(__name__)

EXIT_USAGE = 2


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service manager stopping vstream): unwinds like Ctrl-C, so memory is flushed the same way."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def _parse_ask(spec: str) -> tuple[float, str]:
    t, sep, q = spec.partition(":")
    example = 'write TIME:QUESTION, e.g. --ask "12.5:What is on the board?"'
    if not sep or not q.strip():
        raise CLIError(f"--ask {spec!r} is not TIME:QUESTION; {example}")
    try:
        tt = float(t)
    except ValueError:
        raise CLIError(f"--ask {spec!r}: {t.strip()!r} is not a time in seconds; {example}") from None
    if not math.isfinite(tt) or tt < 0:
        raise CLIError(f"--ask {spec!r}: the time must be a finite number of seconds >= 0; {example}")
    return tt, q.strip()


def _check_fps(fps: float | None) -> None:
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise CLIError(f"--fps {fps:g} is not a finite number > 0; pass e.g. --fps 2")


def _check_config(args) -> None:
    """What the config says about --fps, before anything is loaded: at least one frame per chunk."""
    from vstream.cli.args import config_overrides
    from vstream.config import from_name

    cfg = from_name(args.config or ("tiny" if (args.model or "").startswith("tiny-") else "default"))
    cfg = cfg.replace(**config_overrides(args))
    if args.fps is not None:
        cfg = cfg.replace(**{"sampler.fps": args.fps})
    cfg.validate()
    sc = cfg.sampler
    if sc.fps * sc.chunk_seconds < 1 - 1e-9:
        raise CLIError(f"--fps {sc.fps:g} keeps one frame every {1 / sc.fps:g} s, fewer than one per "
                       f"{sc.chunk_seconds:g}-s chunk; use --fps {1 / sc.chunk_seconds:g} or more")


def _fix_negative_values(argv: list[str]) -> list[str]:
    """``--ask -5:q`` would read as an unknown option: join it as ``--ask=-5:q`` so that it gets a clear error."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--ask", "--fps") and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1] != "--":
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


class Emitter:
    """Prints results as JSON lines (--json) or readable text."""

    def __init__(self, as_json: bool, out=None) -> None:
        self.as_json = as_json
        self.out = out or sys.stdout

    def emit(self, kind: str, human: str, **fields: Any) -> None:
        if self.as_json:
            self.out.write(json.dumps({"type": kind, **fields}, ensure_ascii=False) + "\n")
        else:
            self.out.write(human + "\n")
        self.out.flush()


def _answer_fields(ans) -> dict:
    return {"t": round(ans.asked_at_s, 3), "question": ans.question, "text": ans.text,
            "evidence": [e.to_dict() for e in ans.evidence], "ttft_s": round(ans.ttft_s, 4),
            "latency_s": round(ans.latency_s, 4), "tokens": ans.tokens}


def cmd_watch(args) -> int:
    from vstream.models.registry import check_model_name
    from vstream.sources import open_source

    # everything that can be checked is checked before the model loads: arguments, model name, source
    asks = sorted((_parse_ask(a) for a in args.ask), key=lambda x: x[0])
    _check_fps(args.fps)
    _check_config(args)
    if args.tz is not None or args.start_at is not None:
        from vstream.clock import check_zone, parse_when

        check_zone(args.tz)
        if args.start_at is not None:
            parse_when(args.start_at, tz=args.tz, what="--start-at")
    check_model_name(args.model)
    source = open_source(args.source)
    if args.memory_dir:
        from vstream.session.memory_dir import check_memory_dir

        try:
            check_memory_dir(args.memory_dir, source, append=args.memory_append)
        except BaseException:
            source.close()
            raise
    duration = getattr(source, "duration", None)
    for t, q in asks:
        if duration is not None and t > duration + 1e-6:
            logger.warning("--ask at %gs is past the end of %r (%.1f s): it is asked at the end", t,
                           getattr(source, "name", args.source), duration)
    em = Emitter(args.json)
    try:
        agent = agent_from_args(args)
    except BaseException:
        source.close()
        raise
    session = agent.watch(source, background=args.realtime, realtime=args.realtime, fps=args.fps,
                          memory_dir=args.memory_dir, commentary=args.commentary, memory_append=args.memory_append,
                          progress=not args.json and not args.realtime and sys.stderr.isatty(),
                          start_at=args.start_at, tz=args.tz)
    offset = session.time_offset_s  # appended to a memory dir: this stream's times start there
    with session:
        if session.speech is not None:
            def on_speech(s) -> None:
                when, wall = session_span(session, s.start_s, s.end_s)
                em.emit("speech", f"[{when}] speech: {s.text}", start_s=s.start_s, end_s=s.end_s, text=s.text,
                        words=[[w.text, round(w.start_s, 3), round(w.end_s, 3)] for w in s.words], **wall)

            session.speech.on_segment(on_speech)
        if args.commentary:
            def on_commentary(c) -> None:
                when, wall = session_span(session, c.start_s, c.end_s)
                em.emit("commentary", f"[{when}] {c.text}", start_s=c.start_s, end_s=c.end_s, text=c.text, **wall)

            session.on_commentary(on_commentary)
        for cond in args.notify:
            session.notify_when(cond, lambda al: em.emit(
                "notify", f"[{when_text(al.at_s, al.wall_s, session.tz)}] ALERT {al.condition!r} "
                f"(p={al.probability:.2f})" + (f": {al.answer.text}" if al.answer else ""),
                at_s=al.at_s, wall_s=al.wall_s, condition=al.condition, probability=al.probability,
                text=al.answer.text if al.answer else None))
        for t, q in asks:
            t += offset
            reached = session.advance_to(t)
            if session.error:
                break
            if reached < t:
                logger.warning("the stream ended at %.1fs, before the question's time %gs: asked at %.1fs",
                               reached, t, reached)
            ans = session.ask(q)
            when, wall = session_span(session, ans.asked_at_s)
            em.emit("answer", f"[{when}] Q: {q}\n        A: {ans.text}", **_answer_fields(ans), **wall)
        if not asks or args.commentary or args.notify or args.memory_dir:
            session.run_to_end()
        if session.error:
            raise CLIError(session.error)
        st = session.stats()
        for g in st["gaps"]:
            em.emit("gap", f"[{g['at_s']:.1f}s] stream lost for {g['duration_s']:.1f}s ({g['reason']}); reconnected",
                    **g)
        em.emit("stats", f"watched {st['stream_time_s']:.1f}s: {st['chunks']} chunks, {st['frames_kept']} frames kept, "
                         f"{st['frames_dropped']} dropped, chunk latency p50 {st['chunk_latency_p50'] or 0:.3f}s"
                         + (f", {len(st['gaps'])} gap(s), {st['reconnects']} reconnect(s)" if st["gaps"] else ""),
                **{k: v for k, v in st.items() if k != "error"})
    return 0


def _recorded_model(memory_dir: str) -> str | None:
    """The model a memory directory was written by (its config.json), or None when unreadable."""
    from pathlib import Path

    try:
        cfg = json.loads((Path(memory_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    model = cfg.get("model") if isinstance(cfg, dict) else None
    return model if isinstance(model, str) and model else None


def cmd_ask(args) -> int:
    from pathlib import Path

    from vstream.models.registry import check_model_name

    em = Emitter(args.json)
    if not (Path(args.memory_dir) / "config.json").is_file():  # before loading anything
        raise CLIError(f"{args.memory_dir} is not a vstream memory directory (no config.json); give the directory "
                       f"written by `vstream watch --memory-dir` or session.save()")
    rng, tz = check_time_args(args)
    check_model_name(args.model)
    if args.model is None:  # the model that wrote the memory (its entries only make sense for it)
        args.model = _recorded_model(args.memory_dir)
        if args.model is not None:
            logger.info("using the model recorded in %s: %s", args.memory_dir, args.model)
    if args.retriever is None:  # the retrievers the memory was indexed with (no rebuild), else both
        from memory.index import MemoryIndex

        args.retriever = MemoryIndex.saved_retriever(args.memory_dir) or "both"
    agent = agent_from_args(args)
    with agent.load(args.memory_dir) as session:
        for q in args.question:
            ans = session.ask(q, since=args.since, until=args.until)
            fields = _answer_fields(ans)
            ev = ", ".join(f"{span_text(e.start_s, e.end_s, e.wall_s, e.wall_end_s, tz)} {e.source} ({e.score:.2f})"
                           for e in ans.evidence)
            em.emit("answer", f"Q: {q}\nA: {ans.text}\n   evidence: {ev or 'none'}", **fields)
    return 0


def cmd_search(args) -> int:
    from pathlib import Path

    from vstream.api import search

    thumbs = args.thumbs_dir
    if thumbs is None:
        import tempfile

        thumbs = tempfile.mkdtemp(prefix="vstream-search-")
    em = Emitter(args.json)
    _rng, tz = check_time_args(args)
    for qi, query in enumerate(args.query):
        sub_dir = thumbs if len(args.query) == 1 else str(Path(thumbs) / f"q{qi + 1:02d}")
        moments = search(args.memory_dir, query, top=args.top, thumbs_dir=sub_dir, since=args.since, until=args.until)
        if len(args.query) > 1 and not args.json:
            em.emit("query", f"{query}", query=query)
        if not moments:
            em.emit("none", f"no moment in {args.memory_dir} matches {query!r}"
                    + (" in that period" if _rng is not None else ""), query=query)
        for rank, m in enumerate(moments, 1):
            em.emit("moment", f"{rank}. [{span_text(m.start_s, m.end_s, m.wall_s, m.wall_end_s, tz)}] "
                              f"({m.source}, {m.score:.2f}) {m.text}"
                              + (f"\n   thumbnail: {m.thumbnail}" if m.thumbnail else ""), query=query, rank=rank,
                    **m.to_dict())
    return 0


def cmd_export(args) -> int:
    from vstream.api import export

    check_time_args(args)
    text = export(args.memory_dir, args.format, since=args.since, until=args.until, tz=args.tz)
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_models(args) -> int:
    from vstream.models.registry import DEFAULT_CPU_MODEL, DEFAULT_GPU_MODEL, describe_models

    rows = describe_models()
    if args.json:
        print(json.dumps({"models": rows, "default_cpu": DEFAULT_CPU_MODEL, "default_gpu": DEFAULT_GPU_MODEL}))
        return 0
    w = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{w}}  {r['family']:<16} {r['description']}")
    print(f"\nwithout --model: {DEFAULT_CPU_MODEL} on CPU, {DEFAULT_GPU_MODEL} on GPU (downloaded from the hub)")
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="preset (see `vstream models`), hub id or local directory; "
                                                 "default: a real checkpoint suited to the device")
    p.add_argument("--config", default=None, help="config preset: default, streamingvlm, rekv, tiny")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1")
    p.add_argument("--dtype", default=None, help="auto, float32, bfloat16, float16")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--window", type=int, default=None, help="recent window in chunks (W)")
    p.add_argument("--retriever", choices=["internal", "text", "both"], default=None)
    p.add_argument("--top-k", type=int, default=None, help="long-term entries retrieved per question")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, e.g. --set generation.decode=graphs (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vstream", description="Streaming video-LLM agent: watch a stream, answer "
                                                             "questions while watching.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = ap.add_subparsers(dest="cmd", required=True)

    w = sub.add_parser("watch", help="watch a video/stream and answer questions at given stream times")
    w.add_argument("source", help="video file, rtsp/http URL, /dev/videoN, or synthetic:seed=0,duration=30")
    _add_model_args(w)
    w.add_argument("--fps", type=float, default=None, help="frames kept per second of stream (default 2)")
    w.add_argument("--ask", action="append", default=[], metavar="T:QUESTION",
                   help="ask QUESTION when the stream reaches T seconds (repeatable)")
    w.add_argument("--commentary", action="store_true", help="live commentary after every chunk")
    w.add_argument("--notify", action="append", default=[], metavar="TEXT", help="alert when TEXT happens")
    w.add_argument("--token-drop", type=float, default=None, metavar="T",
                   help="skip visual tokens whose cosine similarity to the same cell of the previous frame is > T")
    w.add_argument("--realtime", action="store_true", help="pace to the wall clock, drop frames when behind")
    w.add_argument("--memory-dir", default=None, help="persist long-term memory here (crash-safe, as it goes); "
                                                      "the same source again resumes it")
    w.add_argument("--memory-append", action="store_true",
                   help="the memory dir holds another video: add this one after it, its times starting where "
                        "the stored ones end (its own time base)")
    w.add_argument("--start-at", default=None, metavar="WHEN",
                   help="a recorded file: the wall-clock time it began (ISO 8601), so entries carry clock time")
    w.add_argument("--tz", default=None, metavar="ZONE", help="the camera's time zone (IANA name; default: this "
                                                              "machine's)")
    w.add_argument("--ocr", action="store_true", help="OCR a keyframe per chunk into memory (slides, signs); "
                                                      "turns on the text retriever too (--retriever both)")
    w.add_argument("--asr", nargs="?", const="default", default=None, metavar="MODEL",
                   help="recognise speech into memory (faster-whisper; MODEL: 'default' = shipped tiny.en, a "
                        "model name or directory); turns on the text retriever too")
    w.set_defaults(func=cmd_watch)

    a = sub.add_parser("ask", help="answer questions from a saved memory directory, without the video")
    a.add_argument("memory_dir")
    a.add_argument("question", nargs="+")
    _add_model_args(a)
    add_time_args(a)
    a.set_defaults(func=cmd_ask)

    s = sub.add_parser("search", help="find moments in a memory directory by meaning (no VLM; read-only)")
    s.add_argument("memory_dir")
    s.add_argument("query", nargs="+", help="what to look for (several queries: each is answered in turn)")
    s.add_argument("--top", type=int, default=5, help="moments to list (default 5)")
    s.add_argument("--thumbs-dir", default=None, help="write each moment's thumbnail here (default: a temp dir)")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    add_time_args(s)
    s.set_defaults(func=cmd_search)

    e = sub.add_parser("export", help="the transcript (and commentary) of a memory directory with times")
    e.add_argument("memory_dir")
    fmt = e.add_mutually_exclusive_group(required=True)
    for f in ("srt", "vtt", "json"):
        fmt.add_argument(f"--{f}", dest="format", action="store_const", const=f, help=f"write {f.upper()}")
    e.add_argument("--out", "-o", default=None, help="file to write (default: stdout)")
    add_time_args(e)
    e.set_defaults(func=cmd_export)
    add_timeline_parser(sub)

    m = sub.add_parser("models", help="list presets and supported model families")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)

    bench.add_parser(sub)
    doctor.add_parser(sub)
    add_fleet_parser(sub)
    add_serve_parser(sub)
    add_push_parser(sub)
    add_eval_parser(sub, agent_from_args)
    return ap


def _quiet_stderr(verbose: bool) -> None:
    """Keep stderr to vstream's own lines unless -v: no native decoder logs, library warnings or load bars."""
    if verbose:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers/huggingface_hub import
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.simplefilter("ignore")  # damage worth telling is logged by vstream (once, not also as a warning)
    try:
        import av.logging

        av.logging.set_level(None)  # PyAV: libav's own lines off
    except ImportError:  # pragma: no cover
        pass
    try:
        import decord.logging

        decord.logging.set_level(decord.logging.QUIET)  # decord ships its own libav
    except ImportError:  # pragma: no cover
        pass
    for mod, fn in (("transformers.utils.logging", "disable_progress_bar"),
                    ("huggingface_hub.utils", "disable_progress_bars")):
        if mod.split(".")[0] in sys.modules:  # already imported: the environment variable came too late
            getattr(sys.modules.get(mod) or __import__(mod, fromlist=[fn]), fn)()


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(_fix_negative_values(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _quiet_stderr(args.verbose)
    as_json = getattr(args, "json", False)
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)  # flush memory as Ctrl-C does
    except ValueError:  # not the main thread (e.g. called from a test's worker): leave SIGTERM alone
        pass
    try:
        return int(args.func(args) or 0)
    except Terminated:
        print("vstream: terminated (SIGTERM); what was watched is saved (as on Ctrl-C)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, RuntimeError, FileNotFoundError, PermissionError, OSError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        if as_json:
            print(json.dumps({"type": "error", "message": msg}), flush=True)
        print(f"vstream: error: {msg}", file=sys.stderr)
        if args.verbose:
            logger.exception("details")
        return EXIT_USAGE
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
