"""Inf-Streams-Eval: live commentary from ``start_time`` to the end of each video, then pairwise judging.

Run outputs in ``out_dir``: chunks.jsonl (one line per chunk, written as soon as the chunk is done:
``{"video", "chunk_start", "chunk_end", "chunk_index", "latency_s", "items": [{"response", "start_time",
"end_time"}]}``), videos_done.jsonl, merged.jsonl (one line per video with all its items in time
order), summary.json/.md. A resumed run replays finished chunks' text (``commentary_replay``) so the
model's context is the same as in an uninterrupted run, and generates only the missing chunks.

Judge outputs: judgements.jsonl (both orders per window), judge_summary.json/.md.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from eval import formats, scoring
from eval.protocol import open_session
from eval.runner import (JsonlLog, markdown_table, parse_video_filter, prepare_out_dir, progress, take,
                         write_summary)

logger = logging.getLogger(__name__)

CHUNKS = "chunks.jsonl"
DONE = "videos_done.jsonl"
MERGED = "merged.jsonl"
JUDGEMENTS = "judgements.jsonl"


def _chunk_record(video: str, item: Any) -> dict[str, Any]:
    rec = {"video": video, "chunk_start": item.start_s, "chunk_end": item.end_s, "chunk_index": item.chunk_index,
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


def run_infstreams(agent: Any, metadata_path: str, out_dir: str, *, start_time: float = 1000.0,
                   end_time: float | None = None, video_root: str | None = None, limit: int | None = None,
                   videos: Any = None, resume: bool = False, overwrite: bool = False, show_progress: bool = True,
                   watch_kwargs: dict[str, Any] | None = None,
                   on_chunk: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Commentary over every selected video (``limit``: the first N videos); returns the run summary.

    ``on_chunk`` is called with each new per-chunk record after it is written.
    """
    out = prepare_out_dir(out_dir, [CHUNKS, DONE, MERGED], resume=resume, overwrite=overwrite)
    wanted = parse_video_filter(videos)
    metas = [m for m in formats.load_infstreams_metadata(metadata_path, video_root)
             if formats.video_matches(m.source, wanted, m.video)]
    metas = take(metas, limit)
    if not metas:
        raise ValueError(f"no videos selected from {metadata_path}; check --videos / --limit")
    kw = dict(watch_kwargs or {})
    cs = float(kw.get("chunk_seconds") or agent.config.sampler.chunk_seconds)
    with JsonlLog(out / CHUNKS, key=("video", "chunk_index")) as chunks, JsonlLog(out / DONE, key="video") as done:
        formats.check_videos(m.source for m in metas if m.video not in done)
        for m in metas:
            if m.video in done:
                continue
            end = end_time if end_time is not None else m.end_time
            if end <= start_time:
                logger.warning("%s: ASR ends at %.1f s, before the start time %.1f s; nothing to do",
                               m.video, m.end_time, start_time)
                done.append({"video": m.video, "chunks": 0, "note": "shorter than the start time"})
                continue
            replay = {int(r["chunk_index"]): _replay_value(r) for (v, _), r in chunks.records.items() if v == m.video}
            if replay:
                logger.info("%s: resuming, %d finished chunks replayed", m.video, len(replay))
            n = _commentate(agent, m, chunks, replay, start=start_time, end_time=end_time, est_end=end, cs=cs,
                            kw=kw, show_progress=show_progress, on_chunk=on_chunk)
            done.append({"video": m.video, "chunks": n})
        write_merged(chunks.values(), out / MERGED, [m.video for m in metas])
        per_video = {m.video: sum(1 for (v, _) in chunks.records if v == m.video) for m in metas}
        lat = [r["latency_s"] for r in chunks.values() if r.get("latency_s") is not None]
    summary = {"benchmark": "infstreams", "model": getattr(agent, "model_name", None),
               "metadata_file": os.path.basename(metadata_path), "start_time": start_time, "videos": len(metas),
               "chunks": sum(per_video.values()), "chunks_per_video": per_video,
               "mean_chunk_latency_s": sum(lat) / len(lat) if lat else None}
    md = "\n".join([f"# Inf-Streams commentary run — {summary['model']}\n",
                    f"Start time {start_time:g} s; merged output: `{MERGED}`.\n",
                    markdown_table(["video", "chunks"], sorted(per_video.items()))])
    write_summary(out, summary, md)
    return summary


def _commentate(agent: Any, m: formats.InfStreamsVideo, chunks: JsonlLog, replay: dict[int, Any], *, start: float,
                end_time: float | None, est_end: float, cs: float, kw: dict[str, Any], show_progress: bool,
                on_chunk: Callable[[dict[str, Any]], None] | None) -> int:
    """One uninterrupted commentary stream over one video; returns its number of chunks."""
    prev = m.previous_text(start)
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
                if item.chunk_index in replay or (m.video, item.chunk_index) in chunks:
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
    """One line per video: ``{"video", "start_time", "end_time", "items": [...]}`` in time order."""
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
            fh.write(json.dumps({"video": v, "start_time": items[0]["start_time"] if items else None,
                                 "end_time": items[-1]["end_time"] if items else None, "items": items},
                                ensure_ascii=False) + "\n")
    os.replace(tmp, p)
    return p


# ---- judging ------------------------------------------------------------------------------------

def judge_infstreams(merged_path: str, windows_path: str, out_dir: str, judge: Any, *,
                     other: str | None = None, videos: Any = None, limit: int | None = None, resume: bool = False,
                     overwrite: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Pairwise-judge a run against ``other`` (another run's merged JSONL; None = the windows' reference
    text), both orders per window; returns the win-rate summary (also written to judge_summary.*).

    Judged windows: those of the run's videos with at least half their span inside the run's time
    range (a run from ``start_time`` is not judged on windows before it); the rest are counted.
    """
    out = prepare_out_dir(out_dir, [JUDGEMENTS], resume=resume, overwrite=overwrite)
    ours = formats.load_commentary_items(merged_path)
    theirs = formats.load_commentary_items(other) if other else None
    wanted = parse_video_filter(videos)
    windows = [w for w in formats.load_infstreams_windows(windows_path)
               if w.video in ours and formats.video_matches(w.video, wanted)]
    selected, outside = [], 0
    for w in windows:
        items = ours[w.video]
        run_start = min(it["start_time"] for it in items) if items else 0.0
        run_end = max(it["end_time"] for it in items) if items else 0.0
        overlap = min(w.end, run_end) - max(w.start, run_start)
        if overlap > 0 and overlap >= 0.5 * (w.end - w.start):  # at least half the window inside the run
            selected.append(w)
        else:
            outside += 1
    selected = take(selected, limit)
    if not selected:
        raise ValueError(f"no scoring window of {windows_path} overlaps the run in {merged_path}; "
                         "check the video names and the run's start time")
    other_label = os.path.basename(other) if other else "reference"
    missing_other = 0
    with JsonlLog(out / JUDGEMENTS, key="window") as log, \
            progress(len(selected), "judge", show_progress, unit="window") as bar:
        for w in selected:
            if w.index not in log:
                ref = w.reference_text
                a = scoring.window_text(ours[w.video], w.start, w.end)
                if theirs is not None:
                    if w.video not in theirs:
                        missing_other += 1
                    b = scoring.window_text(theirs.get(w.video, []), w.start, w.end)
                else:
                    b = ref
                log.append({"window": w.index, "video": w.video, "title": w.title, "start": w.start, "end": w.end,
                            "ours_first": judge.pairwise(ref, a, b), "ours_second": judge.pairwise(ref, b, a),
                            "ours_text": a, "other_text": b})
            bar.update(1)
        judgements = [log.records[w.index] for w in selected]
    if missing_other:
        logger.warning("%d windows: video missing from %s (judged against empty commentary)", missing_other, other)
    summary = {"benchmark": "infstreams", "ours": os.path.basename(merged_path), "other": other_label,
               "judge": judge.describe(), "windows_outside_run": outside, **scoring.win_rate(judgements)}
    write_summary(out, summary, render_judge_markdown(summary), name="judge_summary")
    return summary


def render_judge_markdown(summary: dict[str, Any]) -> str:
    """Global and per-video win rates."""
    pv = summary["per_video"]
    return "\n".join([
        f"# Inf-Streams win rate: {summary['ours']} vs {summary['other']}\n",
        f"Judge: {summary['judge']['judge']}; each window judged in both orders. Win rate = votes for ours / "
        f"(votes for ours + votes for other). Invalid judge replies: {summary['invalid']}.\n",
        markdown_table(["", "windows", "votes ours", "votes other", "invalid", "win rate %"],
                       [("all", summary["windows"], summary["votes_ours"], summary["votes_other"], summary["invalid"],
                         summary["win_rate"])] +
                       [(v, d["windows"], d["votes_ours"], d["votes_other"], d["invalid"], d["win_rate"])
                        for v, d in pv.items()])])
