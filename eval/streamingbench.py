"""StreamingBench: real-time MCQ, sequential QA, proactive output; omni-source items with speech in memory.

Omni-source items are asked like the real-time MCQs on a session that recognises the audio track into
memory (ASR is on for the run when any is selected; a video without audio is watched vision only).

``protocol="official"`` (default) runs THUNLP-MT/StreamingBench's protocol: its prompts and option
layout; sequential QA with the earlier questions, options and gold answers inside the prompt; proactive
items polled from time_stamp + 1 to ground truth + 4 s on a stream that starts at time_stamp, firing on
``'yes' in reply.lower()``; scores by ``src/data/count.py`` (first character, per task and per file,
time and answer accuracy apart). ``protocol="vstream"``: our wording, gold history put into memory,
proactive probes on P(yes), one question-weighted overall.

Context: the whole stream as vstream remembers it (default), or ``context_seconds`` (the published main
table uses 60): a recent window of that many seconds and no long-term memory.

Outputs in ``out_dir``: predictions.jsonl, summary.json/.md and ``official_output.json`` (the benchmark
file with every reply under the key ``vstream``, readable by the official count.py).
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
from typing import Any

from eval import formats, official, prompts, scoring
from eval.formats import SBQuestion
from eval.protocol import Query, QueryResult, chunk_seconds_of, configured, run_videos
from eval.runner import JsonlLog, markdown_table, open_run, write_json, write_summary

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
OFFICIAL_OUTPUT = "official_output.json"
MODEL_KEY = "vstream"
PROACTIVE_EXTRA_S = 4.0  # polled until ground truth + 4 s
PROTOCOLS = ("official", "vstream")


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be 'official' or 'vstream', got {protocol!r}")


def context_changes(agent: Any, context_seconds: float | None, watch_kwargs: dict | None) -> dict[str, Any]:
    """Config changes for a context of the last ``context_seconds``: that many seconds of recent window,
    no long-term memory. None = the whole stream (vstream's memory as configured)."""
    if not context_seconds:
        return {}
    if context_seconds <= 0:
        raise ValueError(f"--context-seconds must be > 0, got {context_seconds}")
    cs = chunk_seconds_of(agent, watch_kwargs)
    return {"memory.window_chunks": max(1, math.ceil(context_seconds / cs - 1e-9)), "memory.long_term": False}


def context_label(context_seconds: float | None) -> str:
    return (f"last {context_seconds:g} s before the question (recent window only, no long-term memory)"
            if context_seconds else "whole stream (vstream memory)")


def sqa_contexts(questions: list[SBQuestion]) -> dict[str, str]:
    """Official sequential-QA context for each question: the earlier questions of its group (file order)."""
    ctx: dict[Any, str] = {}
    out: dict[str, str] = {}
    for q in sorted(questions, key=lambda q: q.order):
        if q.kind != "sqa":
            continue
        key = q.sqa_group if q.sqa_group is not None else q.video_path
        out[q.qid] = ctx.get(key, "")
        ctx[key] = prompts.sb_official_sqa_context(ctx.get(key, ""), q.time_stamp, q.question, q.options, q.answer)
    return out


def _query(q: SBQuestion, done: bool, protocol: str, context: str, max_new_tokens: int,
           proactive_tokens: int) -> Query:
    if q.kind == "proactive":
        if protocol == "official":
            query = prompts.SB_PROACTIVE_QUERY.format(q.question, q.gt_output)
            return Query(q.qid, official.sb_time_s(q.time_stamp) + 1, prompts.SB_PROACTIVE_TEMPLATE.format(q.question),
                         kind="proactive", max_new_tokens=proactive_tokens, max_poll_tokens=max_new_tokens,
                         poll_end_s=(q.gt_time_s or 0.0) + PROACTIVE_EXTRA_S, probe_text=query,
                         poll_prompt=prompts.SB_PROACTIVE_TEMPLATE.format(query), done=done)
        probe = prompts.proactive_probe_text(q.question, q.gt_output)
        return Query(q.qid, q.time_s, q.question, kind="proactive", max_new_tokens=proactive_tokens,
                     poll_end_s=(q.gt_time_s or q.time_s) + PROACTIVE_EXTRA_S, probe_text=probe,
                     poll_prompt=probe + " Answer yes or no.", done=done)
    if protocol == "official":
        prompt = (prompts.sb_official_sqa(context, q.question, q.options) if q.kind == "sqa"
                  else prompts.sb_official_mcq(q.question, q.options))
        return Query(q.qid, official.sb_time_s(q.time_stamp), prompt, max_new_tokens=max_new_tokens, done=done)
    hist = prompts.history_text(q.question, prompts.option_text(q.options, q.answer)) if q.kind == "sqa" else None
    return Query(q.qid, q.time_s, prompts.mcq_prompt(q.question, q.options), max_new_tokens=max_new_tokens,
                 add_text_after=hist, done=done)


def _record(q: SBQuestion, prompt: str, res: QueryResult | None, protocol: str, tolerance_s: float) -> dict:
    rec: dict[str, Any] = {"qid": q.qid, "benchmark": "streamingbench", "protocol": protocol, "video": q.video_path,
                           "task": q.task_type, "group": q.group, "part": q.part, "kind": q.kind, "time_s": q.time_s,
                           "prompt": prompt}
    if res is None:  # omni item: needs the audio track
        rec.update(reply=None, parsed=None, answer=q.answer, correct=None, skip_reason="needs audio")
        return rec
    rec.update({k: v for k, v in res.to_dict().items() if k != "qid"})
    if q.kind != "proactive":
        for k in ("fired_at_s", "probes", "dialog"):
            rec.pop(k)
        if protocol == "official":
            rec.update(parsed=official.sb_mcq_letter(res.reply), answer=q.answer,
                       correct=official.sb_mcq_correct(res.reply, q.answer))
        else:
            rec.update(parsed=scoring.first_letter(res.reply), answer=q.answer,
                       correct=scoring.streamingbench_correct(res.reply, q.answer))
        return rec
    rec.update(gt_time_s=q.gt_time_s, gt_output=q.gt_output, parsed=res.fired_at_s)
    if protocol == "official":
        # count.py reads the last dialog turn: the answer at the firing poll, or (never fired) the last poll,
        # which the official loop always makes at ground truth + 4 s even past the end of the video
        last = res.dialog[-1] if res.dialog else None
        last_t = res.fired_at_s if res.fired_at_s is not None else (q.gt_time_s or 0.0) + PROACTIVE_EXTRA_S
        t_ok, a_ok = official.sb_proactive_correct(last_t if last else None, last["content"] if last else "",
                                                   q.gt_time_s or 0.0, q.gt_output)
        rec.update(time_correct=t_ok, answer_correct=a_ok, correct=a_ok)
    else:
        rec["correct"] = scoring.proactive_correct(res.fired_at_s, res.reply, q.gt_time_s or 0.0, q.gt_output,
                                                   tolerance_s)
    return rec


def run_streamingbench(agent: Any, bench_path: str, out_dir: str, *, protocol: str = "official",
                       context_seconds: float | None = None, video_root: str | None = None, limit: int | None = None,
                       videos: Any = None, resume: bool = False, overwrite: bool = False, max_new_tokens: int = 8,
                       proactive_tokens: int = 16, proactive_mode: str | None = None, threshold: float | None = None,
                       tolerance_s: float = 2.0, show_progress: bool = True,
                       watch_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run StreamingBench questions (``limit``: the first N questions) and write predictions + summary."""
    check_protocol(protocol)
    mode = proactive_mode or ("official" if protocol == "official" else "probe")
    out, questions = open_run(out_dir, [PREDICTIONS], formats.load_streamingbench(bench_path, video_root),
                              resume=resume, overwrite=overwrite, videos=videos, limit=limit,
                              what=f"StreamingBench questions from {bench_path}",
                              names=lambda q: (q.source, q.video_path))
    run_agent = configured(agent, context_changes(agent, context_seconds, watch_kwargs))
    by_id = {q.qid: q for q in questions}
    contexts = sqa_contexts(questions) if protocol == "official" else {}
    with JsonlLog(out / PREDICTIONS) as log:
        groups: dict[Any, list[Query]] = {}
        prompt_of: dict[str, str] = {}
        for q in sorted(questions, key=lambda q: q.time_s):
            query = _query(q, q.qid in log, protocol, contexts.get(q.qid, ""), max_new_tokens, proactive_tokens)
            prompt_of[q.qid] = query.prompt
            # official proactive: the clip starts at time_stamp, so the item gets its own stream from there
            key = (q.source, float(official.sb_time_s(q.time_stamp))) if (
                q.kind == "proactive" and protocol == "official") else q.source
            groups.setdefault(key, []).append(query)
        formats.check_videos(k[0] if isinstance(k, tuple) else k for k, qs in groups.items()
                             if any(not x.done for x in qs))

        def on_result(_src: str, res: QueryResult) -> None:
            log.append(_record(by_id[res.qid], prompt_of[res.qid], res, protocol, tolerance_s))

        if any(q.kind == "omni" for q in questions):  # omni items need the audio: speech into memory
            watch_kwargs = {**(watch_kwargs or {}), "asr": True}
        run_videos(run_agent, groups, on_result, watch_kwargs=watch_kwargs, desc="StreamingBench",
                   show_progress=show_progress, threshold=threshold, proactive_mode=mode)
        records = [log.records[q.qid] for q in questions if q.qid in log]
    summary = {"benchmark": "streamingbench", "protocol": protocol, "context": context_label(context_seconds),
               "context_seconds": context_seconds, "bench_file": os.path.basename(bench_path),
               "model": getattr(agent, "model_name", None), "n_questions": len(questions), "proactive_mode": mode,
               **scoring.streamingbench_aggregate(records)}
    if protocol == "official":
        summary["official"] = official.sb_count(r for r in records if r.get("skip_reason") is None)
        summary["empty_replies"] = summary["official"]["not_counted"]
        real = summary["official"]["totals"].get("real")
        summary["overall"] = real["accuracy"] if real else None  # the real-time file's total
        write_official_output(bench_path, records, out / OFFICIAL_OUTPUT)
    write_summary(out, summary, render_markdown(summary))
    return summary


def write_official_output(bench_path: str, records: list[dict], path: Any) -> None:
    """The benchmark file with each reply under ``MODEL_KEY``, as src/eval.py writes it."""
    data = copy.deepcopy(json.loads(open(bench_path, encoding="utf-8").read()))
    by_id = {r["qid"]: r for r in records}
    sqa = bool(data) and isinstance(data[0], list)
    entries = [e for g in data for e in g] if sqa else data
    for i, entry in enumerate(entries):
        for j, q in enumerate(entry.get("questions", [])):
            r = by_id.get(str(q.get("id", f"{i}-{j}")))
            if r is None or r.get("reply") is None:
                continue
            if r["kind"] == "proactive":
                q[MODEL_KEY] = {"answered": r.get("fired_at_s") or False, "dialog_history": r.get("dialog", [])}
            else:
                q[MODEL_KEY] = r["reply"]
    write_json(path, data)


def render_markdown(summary: dict[str, Any]) -> str:
    """Per-task tables (official: count.py's statistics; vstream: per group and task)."""
    head = [f"# StreamingBench — {summary.get('model')}\n",
            f"Protocol: **{summary['protocol']}**; context: {summary['context']}; "
            f"{summary['n_skipped']} skipped ({summary['skipped_by_reason'] or 'none'}).\n"]
    if summary["protocol"] == "official":
        o = summary["official"]
        mcq = [(t, s["total"], s["correct"], s["accuracy"]) for t, s in o["tasks"].items() if "accuracy" in s]
        pro = [(t, s["total"], s["time_accuracy"], s["answer_accuracy"]) for t, s in o["tasks"].items()
               if "time_accuracy" in s]
        body = [markdown_table(["task", "total", "correct", "accuracy %"], mcq)]
        if o["totals"]:
            body.append(markdown_table(["file", "total", "correct", "accuracy %"],
                                       [(p, s["total"], s["correct"], s["accuracy"]) for p, s in o["totals"].items()]))
        if pro:
            body.append(markdown_table(["task", "total", "time accuracy %", "answer accuracy %"], pro))
        body.append(f"Empty replies (not counted, as count.py's sequential-QA branch does): {o['not_counted']}.\n")
        return "\n".join(head + body)
    return "\n".join(head + [
        f"Overall accuracy (vstream, question-weighted): **{_f(summary['overall'])}** over "
        f"{summary['n_scored']} scored questions.\n",
        markdown_table(["group", "n", "accuracy"], [(g, v["n"], v["accuracy"]) for g, v in summary["groups"].items()]),
        markdown_table(["task", "n", "accuracy"], [(t, v["n"], v["accuracy"]) for t, v in summary["tasks"].items()])])


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}%"
