"""Inf-Streams pairwise judging: ours (candidate A) against another run or the reference, both orders.

``protocol="official"`` (default) follows streaming_vlm/eval/model_compete/score_segments.py and
judge.py: a window spans int(first start) .. int(last end) of its rows; it is judged only when both
runs' merged rows cover it (chunk_start <= start, end <= chunk_end); a run's text is its items with
start < int(end_time) <= end; the reference is the window's texts joined by newlines; the judge reply
counts "A" when it starts with "A", else "B". Outputs ``score_segments_0.jsonl`` and
``score_results.json`` in the official layout (merge_score.py reads them) plus judge_summary.json/.md.
Against the reference text (no ``other`` run) only our coverage is checked; that opponent has no
official counterpart.

``protocol="vstream"``: windows with at least half their span inside our run, strict A/B parsing with
bounded retries (invalid replies counted), our judge prompt; outputs judgements.jsonl.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from eval import formats, official, scoring
from eval.runner import JsonlLog, markdown_table, parse_video_filter, prepare_out_dir, progress, take, write_json
from eval.runner import write_summary

logger = logging.getLogger(__name__)

JUDGEMENTS = "judgements.jsonl"
SEGMENTS = "score_segments_0.jsonl"
RESULTS = "score_results.json"


def load_runs(path: str) -> dict[str, dict[str, Any]]:
    """A run's commentary per video basename: ``{"chunk_start", "chunk_end", "items"}`` from merged lines or
    per-chunk lines (ours or the official shards; for one chunk_start the line with the largest chunk_end)."""
    by: dict[str, dict[float, dict]] = {}
    for i, row in enumerate(formats.read_jsonl(path, tolerate_partial_tail=True), 1):
        where = f"{path}:{i}"
        v = os.path.basename(str(formats.require(row, "video", where)))
        items = formats.require(row, "items", where)
        lo = row.get("chunk_start", min((it.get("start_time", 0) for it in items), default=0))
        hi = row.get("chunk_end", max((it.get("end_time", 0) for it in items), default=0))
        prev = by.setdefault(v, {}).get(float(lo))
        if prev is None or float(hi) > prev["chunk_end"]:
            by[v][float(lo)] = {"chunk_start": float(lo), "chunk_end": float(hi), "items": list(items)}
    out = {}
    for v, segs in by.items():
        ordered = [segs[k] for k in sorted(segs)]
        out[v] = {"chunk_start": ordered[0]["chunk_start"], "chunk_end": max(s["chunk_end"] for s in ordered),
                  "items": [it for s in ordered for it in s["items"]]}
    return out


def judge_infstreams(merged_path: str, windows_path: str, out_dir: str, judge: Any, *, protocol: str = "official",
                     other: str | None = None, videos: Any = None, limit: int | None = None, resume: bool = False,
                     overwrite: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Judge our run against ``other`` (another run's merged JSONL; None = the reference text)."""
    if protocol not in ("official", "vstream"):
        raise ValueError(f"protocol must be 'official' or 'vstream', got {protocol!r}")
    files = [SEGMENTS] if protocol == "official" else [JUDGEMENTS]
    out = prepare_out_dir(out_dir, files, resume=resume, overwrite=overwrite)
    ours = load_runs(merged_path)
    theirs = load_runs(other) if other else None
    wanted = parse_video_filter(videos)
    windows = [w for w in formats.load_infstreams_windows(windows_path)
               if os.path.basename(w.video) in ours and formats.video_matches(w.video, wanted)]
    if protocol == "official":
        return _judge_official(ours, theirs, windows, out, judge, merged_path, other, limit, show_progress)
    selected, outside = [], 0
    for w in windows:
        items = ours[os.path.basename(w.video)]["items"]
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
    missing_other = 0
    with JsonlLog(out / JUDGEMENTS, key="window") as log, \
            progress(len(selected), "judge", show_progress, unit="window") as bar:
        for w in selected:
            if w.index not in log:
                ref = w.reference_text
                v = os.path.basename(w.video)
                a = scoring.window_text(ours[v]["items"], w.start, w.end)
                if theirs is not None:
                    missing_other += v not in theirs
                    b = scoring.window_text(theirs.get(v, {}).get("items", []), w.start, w.end)
                else:
                    b = ref
                log.append({"window": w.index, "video": v, "title": w.title, "start": w.start, "end": w.end,
                            "ours_first": judge.pairwise(ref, a, b), "ours_second": judge.pairwise(ref, b, a),
                            "ours_text": a, "other_text": b})
            bar.update(1)
        judgements = [log.records[w.index] for w in selected]
    if missing_other:
        logger.warning("%d windows: video missing from %s (judged against empty commentary)", missing_other, other)
    summary = {"benchmark": "infstreams", "protocol": "vstream", "ours": os.path.basename(merged_path),
               "other": os.path.basename(other) if other else "reference", "judge": judge.describe(),
               "windows_outside_run": outside, **scoring.win_rate(judgements)}
    write_summary(out, summary, render_judge_markdown(summary), name="judge_summary")
    return summary


def _judge_official(ours: dict, theirs: dict | None, windows: list, out: Any, judge: Any, merged_path: str,
                    other: str | None, limit: int | None, show_progress: bool) -> dict[str, Any]:
    selected, skipped = [], 0
    for w in windows:
        s, e, _ = official.inf_window([[a, b, t] for a, b, t in w.segments])
        v = os.path.basename(w.video)
        ok = official.inf_covers(ours.get(v), s, e) and (theirs is None or official.inf_covers(theirs.get(v), s, e))
        if ok:
            selected.append(w)
        else:
            skipped += 1
    selected = take(selected, limit)
    if not selected:
        raise ValueError(f"no scoring window is covered by both runs ({merged_path}"
                         f"{', ' + other if other else ''}); check the video names and the run's time range")
    with JsonlLog(out / SEGMENTS, key=("video", "start", "end")) as log, \
            progress(len(selected), "judge", show_progress, unit="window") as bar:
        for w in selected:
            s, e, ref = official.inf_window([[a, b, t] for a, b, t in w.segments])
            v = os.path.basename(w.video)
            if (v, s, e) not in log:
                a = official.inf_text(ours[v]["items"], s, e)
                b = official.inf_text(theirs[v]["items"], s, e) if theirs is not None else ref
                votes = official.inf_votes(judge.vote_official(ref, a, b), judge.vote_official(ref, b, a))
                log.append({"video": v, "title": w.title, "start": s, "end": e, "winner": votes["winner"],
                            "votes": votes["votes"], "judge": {"model": judge.name, "vote_ab": votes["vote_ab"],
                                                               "vote_ba": votes["vote_ba"]}})
            bar.update(1)
        segments = log.values()
    res = official.inf_summarize(segments)
    write_json(out / RESULTS, {"per_video": res["per_video"], "global": res["global"]})
    g = res["global"]
    summary = {"benchmark": "infstreams", "protocol": "official", "ours": os.path.basename(merged_path),
               "other": os.path.basename(other) if other else "reference (no official counterpart)",
               "judge": judge.describe(), "windows": res["segments"], "windows_not_covered": skipped,
               "win_rate": 100.0 * g["A"] / max(1, g["A"] + g["B"]), "votes_ours": g["A"], "votes_other": g["B"],
               "invalid": 0, "not_a_letter": judge.stats.not_a_letter, "official": res,
               "per_video": {k: {"win_rate": 100 * d["win_rate_A"], "votes_ours": d["A"], "votes_other": d["B"]}
                             for k, d in res["per_video"].items()}}
    md = "\n".join([
        f"# Inf-Streams win rate (official protocol): {summary['ours']} vs {summary['other']}\n",
        f"Judge: {summary['judge']['judge']}; both orders per window; {skipped} windows not covered by both runs; "
        f"{summary['not_a_letter']} judge replies starting with neither A nor B (counted as B, as judge.py does).\n",
        markdown_table(["", "A", "B", "win rate A"], [("global", g["A"], g["B"], g["win_rate_A"])] +
                       [(k, d["A"], d["B"], d["win_rate_A"]) for k, d in res["per_video"].items()])])
    write_summary(out, summary, md, name="judge_summary")
    return summary


def render_judge_markdown(summary: dict[str, Any]) -> str:
    """Global and per-video win rates (vstream protocol)."""
    pv = summary["per_video"]
    return "\n".join([
        f"# Inf-Streams win rate: {summary['ours']} vs {summary['other']}\n",
        f"Protocol: vstream. Judge: {summary['judge']['judge']}; each window judged in both orders. Win rate = "
        f"votes for ours / (votes for ours + votes for other). Invalid judge replies: {summary['invalid']}.\n",
        markdown_table(["", "windows", "votes ours", "votes other", "invalid", "win rate %"],
                       [("all", summary["windows"], summary["votes_ours"], summary["votes_other"], summary["invalid"],
                         summary["win_rate"])] +
                       [(v, d["windows"], d["votes_ours"], d["votes_other"], d["invalid"], d["win_rate"])
                        for v, d in pv.items()])])
