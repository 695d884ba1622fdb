"""Inf-Streams-Eval: live commentary from ``start_time`` to the end of each video, then pairwise judging.

Run outputs in ``out_dir``: chunks.jsonl (one line per chunk, written as soon as the chunk is done:
``{"video", "chunk_start", "chunk_end", "chunk_index", "latency_s", "items": [{"response", "start_time",
"end_time"}]}``), videos_done.jsonl, merged.jsonl (one line per video with all its items in time
order), summary.json/.md. A resumed run replays finished chunks' text (``commentary_replay``) so the
model's context is the same as in an uninterrupted run, and generates only the missing chunks.

``protocol="official"`` (default) follows mit-han-lab/streaming-vlm model_compete/generate.sh and
generate_segments.py: the broadcaster query (as the system prompt), temperature 0.9, previous text =
the ASR words whose end time is <= the start (get_phrase_before_timestamp), the run ends at the last
ASR row's end. ``protocol="vstream"``: our system prompt and decoding, previous text = words starting
before the start. merged.jsonl is in the official layout (``{video: basename, chunk_start, chunk_end,
items}``) for both, so the official score_segments.py reads it.

Judge outputs: see eval/infjudge.py.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from eval import formats, prompts
from eval.protocol import configured, open_session
from eval.runner import JsonlLog, markdown_table, open_run, progress, write_summary
from eval.streamingbench import check_protocol

logger = logging.getLogger(__name__)

CHUNKS = "chunks.jsonl"
DONE = "videos_done.jsonl"
MERGED = "merged.jsonl"
JUDGEMENTS = "judgements.jsonl"


def _key(video: str) -> str:
    """Chunk and merged lines name a video by its file name, as generate_segments.py writes them."""
    return os.path.basename(video)


def _chunk_record(video: str, item: Any) -> dict[str, Any]:
    rec = {"video": _key(video), "chunk_start": item.start_s, "chunk_end": item.end_s, "chunk_index": item.chunk_index,
           "latency_s": item.latency_s,
           "items": [{"response": item.text, "start_time": item.start_s, "end_time": item.end_s}]}
    ids = getattr(item, "token_ids", None)
    if ids is not None:  # exact replay (text -> tokens is not lossless for byte-level pieces)
        rec["token_ids"] = [int(i) for i in ids]
    return rec


def _replay_value(rec: dict[str, Any]) -> Any:
    """What ``commentary_replay`` gets for a finished chunk: its token ids when recorded, else its text."""
    if rec.get("token_ids") is not None:
        return list(rec["token_ids"])
    return " ".join(it["response"] for it in rec["items"])


def official_previous_text(words: list[tuple[float, float, str]], start_s: float) -> str:
    """lmm_dataset.get_phrase_before_timestamp: " w1 w2 ..." for the leading words with end <= start
    (stops at the first word that ends later)."""
    phrase = ""
    for _, we, w in words:
        if start_s >= we:
            phrase += " " + w.strip()
        else:
            break
    return phrase


def protocol_changes(protocol: str) -> dict[str, Any]:
    """Config changes of the official generation settings."""
    return ({"system_prompt": prompts.INF_QUERY, "generation.temperature": prompts.INF_TEMPERATURE}
            if protocol == "official" else {})


def run_infstreams(agent: Any, metadata_path: str, out_dir: str, *, protocol: str = "official",
                   start_time: float = 1000.0, end_time: float | None = None, video_root: str | None = None,
                   limit: int | None = None, videos: Any = None, resume: bool = False, overwrite: bool = False,
                   show_progress: bool = True, watch_kwargs: dict[str, Any] | None = None,
                   on_chunk: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Commentary over every selected video (``limit``: the first N videos); returns the run summary.

    ``on_chunk`` is called with each new per-chunk record after it is written.
    """
    check_protocol(protocol)
    out, metas = open_run(out_dir, [CHUNKS, DONE, MERGED], formats.load_infstreams_metadata(metadata_path, video_root),
                          resume=resume, overwrite=overwrite, videos=videos, limit=limit,
                          what=f"videos from {metadata_path}", names=lambda m: (m.source, m.video))
    run_agent = configured(agent, protocol_changes(protocol))
    kw = dict(watch_kwargs or {})
    cs = float(kw.get("chunk_seconds") or agent.config.sampler.chunk_seconds)
    with JsonlLog(out / CHUNKS, key=("video", "chunk_index")) as chunks, JsonlLog(out / DONE, key="video") as done:
        formats.check_videos(m.source for m in metas if m.video not in done)
        for m in metas:
            if m.video in done:
                continue
            last = float(int(m.words[-1][1])) if m.words else 0.0  # generate_segments.py: int(content[-1][1])
            end = end_time if end_time is not None else (last if protocol == "official" else m.end_time)
            if end <= start_time:
                logger.warning("%s: ASR ends at %.1f s, before the start time %.1f s; nothing to do",
                               m.video, end, start_time)
                done.append({"video": m.video, "chunks": 0, "note": "shorter than the start time"})
                continue
            replay = {int(r["chunk_index"]): _replay_value(r) for (v, _), r in chunks.records.items() if v == _key(m.video)}
            if replay:
                logger.info("%s: resuming, %d finished chunks replayed", m.video, len(replay))
            prev = official_previous_text(m.words, start_time) if protocol == "official" else m.previous_text(start_time)
            stop = end if (protocol == "official" or end_time is not None) else None
            n = _commentate(run_agent, m, chunks, replay, prev, start=start_time, end_time=stop, est_end=end, cs=cs,
                            kw=kw, show_progress=show_progress, on_chunk=on_chunk)
            done.append({"video": m.video, "chunks": n})
        write_merged(chunks.values(), out / MERGED, [_key(m.video) for m in metas])
        per_video = {m.video: sum(1 for (v, _) in chunks.records if v == _key(m.video)) for m in metas}
        lat = [r["latency_s"] for r in chunks.values() if r.get("latency_s") is not None]
    summary = {"benchmark": "infstreams", "protocol": protocol, "model": getattr(agent, "model_name", None),
               "metadata_file": os.path.basename(metadata_path), "start_time": start_time, "videos": len(metas),
               "chunks": sum(per_video.values()), "chunks_per_video": per_video,
               "mean_chunk_latency_s": sum(lat) / len(lat) if lat else None}
    md = "\n".join([f"# Inf-Streams commentary run — {summary['model']}\n",
                    f"Protocol: **{protocol}**. Start time {start_time:g} s; merged output: `{MERGED}`.\n",
                    markdown_table(["video", "chunks"], sorted(per_video.items()))])
    write_summary(out, summary, md)
    return summary


def _commentate(agent: Any, m: formats.InfStreamsVideo, chunks: JsonlLog, replay: dict[int, Any], prev: str, *,
                start: float, end_time: float | None, est_end: float, cs: float, kw: dict[str, Any],
                show_progress: bool, on_chunk: Callable[[dict[str, Any]], None] | None) -> int:
    """One uninterrupted commentary stream over one video; returns its number of chunks."""
    n = 0
    with open_session(agent, m.source, start_s=start, end_s=end_time, commentary=True, previous_text=prev,
                      commentary_replay=replay or None, **kw) as session, \
            progress(max(1, round((est_end - start) / cs)), Path(m.video).name, show_progress, unit="chunk") as bar:
        seen = 0
        target = start
        while not session.ended and (end_time is None or target < end_time - 1e-9):
            target += cs
            before = session.stream_time_s
            reached = session.advance_to(target)
            new = session.commentary_items[seen:]
            seen += len(new)
            for item in new:
                n += 1
                bar.update(1)
                if item.chunk_index in replay or (_key(m.video), item.chunk_index) in chunks:
                    continue
                rec = _chunk_record(m.video, item)
                chunks.append(rec)
                if on_chunk is not None:
                    on_chunk(rec)
            if not session.ended and reached <= before + 1e-9:
                raise RuntimeError(f"{m.video}: the session did not advance past {reached:.2f} s; "
                                   "the source may be stalled")
    return n


def write_merged(records: Any, path: str | os.PathLike, order: list[str] | None = None) -> Path:
    """One line per video in merge_result.py's layout: ``{"video": basename, "chunk_start": min start,
    "chunk_end": max end, "items": [...]}`` (items in time order; ``start_time``/``end_time`` kept too)."""
    per: dict[str, list[dict]] = {}
    seen: set = set()
    for r in sorted(records, key=lambda r: (r["video"], r["chunk_index"])):
        if (r["video"], r["chunk_index"]) in seen:
            continue
        seen.add((r["video"], r["chunk_index"]))
        per.setdefault(r["video"], []).extend(r["items"])
    names = [v for v in (order or []) if v in per] + sorted(v for v in per if v not in (order or []))
    p = Path(path)
    tmp = p.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for v in names:
            items = sorted(per[v], key=lambda it: (it["end_time"], it["start_time"]))
            lo = items[0]["start_time"] if items else None
            hi = max(it["end_time"] for it in items) if items else None
            fh.write(json.dumps({"video": os.path.basename(v), "chunk_start": int(lo) if items else 0,
                                 "chunk_end": int(hi) if items else 0, "start_time": lo, "end_time": hi,
                                 "items": items}, ensure_ascii=False) + "\n")
    os.replace(tmp, p)
    return p


from eval.infjudge import judge_infstreams, render_judge_markdown  # noqa: E402,F401  (re-exported)
