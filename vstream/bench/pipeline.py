"""`vstream bench pipeline`: real encoded video end to end, against the decoder's own speed.

Renders 720p and 1080p 30 fps H.264 clips with ffmpeg (B-frames, AAC audio, moving test pattern with
temporal noise), then times what a user runs, ``Agent.watch(clip, fps=...)`` to the end of the stream
with a tiny preset (imports and model load timed apart, not counted), against ``ffmpeg -threads N -i
clip -an -f null -`` decoding every frame on the same cores. Reported per clip and repeat: ingest time
over decode time (wall and CPU), over the tighter bound of ffmpeg decoding reference pictures only
(``-skip_frame noref``: vstream also leaves out the non-reference pictures it drops, but decodes the
ones it keeps), each stage's share of the busy time (decode, convert, preprocess, model), frames left
out of decoding and frames converted per kept frame (the sources' own counters).

``render_clip`` and ``ingest_over_decode`` are the two functions other benchmarks call.
"""
from __future__ import annotations

import logging
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from vstream.bench.common import environment, new_figure, save_png, write_json

logger = logging.getLogger(__name__)

#: Clip sizes by name: (width, height).
SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}


def _ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise RuntimeError("ffmpeg is not on PATH; install it (e.g. apt-get install ffmpeg) to render and time clips")
    return exe


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def render_clip(path: str | os.PathLike, width: int, height: int, seconds: float, fps: int = 30) -> Path:
    """Render an H.264 clip with ffmpeg: ``width`` x ``height``, ``fps`` frames/s, ``seconds`` long.

    Video: testsrc2 (moving pattern, counter) with temporal noise, libx264 (veryfast, CRF 23, 3 B-frames,
    GOP 250, yuv420p), index first; audio: a 440 Hz tone in AAC. Written to a temp file, then renamed.
    """
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"clip size must be even and at least 16x16, got {width}x{height}")
    if not seconds > 0 or not fps > 0:
        raise ValueError(f"seconds and fps must be > 0, got {seconds} and {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + "-", suffix=".mp4", dir=path.parent)
    os.close(fd)
    cmd = [_ffmpeg(), "-y", "-loglevel", "error", "-f", "lavfi",
           "-i", f"testsrc2=size={width}x{height}:rate={fps},noise=alls=12:allf=t+u",
           "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", f"{seconds:g}",
           "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-bf", "3", "-g", "250", "-pix_fmt", "yuv420p",
           "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart", "-shortest", tmp]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        os.replace(tmp, path)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"ffmpeg could not render {path.name}: {(e.stderr or '').strip()[-300:]}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def decode_time(clip: str | os.PathLike, threads: int, *, noref: bool = False) -> dict[str, float]:
    """Wall and CPU seconds of ``ffmpeg -threads N -i clip -an -f null -`` (every video frame decoded);
    ``noref``: with ``-skip_frame noref`` (the decoder drops non-reference pictures itself)."""
    skip = ["-skip_frame", "noref"] if noref else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([_ffmpeg(), "-v", "error", "-threads", str(threads), *skip, "-i", str(clip), "-an", "-f", "null",
                    "-"], check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


def _load(model: str, device: str, threads: int):
    import torch

    from vstream.api import Agent

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    agent = Agent.from_pretrained(model, device=device)
    return agent, time.perf_counter() - t0


def _ingest(agent, clip: Path, fps: float) -> dict[str, Any]:
    """Agent.watch(clip) to the end of the stream: wall and process CPU seconds, and the session's stats."""
    c0, t0 = time.process_time(), time.perf_counter()
    session = agent.watch(str(clip), fps=fps)
    try:
        session.wait_chunks(10 ** 9)  # returns when the stream ended
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        stats = session.stats()
        error = session.pipeline.error
        decoded_on = getattr(session.pipeline.source, "decode_device", "cpu")  # "cpu" after an NVDEC fallback
    finally:
        session.close()
    if error:
        raise RuntimeError(f"ingesting {clip.name} failed: {error}")
    return {"wall_s": wall, "cpu_s": cpu, "stats": stats, "decoded_on": decoded_on}


def ingest_over_decode(clip: str | os.PathLike, model: str = "tiny-smolvlm", fps: float = 1.0, device: str = "cpu",
                       threads: int | None = None, *, agent: Any = None) -> dict[str, Any]:
    """End-to-end ingest of ``clip`` (``Agent.watch`` at ``fps``) over ffmpeg's time to decode all its frames.

    ``threads``: cores both sides use (ffmpeg ``-threads``, torch threads); default: this process's CPUs.
    ffmpeg runs once before and once after the ingest; ``decode_s`` is their mean. Model load (and imports)
    is timed apart in ``load_s`` (0 when ``agent`` is given). Returns ``ingest_s``, ``decode_s``, ``ratio``
    (wall), ``cpu_ratio``, ``frames_decoded``, ``frames_left_out`` (non-reference pictures never
    decoded), ``frames_converted``, ``frames_kept``, ``converted_per_kept``, ``stage_s`` and
    ``stage_shares`` (busy seconds per stage), chunk latencies, and the tighter bound: ``noref_s`` (ffmpeg
    with ``-skip_frame noref``, which decodes only reference pictures, before and after) and
    ``ratio_noref``.
    """
    clip = Path(clip)
    if not clip.is_file():
        raise ValueError(f"clip {str(clip)!r} does not exist; render one with render_clip()")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    threads = int(threads or _cores())
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    load_s = 0.0
    if agent is None:
        agent, load_s = _load(model, device, threads)
    d1, n1 = decode_time(clip, threads), decode_time(clip, threads, noref=True)
    ing = _ingest(agent, clip, fps)
    d2, n2 = decode_time(clip, threads), decode_time(clip, threads, noref=True)
    decode_s = (d1["wall_s"] + d2["wall_s"]) / 2
    noref_s = (n1["wall_s"] + n2["wall_s"]) / 2
    decode_cpu = (d1["cpu_s"] + d2["cpu_s"]) / 2
    st = ing["stats"]
    stage = dict(st.get("stage_s") or {})
    busy = sum(stage.values())
    kept = int(st["frames_kept"])
    decoded = int(st.get("frames_decoded", st["frames_in"]))
    return {"clip": clip.name, "model": agent.model_name, "fps": fps, "device": device, "threads": threads,
            "decoded_on": ing["decoded_on"],
            "load_s": round(load_s, 3), "ingest_s": round(ing["wall_s"], 3), "decode_s": round(decode_s, 3),
            "decode_runs_s": [round(d1["wall_s"], 3), round(d2["wall_s"], 3)],
            "ratio": round(ing["wall_s"] / decode_s, 3),
            "noref_s": round(noref_s, 3), "ratio_noref": round(ing["wall_s"] / noref_s, 3),
            "ingest_cpu_s": round(ing["cpu_s"], 3), "decode_cpu_s": round(decode_cpu, 3),
            "cpu_ratio": round(ing["cpu_s"] / decode_cpu, 3) if decode_cpu > 0 else None,
            "frames_decoded": decoded, "frames_left_out": int(st["frames_in"]) - decoded,
            "frames_converted": int(st.get("frames_converted", st["frames_in"])),
            "frames_kept": kept, "frames_in": int(st["frames_in"]), "chunks": int(st["chunks"]),
            "converted_per_kept": round(int(st.get("frames_converted", st["frames_in"])) / kept, 3) if kept else None,
            "stage_s": stage, "stage_shares": {k: round(v / busy, 3) if busy else 0.0 for k, v in stage.items()},
            "chunk_latency_p50": st.get("chunk_latency_p50"), "chunk_latency_p95": st.get("chunk_latency_p95"),
            "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _probe(clip: Path) -> dict[str, Any]:
    from vstream.sources import probe

    facts = probe(clip)
    facts["bytes"] = clip.stat().st_size
    if facts.get("duration"):
        facts["video_mbps"] = round(8 * facts["bytes"] / facts["duration"] / 1e6, 2)
    return facts


def bench_pipeline(out: str | os.PathLike = "bench_out", *, sizes: Sequence[str] = ("720p", "1080p"),
                   seconds: float = 180.0, model: str = "tiny-smolvlm", fps: float = 1.0, repeats: int = 3,
                   device: str = "cpu", threads: int | None = None, ops_windows: Sequence[int] = (8, 16, 32),
                   ops_layers: Sequence[int] = (8, 16), ops_model: str = "small-llava-onevision") -> dict[str, Any]:
    """Render (or reuse) a clip per size under ``out/clips`` and run ``ingest_over_decode`` ``repeats`` times;
    then aten ops per chunk outside the model against W (``ops_windows``) for each of ``ops_layers`` layer
    counts (``vstream.bench.ops.bench_ops``; skipped when either is empty)."""
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise ValueError(f"unknown size(s) {', '.join(unknown)}; use {', '.join(SIZES)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not seconds > 0:
        raise ValueError(f"--seconds must be > 0, got {seconds}")
    if not fps > 0:
        raise ValueError(f"--fps must be > 0, got {fps}")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    _ffmpeg()
    threads = int(threads or _cores())
    clips_dir = Path(out) / "clips"
    agent, load_s = _load(model, device, threads)
    res: dict[str, Any] = {"bench": "pipeline", "env": environment(), "model": agent.model_name, "fps": fps,
                           "seconds": seconds, "threads": threads, "load_s": round(load_s, 3), "clips": {},
                           "runs": []}
    for size in sizes:
        w, h = SIZES[size]
        clip = clips_dir / f"{size}_{seconds:g}s_30fps.mp4"
        if not clip.is_file():
            logger.info("rendering %s (%gs)", clip.name, seconds)
            t0 = time.perf_counter()
            render_clip(clip, w, h, seconds)
            logger.info("rendered %s in %.1fs", clip.name, time.perf_counter() - t0)
        res["clips"][size] = _probe(clip)
        for r in range(repeats):
            row = ingest_over_decode(clip, model, fps, device, threads, agent=agent)
            row.update(size=size, repeat=r)
            logger.info("%s repeat %d: ingest %.2fs / decode %.2fs = %.2fx", size, r, row["ingest_s"],
                        row["decode_s"], row["ratio"])
            res["runs"].append(row)
    res["summary"] = summary(res)
    if ops_windows and ops_layers:
        from vstream.bench.ops import bench_ops

        res["ops"] = bench_ops(ops_model, tuple(ops_windows), tuple(ops_layers), device=device)
        res["summary"]["ops"] = res["ops"]["summary"]
    return res


def summary(res: dict[str, Any]) -> dict[str, Any]:
    """Per size: median and range of the wall and CPU ratios, converted per kept frame, stage shares."""
    out: dict[str, Any] = {}
    for size in res["clips"]:
        rows = [r for r in res["runs"] if r["size"] == size]
        ratios = [r["ratio"] for r in rows]
        cpu = [r["cpu_ratio"] for r in rows if r["cpu_ratio"] is not None]
        shares = {k: round(statistics.median(r["stage_shares"].get(k, 0.0) for r in rows), 3)
                  for k in rows[0]["stage_shares"]}
        out[size] = {"ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "cpu_ratio_median": statistics.median(cpu) if cpu else None,
                     "ingest_s_median": statistics.median(r["ingest_s"] for r in rows),
                     "decode_s_median": statistics.median(r["decode_s"] for r in rows),
                     "ratio_noref_median": statistics.median(r["ratio_noref"] for r in rows),
                     "frames_left_out": max(r["frames_left_out"] for r in rows),
                     "frames_in": max(r["frames_in"] for r in rows),
                     "converted_per_kept": max(r["converted_per_kept"] or 0 for r in rows),
                     "stage_shares": shares}
    return out


def plot_pipeline(res: dict[str, Any], path: Path | str) -> None:
    """Left: ingest / decode per size (each repeat, wall and CPU; wall over ffmpeg decoding reference pictures
    only; the 1.3x target). Right: stage shares."""
    fig, (a, b) = new_figure(1, 2, figsize=(10, 4))
    sizes = list(res["clips"])
    for i, size in enumerate(sizes):
        rows = [r for r in res["runs"] if r["size"] == size]
        a.scatter([i - 0.1] * len(rows), [r["ratio"] for r in rows], color="C0", label="wall" if i == 0 else None)
        a.scatter([i + 0.1] * len(rows), [r["cpu_ratio"] for r in rows], color="C1", marker="s",
                  label="CPU" if i == 0 else None)
        a.scatter([i + 0.2] * len(rows), [r["ratio_noref"] for r in rows], color="C2", marker="^",
                  label="wall / ffmpeg -skip_frame noref" if i == 0 else None)
    a.axhline(1.3, color="grey", ls="--", lw=1, label="target 1.3x")
    a.axhline(1.0, color="black", lw=0.5)
    a.set_xticks(range(len(sizes)), sizes)
    a.set_ylabel("ingest time / ffmpeg decode time")
    a.set_title(f"{res['model']} at {res['fps']:g} fps, {res['threads']} cores")
    a.legend()
    summ = res["summary"]
    bottom = [0.0] * len(sizes)
    for k in ("decode", "convert", "preprocess", "model"):
        vals = [summ[s]["stage_shares"].get(k, 0.0) for s in sizes]
        b.bar(sizes, vals, bottom=bottom, label=k)
        bottom = [x + v for x, v in zip(bottom, vals)]
    b.set_ylabel("share of busy time")
    b.set_title("stages (median over repeats)")
    b.legend()
    save_png(fig, path)


def run(args: Any) -> dict[str, Any]:
    """``vstream bench pipeline``: run, write pipeline.json and pipeline.png under ``--out``; the headline."""
    sizes = [s for s in args.sizes.split(",") if s]
    from vstream.bench.ops import parse_ints

    ops = {} if args.ops_windows in ("", "none") else {"ops_windows": parse_ints(args.ops_windows, "--ops-windows"),
                                                      "ops_layers": parse_ints(args.ops_layers, "--ops-layers")}
    res = bench_pipeline(args.out, sizes=sizes, seconds=args.seconds, model=args.model, fps=args.fps,
                         repeats=args.repeats, device=args.device, threads=args.threads,
                         **(ops or {"ops_windows": ()}))
    out = Path(args.out)
    p = write_json(res, out, "pipeline")
    plot_pipeline(res, out / "pipeline.png")
    return {"json": str(p), "png": str(out / "pipeline.png"), "summary": res["summary"]}
