"""StreamingBench: real-time MCQ, sequential QA with gold history, proactive output; omni items with speech.

Omni-source items are asked like MCQs on a session that recognises the audio track into memory (ASR on
for the run when any is selected; a video without audio is watched vision only).

Outputs in ``out_dir``: predictions.jsonl (one record per question), summary.json, summary.md.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from eval import formats, prompts, scoring
from eval.formats import SBQuestion
from eval.protocol import Query, QueryResult, run_videos
from eval.runner import (JsonlLog, markdown_table, parse_video_filter, prepare_out_dir, take,
                         write_summary)

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
PROACTIVE_EXTRA_S = 4.0  # polled until ground truth + 4 s


def _query(q: SBQuestion, done: bool, max_new_tokens: int, proactive_tokens: int) -> Query:
    if q.kind == "proactive":
        probe = prompts.proactive_probe_text(q.question, q.gt_output)
        return Query(q.qid, q.time_s, q.question, kind="proactive", max_new_tokens=proactive_tokens,
                     poll_end_s=(q.gt_time_s or q.time_s) + PROACTIVE_EXTRA_S, probe_text=probe,
                     poll_prompt=probe + " Answer yes or no.", done=done)
    hist = None
    if q.kind == "sqa":
        hist = prompts.history_text(q.question, prompts.option_text(q.options, q.answer))
    return Query(q.qid, q.time_s, prompts.mcq_prompt(q.question, q.options), max_new_tokens=max_new_tokens,
                 add_text_after=hist, done=done)


def _record(q: SBQuestion, prompt: str, res: QueryResult | None, tolerance_s: float) -> dict[str, Any]:
    rec: dict[str, Any] = {"qid": q.qid, "benchmark": "streamingbench", "video": q.video_path, "task": q.task_type,
                           "group": q.group, "kind": q.kind, "time_s": q.time_s, "prompt": prompt}
    if res is None:  # omni item: needs the audio track
        rec.update(reply=None, parsed=None, answer=q.answer, correct=None, skip_reason="needs audio")
        return rec
    rec.update({k: v for k, v in res.to_dict().items() if k != "qid"})
    if q.kind != "proactive":
        rec.pop("fired_at_s")
        rec.pop("probes")
    if q.kind == "proactive":
        rec.update(gt_time_s=q.gt_time_s, gt_output=q.gt_output, parsed=res.fired_at_s,
                   correct=scoring.proactive_correct(res.fired_at_s, res.reply, q.gt_time_s or 0.0, q.gt_output,
                                                     tolerance_s))
    else:
        rec.update(parsed=scoring.first_letter(res.reply), answer=q.answer,
                   correct=scoring.streamingbench_correct(res.reply, q.answer))
    return rec


def run_streamingbench(agent: Any, bench_path: str, out_dir: str, *, video_root: str | None = None,
                       limit: int | None = None, videos: Any = None, resume: bool = False, overwrite: bool = False,
                       max_new_tokens: int = 8, proactive_tokens: int = 16, proactive_mode: str = "probe",
                       threshold: float | None = None, tolerance_s: float = 2.0, show_progress: bool = True,
                       watch_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run StreamingBench questions (``limit``: the first N questions) and write predictions + summary."""
    out = prepare_out_dir(out_dir, [PREDICTIONS], resume=resume, overwrite=overwrite)
    wanted = parse_video_filter(videos)
    questions = [q for q in formats.load_streamingbench(bench_path, video_root)
                 if formats.video_matches(q.source, wanted, q.video_path)]
    questions = take(questions, limit)
    if not questions:
        raise ValueError(f"no StreamingBench questions selected from {bench_path}; check --videos / --limit")
    by_id = {q.qid: q for q in questions}
    with JsonlLog(out / PREDICTIONS) as log:
        groups: dict[str, list[Query]] = {}
        prompt_of: dict[str, str] = {}
        for q in sorted(questions, key=lambda q: q.time_s):
            query = _query(q, q.qid in log, max_new_tokens, proactive_tokens)
            prompt_of[q.qid] = query.prompt
            groups.setdefault(q.source, []).append(query)
        formats.check_videos(src for src, qs in groups.items() if any(not x.done for x in qs))

        def on_result(_src: str, res: QueryResult) -> None:
            log.append(_record(by_id[res.qid], prompt_of[res.qid], res, tolerance_s))

        if any(q.kind == "omni" for q in questions):  # omni items need the audio: speech into memory
            watch_kwargs = {**(watch_kwargs or {}), "asr": True}
        run_videos(agent, groups, on_result, watch_kwargs=watch_kwargs, desc="StreamingBench",
                   show_progress=show_progress, threshold=threshold, proactive_mode=proactive_mode)
        records = [log.records[q.qid] for q in questions if q.qid in log]
    summary = {"benchmark": "streamingbench", "bench_file": os.path.basename(bench_path),
               "model": getattr(agent, "model_name", None), "n_questions": len(questions),
               "proactive_mode": proactive_mode, **scoring.streamingbench_aggregate(records)}
    write_summary(out, summary, render_markdown(summary))
    return summary


def render_markdown(summary: dict[str, Any]) -> str:
    """Per-task and per-group accuracy tables."""
    md = [f"# StreamingBench — {summary.get('model')}\n",
          f"Overall accuracy: **{_f(summary['overall'])}** over {summary['n_scored']} scored questions "
          f"({summary['n_skipped']} skipped: {summary['skipped_by_reason'] or 'none'}).\n",
          markdown_table(["group", "n", "accuracy"],
                         [(g, v["n"], v["accuracy"]) for g, v in summary["groups"].items()]),
          markdown_table(["task", "n", "accuracy"],
                         [(t, v["n"], v["accuracy"]) for t, v in summary["tasks"].items()])]
    return "\n".join(md)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}%"
