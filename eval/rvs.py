"""RVS-Ego / RVS-Movie: open-ended questions at ``end_time``, judged by an LLM ({"pred", "score"}).

``protocol="official"`` (default) follows ReKV: the question as it is, answers up to 256 tokens with
newlines removed, the Video-ChatGPT judge prompt of ``video_qa/eval/eval_open_ended.py``, its reply read
as a Python literal, ``int(score)`` averaged over every judged answer and accuracy = yes / (yes + no)
with "yes" contained in pred. ``protocol="vstream"``: our judge prompt, strict JSON parsing, the mean of
the scores as given.

Outputs in ``out_dir``: predictions.jsonl, judgements.jsonl, summary.json/.md and (official)
``results.csv`` (ReKV's prediction table) and ``judged.json`` (eval_open_ended.py's combined output).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import csv

from eval import formats, official, prompts, scoring
from eval.protocol import Query, QueryResult, run_videos
from eval.runner import JsonlLog, markdown_table, open_run, progress, write_json, write_summary
from eval.streamingbench import check_protocol

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
JUDGEMENTS = "judgements.jsonl"


def run_rvs(agent: Any, bench_path: str, out_dir: str, judge: Any | None, *, name: str = "rvs",
            protocol: str = "official", video_root: str | None = None, limit: int | None = None, videos: Any = None,
            resume: bool = False, overwrite: bool = False, max_new_tokens: int | None = None,
            show_progress: bool = True, watch_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Answer every selected question in one pass per video, then judge the answers (judge None: skip)."""
    check_protocol(protocol)
    mnt = max_new_tokens or (prompts.RVS_ANSWER_TOKENS if protocol == "official" else 64)
    out, qs = open_run(out_dir, [PREDICTIONS, JUDGEMENTS], formats.load_rvs(bench_path, video_root), resume=resume,
                       overwrite=overwrite, videos=videos, limit=limit, what=f"RVS questions from {bench_path}",
                       names=lambda q: (q.source, q.video_id))
    by_id = {q.qid: q for q in qs}
    with JsonlLog(out / PREDICTIONS) as log:
        groups: dict[str, list[Query]] = {}
        for q in sorted(qs, key=lambda q: q.time_s):
            if q.qid not in log:
                groups.setdefault(q.source, []).append(Query(q.qid, q.time_s, q.question, max_new_tokens=mnt))
        formats.check_videos(groups)

        def on_result(_src: str, res: QueryResult) -> None:
            q = by_id[res.qid]
            rec = {"qid": q.qid, "benchmark": name, "protocol": protocol, "video": q.video_id, "time_s": q.time_s,
                   "prompt": q.question, **res.to_dict(), "answer": q.answer}
            if protocol == "official":
                rec["reply"] = res.reply.replace("\n", "")  # rekv_stream_vqa.py removes newlines
            for k in ("probes", "fired_at_s", "dialog"):
                rec.pop(k, None)
            log.append(rec)

        run_videos(agent, groups, on_result, watch_kwargs=watch_kwargs, desc=name, show_progress=show_progress)
        preds = {q.qid: log.records[q.qid] for q in qs if q.qid in log}
    judged: list[dict] = []
    if judge is not None:
        judged = judge_predictions(list(preds.values()), judge, out / JUDGEMENTS, show_progress=show_progress,
                                   protocol=protocol)
    summary = {"benchmark": name, "protocol": protocol, "bench_file": os.path.basename(bench_path),
               "model": getattr(agent, "model_name", None), "n_questions": len(qs), "answered": len(preds),
               "judge": judge.describe() if judge is not None else None}
    if protocol == "official":
        write_official(list(preds.values()), judged, out)
        s = official.rvs_summarize(j["raw"] for j in judged if j.get("raw") is not None)
        summary.update(accuracy=s["accuracy"], mean_score=s["average_score"], judged=s["judged"],
                       invalid=sum(j.get("raw") is None for j in judged) + s["invalid"], yes=s["yes"], no=s["no"])
    else:
        summary.update(scoring.rvs_aggregate(judged))
    write_summary(out, summary, render_markdown(summary))
    return summary


def judge_predictions(preds: list[dict], judge: Any, path: Any, *, show_progress: bool = True,
                      protocol: str = "vstream") -> list[dict]:
    """Judge each prediction once (resumable through ``path``); returns the judgements of ``preds``."""
    with JsonlLog(path) as jlog, progress(len(preds), "judge", show_progress, unit="q") as bar:
        for p in preds:
            if p["qid"] not in jlog:
                if protocol == "official":
                    raw = judge.rate_official(p["prompt"], p["answer"], p["reply"])
                    jlog.append({"qid": p["qid"], "video": p["video"], "judge": judge.name, "raw": raw,
                                 "valid": raw is not None})
                else:
                    rating = judge.rate_answer(p["prompt"], p["answer"], p["reply"])
                    jlog.append({"qid": p["qid"], "video": p["video"], "judge": judge.name,
                                 "pred": rating["pred"] if rating else None,
                                 "score": rating["score"] if rating else None, "valid": rating is not None})
            bar.update(1)
        return [jlog.records[p["qid"]] for p in preds]


def write_official(preds: list[dict], judged: list[dict], out: Any) -> None:
    """results.csv (video_id, question, answer, pred_answer) and judged.json ({key: [judgement, qa]})."""
    tmp = out / "results.csv.tmp"
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video_id", "question", "answer", "pred_answer"])
        for p in preds:
            w.writerow([p["video"], p["prompt"], p["answer"], p["reply"]])
    os.replace(tmp, out / "results.csv")
    if not judged:
        return
    by_q = {p["qid"]: p for p in preds}
    seen: dict[str, int] = {}
    combined: dict[str, Any] = {}
    for j in judged:
        p = by_q[j["qid"]]
        k = seen[p["video"]] = seen.get(p["video"], -1) + 1  # eval_open_ended.py: "<video_id>_<n>"
        if j.get("raw") is not None:
            combined[f"{p['video']}_{k}"] = [j["raw"], {"question": p["prompt"], "answer": p["answer"],
                                                         "pred_answer": p["reply"]}]
    write_json(out / "judged.json", combined)


def render_markdown(summary: dict[str, Any]) -> str:
    """One-row score table."""
    judge = (summary.get("judge") or {}).get("judge", "none")
    return "\n".join([f"# {summary['benchmark']} — {summary.get('model')}\n", f"Judge: {judge}.\n",
                      markdown_table(["questions", "answered", "judged", "invalid", "accuracy", "mean score"],
                                     [(summary["n_questions"], summary["answered"], summary["judged"],
                                       summary["invalid"], summary["accuracy"], summary["mean_score"])])])
