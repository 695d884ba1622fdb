"""OVO-Bench: backward and real-time MCQs, forward probes (REC / SSR / CRR), official scoring.

Outputs in ``out_dir``: predictions.jsonl (one record per query or probe), summary.json, summary.md.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from eval import formats, prompts, scoring
from eval.formats import OVOQuery
from eval.protocol import Query, QueryResult, run_videos
from eval.runner import JsonlLog, markdown_table, parse_video_filter, prepare_out_dir, take, write_summary

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"


def query_prompt(q: OVOQuery) -> str:
    """The prompt for an MCQ or a forward probe."""
    if q.task == "REC":
        return prompts.rec_prompt(q.question)
    if q.task == "SSR":
        return prompts.ssr_prompt(q.question)
    if q.task == "CRR":
        return prompts.crr_prompt(q.question)
    return prompts.mcq_prompt(q.question, q.options)


def score_query(q: OVOQuery, reply: str) -> tuple[Any, bool]:
    """(parsed answer, correct) by the official rule for the query's task."""
    if q.task == "REC":
        return scoring.parse_number(reply), scoring.rec_correct(reply, q.gold)
    if q.task in ("SSR", "CRR"):
        return scoring.parse_yes_no(reply), scoring.yes_no_correct(reply, q.gold)
    return (q.gold if scoring.ovo_mcq_correct(reply, q.gold) else scoring.first_letter(reply),
            scoring.ovo_mcq_correct(reply, q.gold))


def run_ovobench(agent: Any, bench_path: str, out_dir: str, *, video_root: str | None = None,
                 limit: int | None = None, videos: Any = None, resume: bool = False, overwrite: bool = False,
                 max_new_tokens: int = 8, show_progress: bool = True,
                 watch_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run OVO-Bench (``limit``: the first N queries/probes) and write predictions + summary."""
    out = prepare_out_dir(out_dir, [PREDICTIONS], resume=resume, overwrite=overwrite)
    wanted = parse_video_filter(videos)
    queries = [q for q in formats.load_ovobench(bench_path, video_root)
               if formats.video_matches(q.source, wanted, q.video)]
    queries = take(queries, limit)
    if not queries:
        raise ValueError(f"no OVO-Bench queries selected from {bench_path}; check --videos / --limit")
    by_id = {q.qid: q for q in queries}
    with JsonlLog(out / PREDICTIONS) as log:
        groups: dict[str, list[Query]] = {}
        for q in sorted(queries, key=lambda q: q.time_s):
            if q.qid in log:
                continue
            groups.setdefault(q.source, []).append(Query(q.qid, q.time_s, query_prompt(q),
                                                         max_new_tokens=max_new_tokens))
        formats.check_videos(groups)

        def on_result(_src: str, res: QueryResult) -> None:
            q = by_id[res.qid]
            parsed, correct = score_query(q, res.reply)
            rec = {"qid": q.qid, "benchmark": "ovobench", "item_id": q.item_id, "video": q.video, "task": q.task,
                   "category": q.category, "time_s": q.time_s, "prompt": query_prompt(q), **res.to_dict(),
                   "parsed": parsed, "gold": q.gold, "correct": correct}
            for k in ("probes", "fired_at_s"):
                rec.pop(k, None)
            log.append(rec)

        run_videos(agent, groups, on_result, watch_kwargs=watch_kwargs, desc="OVO-Bench", show_progress=show_progress)
        records = [log.records[q.qid] for q in queries if q.qid in log]
    summary = {"benchmark": "ovobench", "bench_file": os.path.basename(bench_path),
               "model": getattr(agent, "model_name", None), "n_queries": len(queries),
               **scoring.ovo_aggregate(records)}
    write_summary(out, summary, render_markdown(summary))
    return summary


def render_markdown(summary: dict[str, Any]) -> str:
    """Overall, per-category and per-task tables."""
    cats = summary["categories"]
    rows = []
    for cat, tasks in formats.OVO_CATEGORIES.items():
        for t in tasks:
            if t in summary["tasks"]:
                v = summary["tasks"][t]
                rows.append((cat, t, v["n"], v["accuracy"]))
    return "\n".join([
        f"# OVO-Bench — {summary.get('model')}\n",
        f"Overall (mean of categories): **{_f(summary['overall'])}** over {summary['n']} queries/probes.\n",
        markdown_table(["category", "score"], [(c, cats.get(c)) for c in formats.OVO_CATEGORIES if c in cats]),
        markdown_table(["category", "task", "n", "score"], rows)])


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"
