"""RVS-Ego / RVS-Movie: open-ended questions at ``end_time``, judged by an LLM ({"pred", "score"}).

Outputs in ``out_dir``: predictions.jsonl, judgements.jsonl, summary.json, summary.md.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from eval import formats, scoring
from eval.protocol import Query, QueryResult, run_videos
from eval.runner import (JsonlLog, markdown_table, parse_video_filter, prepare_out_dir, progress, take,
                         write_summary)

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
JUDGEMENTS = "judgements.jsonl"


def run_rvs(agent: Any, bench_path: str, out_dir: str, judge: Any | None, *, name: str = "rvs",
            video_root: str | None = None, limit: int | None = None, videos: Any = None, resume: bool = False,
            overwrite: bool = False, max_new_tokens: int = 64, show_progress: bool = True,
            watch_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Answer every selected question in one pass per video, then judge the answers (judge None: skip)."""
    out = prepare_out_dir(out_dir, [PREDICTIONS, JUDGEMENTS], resume=resume, overwrite=overwrite)
    wanted = parse_video_filter(videos)
    qs = [q for q in formats.load_rvs(bench_path, video_root)
          if formats.video_matches(q.source, wanted, q.video_id)]
    qs = take(qs, limit)
    if not qs:
        raise ValueError(f"no RVS questions selected from {bench_path}; check --videos / --limit")
    by_id = {q.qid: q for q in qs}
    with JsonlLog(out / PREDICTIONS) as log:
        groups: dict[str, list[Query]] = {}
        for q in sorted(qs, key=lambda q: q.time_s):
            if q.qid not in log:
                groups.setdefault(q.source, []).append(Query(q.qid, q.time_s, q.question,
                                                             max_new_tokens=max_new_tokens))
        formats.check_videos(groups)

        def on_result(_src: str, res: QueryResult) -> None:
            q = by_id[res.qid]
            rec = {"qid": q.qid, "benchmark": name, "video": q.video_id, "time_s": q.time_s, "prompt": q.question,
                   **res.to_dict(), "answer": q.answer}
            for k in ("probes", "fired_at_s"):
                rec.pop(k, None)
            log.append(rec)

        run_videos(agent, groups, on_result, watch_kwargs=watch_kwargs, desc=name, show_progress=show_progress)
        preds = {q.qid: log.records[q.qid] for q in qs if q.qid in log}
    judged: list[dict] = []
    if judge is not None:
        judged = judge_predictions(list(preds.values()), judge, out / JUDGEMENTS, show_progress=show_progress)
    summary = {"benchmark": name, "bench_file": os.path.basename(bench_path),
               "model": getattr(agent, "model_name", None), "n_questions": len(qs), "answered": len(preds),
               "judge": judge.describe() if judge is not None else None, **scoring.rvs_aggregate(judged)}
    write_summary(out, summary, render_markdown(summary))
    return summary


def judge_predictions(preds: list[dict], judge: Any, path: Any, *, show_progress: bool = True) -> list[dict]:
    """Judge each prediction once (resumable through ``path``); returns the judgements of ``preds``."""
    with JsonlLog(path) as jlog, progress(len(preds), "judge", show_progress, unit="q") as bar:
        for p in preds:
            if p["qid"] not in jlog:
                rating = judge.rate_answer(p["prompt"], p["answer"], p["reply"])
                jlog.append({"qid": p["qid"], "video": p["video"], "judge": judge.name,
                             "pred": rating["pred"] if rating else None,
                             "score": rating["score"] if rating else None, "valid": rating is not None})
            bar.update(1)
        return [jlog.records[p["qid"]] for p in preds]


def render_markdown(summary: dict[str, Any]) -> str:
    """One-row score table."""
    judge = (summary.get("judge") or {}).get("judge", "none")
    return "\n".join([f"# {summary['benchmark']} — {summary.get('model')}\n", f"Judge: {judge}.\n",
                      markdown_table(["questions", "answered", "judged", "invalid", "accuracy", "mean score"],
                                     [(summary["n_questions"], summary["answered"], summary["judged"],
                                       summary["invalid"], summary["accuracy"], summary["mean_score"])])])
