"""OVO-Bench: backward and real-time MCQs, forward probes (REC / SSR / CRR).

``protocol="official"`` (default): JoeLeelyf/OVO-Bench's prompts (constant.py) and option layout
("A. x; B. y;" on one line), each query sees the video up to ceil(realtime) (utils/chunk_videos.py), and
utils/OVOBenchScore.py's parsing (gold letter contained in the reply; REC: all digits joined equal the
count; SSR/CRR: "Y"/"N" or a case-sensitive "Yes"/"No" contained). ``protocol="vstream"``: our wording,
a query never sees past its own time stamp, the first letter / first number / first yes-no word.
Both average tasks, then categories, then the three categories.

Outputs in ``out_dir``: predictions.jsonl, summary.json/.md and (official) ``results.json`` in the
official result format, which the official score.py and ``vstream eval score ovobench`` read.
"""
from __future__ import annotations

import copy
import logging
import math
import os
from typing import Any

from eval import formats, official, prompts, scoring
from eval.formats import OVOQuery
from eval.protocol import Query, QueryResult, run_videos
from eval.runner import JsonlLog, markdown_table, open_run, write_json, write_summary
from eval.streamingbench import check_protocol

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
RESULTS = "results.json"


def query_prompt(q: OVOQuery, protocol: str = "official") -> str:
    """The prompt for an MCQ or a forward probe."""
    if protocol == "official":
        if q.task == "REC":
            return prompts.OVO_REC_TEMPLATE.format(prompts.OVO_REC_QUESTION.format(q.question))
        if q.task == "SSR":
            return prompts.OVO_SSR_TEMPLATE.format(q.question)
        if q.task == "CRR":
            return prompts.OVO_CRR_TEMPLATE.format(q.question)
        return prompts.OVO_BR_TEMPLATE.format(q.question, prompts.ovo_official_options(q.options))
    if q.task == "REC":
        return prompts.rec_prompt(q.question)
    if q.task == "SSR":
        return prompts.ssr_prompt(q.question)
    if q.task == "CRR":
        return prompts.crr_prompt(q.question)
    return prompts.mcq_prompt(q.question, q.options)


def query_time(q: OVOQuery, protocol: str = "official") -> float:
    """Stream time a query is asked at: ceil(realtime) (official clips) or realtime itself."""
    return float(math.ceil(q.time_s - 1e-9)) if protocol == "official" else q.time_s


def score_query(q: OVOQuery, reply: Any, protocol: str = "official") -> tuple[Any, bool]:
    """(parsed answer, correct) by the protocol's rule for the query's task."""
    if protocol == "official":
        if q.task == "REC":
            digits, _ = official.ovo_rec_score(reply)
            return digits, bool(official.ovo_rec_correct(reply, q.gold)[0])
        if q.task in ("SSR", "CRR"):
            return None, bool(official.ovo_yes_no_score(reply, int(q.gold)))
        return None, bool(official.ovo_mcq_score(reply, q.gold))
    if q.task == "REC":
        return scoring.parse_number(reply), scoring.rec_correct(reply, q.gold)
    if q.task in ("SSR", "CRR"):
        return scoring.parse_yes_no(reply), scoring.yes_no_correct(reply, q.gold)
    letter = scoring.first_letter(reply)
    return letter, letter == q.gold


def run_ovobench(agent: Any, bench_path: str, out_dir: str, *, protocol: str = "official",
                 video_root: str | None = None, limit: int | None = None, videos: Any = None, resume: bool = False,
                 overwrite: bool = False, max_new_tokens: int = 8, show_progress: bool = True,
                 watch_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run OVO-Bench (``limit``: the first N queries/probes) and write predictions + summary."""
    check_protocol(protocol)
    out, queries = open_run(out_dir, [PREDICTIONS], formats.load_ovobench(bench_path, video_root), resume=resume,
                            overwrite=overwrite, videos=videos, limit=limit,
                            what=f"OVO-Bench queries from {bench_path}", names=lambda q: (q.source, q.video))
    by_id = {q.qid: q for q in queries}
    with JsonlLog(out / PREDICTIONS) as log:
        groups: dict[str, list[Query]] = {}
        for q in sorted(queries, key=lambda q: query_time(q, protocol)):
            if q.qid in log:
                continue
            groups.setdefault(q.source, []).append(Query(q.qid, query_time(q, protocol), query_prompt(q, protocol),
                                                         max_new_tokens=max_new_tokens))
        formats.check_videos(groups)

        def on_result(_src: str, res: QueryResult) -> None:
            q = by_id[res.qid]
            parsed, correct = score_query(q, res.reply, protocol)
            rec = {"qid": q.qid, "benchmark": "ovobench", "protocol": protocol, "item_id": q.item_id,
                   "video": q.video, "task": q.task, "category": q.category, "time_s": q.time_s,
                   "prompt": query_prompt(q, protocol), **res.to_dict(), "parsed": parsed,
                   "gold": q.gold, "correct": correct}
            for k in ("probes", "fired_at_s", "dialog"):
                rec.pop(k, None)
            log.append(rec)

        run_videos(agent, groups, on_result, watch_kwargs=watch_kwargs, desc="OVO-Bench", show_progress=show_progress)
        records = [log.records[q.qid] for q in queries if q.qid in log]
    summary = {"benchmark": "ovobench", "protocol": protocol, "bench_file": os.path.basename(bench_path),
               "model": getattr(agent, "model_name", None), "n_queries": len(queries)}
    if protocol == "official":
        write_json(out / RESULTS, official_results(queries, {r["qid"]: r for r in records}))
        from eval.rescore import score_ovobench

        s = score_ovobench([str(out / RESULTS)])
        summary.update(tasks={t: {"n": v["n"], "correct": v["correct"], "accuracy": v["score"]}
                              for t, v in s["tasks"].items()},
                       categories=s["categories"], overall=s["overall"], n=len(records),
                       categories_missing=s["categories_missing"])
    else:
        summary.update(scoring.ovo_aggregate(records))
    write_summary(out, summary, render_markdown(summary))
    return summary


def official_results(queries: list[OVOQuery], records: dict[str, dict]) -> dict[str, list]:
    """utils/OVOBench.py's result layout: backward/realtime rows, forward items with test_info replies."""
    out: dict[str, list] = {"backward": [], "realtime": [], "forward": []}
    forward: dict[str, dict] = {}
    for q in queries:
        r = records.get(q.qid)
        if r is None:
            continue
        if q.category != "forward":
            out[q.category].append({"id": q.item.get("id", q.item_id), "video": q.video, "task": q.task,
                                    "question": q.question, "response": r["reply"], "ground_truth": q.gold})
            continue
        if q.item_id not in forward:
            item = copy.deepcopy(q.item)
            item["test_info"] = [dict(p) for p in item["test_info"]]
            forward[q.item_id] = item
            out["forward"].append(item)
        forward[q.item_id]["test_info"][q.probe]["response"] = r["reply"]
    for item in out["forward"]:  # probes not run (limit) are left out, as the official scorer needs replies
        item["test_info"] = [p for p in item["test_info"] if "response" in p]
    return out


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
        f"Protocol: **{summary['protocol']}**. Overall (mean of categories): **{_f(summary['overall'])}** over "
        f"{summary['n']} queries/probes.\n",
        markdown_table(["category", "score"], [(c, cats.get(c)) for c in formats.OVO_CATEGORIES if c in cats]),
        markdown_table(["category", "task", "n", "score"], rows)])


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"
