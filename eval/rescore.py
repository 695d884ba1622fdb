"""`vstream eval score BENCH FILE...`: official numbers from prediction files in the official formats.

- ovobench: ``results/<model>/*.json`` files (or their directory), each ``{"backward": [...], "realtime":
  [...], "forward": [...]}``; the lists of every file are concatenated, as OVO-Bench ``score.py`` does.
- streamingbench: an output JSON of ``src/eval.py`` (the benchmark file with each question's reply under
  the model's key; real/omni list, sequential-QA list of lists, proactive dialog histories).
- infstreams: judge outputs ``score_segments_*.jsonl`` (lines with ``video, start, end, votes``).
- rvs: the judged combined JSON of ``eval_open_ended.py`` (``{key: [{"pred", "score"}, qa], ...}``) or
  the directory of per-question ``KEY.json`` files.
vstream's own runs write these formats too, so the same command rescores them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from eval import official
from eval.formats import FormatError, read_json, read_jsonl

OVO_ORDER = {"backward": ("EPM", "ASI", "HLD"), "realtime": ("OCR", "ACR", "ATR", "STU", "FPD", "OJR"),
             "forward": ("REC", "SSR", "CRR")}
SB_STANDARD_KEYS = {"task_type", "question", "time_stamp", "answer", "options", "required_ability", "cause",
                    "effect", "ground_truth_time_stamp", "ground_truth_output", "audio_path", "id"}


def _files(paths: Sequence[str], suffix: str) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(suffix))
        elif p.is_file():
            out.append(p)
        else:
            raise FormatError(f"prediction file not found: {p}")
    if not out:
        raise FormatError(f"no *{suffix} prediction files in {', '.join(paths)}")
    return out


# ---- OVO-Bench ----------------------------------------------------------------------------------

def score_ovobench(paths: Sequence[str]) -> dict[str, Any]:
    """OVOBenchScore.py numbers for the concatenated result files."""
    results: dict[str, list] = {"backward": [], "realtime": [], "forward": []}
    for f in _files(paths, ".json"):
        data = read_json(f)
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in results):
            raise FormatError(f"{f}: not an OVO-Bench result file (needs lists 'backward', 'realtime', 'forward')")
        for k in results:
            results[k] += data[k]
    scores: dict[str, dict[str, list[int]]] = {c: {} for c in results}
    crashes = 0
    for cat in ("backward", "realtime"):
        for r in results[cat]:  # task order: first appearance, as the official dict fills
            scores[cat].setdefault(r["task"], []).append(official.ovo_mcq_score(r.get("response"), r["ground_truth"]))
    for r in results["forward"]:
        task = r["task"]
        for p in r["test_info"]:
            resp = p.get("response")
            if resp is not None and not isinstance(resp, str):
                # a list reply makes the official forward scoring crash (REC's re.findall): its strings
                # are joined for every forward task, the evident intent, and the case is counted
                resp = "".join(str(x) for x in resp)
                crashes += 1
            if task == "REC":
                s, _ = official.ovo_rec_correct(resp, p["count"])
            elif task in ("SSR", "CRR"):
                s = official.ovo_yes_no_score(resp, p["type"])
            else:
                raise FormatError(f"forward result with unknown task {task!r}")
            scores["forward"].setdefault(task, []).append(s)
    out = official.ovo_aggregate(scores)
    out.update(benchmark="ovobench", files=[str(f) for f in _files(paths, ".json")], official_crash_cases=crashes,
               n={c: sum(len(v) for v in scores[c].values()) for c in scores})
    return out


# ---- StreamingBench -----------------------------------------------------------------------------

def _sb_model_key(questions: list[dict], model: str | None, path: Path) -> str:
    if model:
        return model
    keys = {k for q in questions for k in q if k not in SB_STANDARD_KEYS}
    if len(keys) != 1:
        raise ValueError(f"{path}: cannot tell the model's key among {sorted(keys) or 'none'}; pass --model KEY")
    return keys.pop()


def score_streamingbench(paths: Sequence[str], model: str | None = None) -> dict[str, Any]:
    """count.py statistics for one or more output files (each scored by its own layout)."""
    from eval.formats import sb_part

    rows: list[dict[str, Any]] = []
    crash = 0
    keys = []
    for f in _files(paths, ".json"):
        data = read_json(f)
        if not isinstance(data, list):
            raise FormatError(f"{f}: expected a JSON list (a StreamingBench output file)")
        sqa = bool(data) and isinstance(data[0], list)
        entries = [e for v in data for e in v] if sqa else data
        questions = [q for e in entries for q in e.get("questions", [])]
        key = _sb_model_key(questions, model, f)
        keys.append(key)
        for q in questions:
            if key not in q:
                continue
            reply = q[key]
            task = q["task_type"]
            if "ground_truth_time_stamp" in q:
                hist = (reply or {}).get("dialog_history") or [] if isinstance(reply, dict) else []
                if not hist:
                    crash += 1
                last_t = hist[-1]["time"] if hist else None
                last = hist[-1]["content"] if hist else ""
                t_ok, a_ok = official.sb_proactive_correct(last_t, last, official.sb_time_s(
                    q["ground_truth_time_stamp"]), q["ground_truth_output"])
                rows.append({"task": task, "part": "proactive", "time_correct": t_ok, "answer_correct": a_ok})
                continue
            if not sqa and not reply:
                crash += 1  # count.py indexes reply[0] and crashes on an empty reply
            part = "sqa" if sqa else sb_part(task)
            rows.append({"task": task, "part": part, "correct": official.sb_mcq_correct(reply, q["answer"])})
    out = official.sb_count(rows)
    out.update(benchmark="streamingbench", model_key=keys[0] if len(set(keys)) == 1 else keys,
               official_crash_cases=crash)
    return out


# ---- Inf-Streams --------------------------------------------------------------------------------

def score_infstreams(paths: Sequence[str]) -> dict[str, Any]:
    """merge_score.py summary of judge outputs (score_segments*.jsonl)."""
    segs = []
    for f in _files(paths, ".jsonl"):
        for i, row in enumerate(read_jsonl(f), 1):
            if not {"video", "start", "end", "votes"} <= row.keys():
                raise FormatError(f"{f}:{i}: not a judge output line (needs video, start, end, votes)")
            segs.append(row)
    return {"benchmark": "infstreams", **official.inf_summarize(segs)}


# ---- RVS ----------------------------------------------------------------------------------------

def score_rvs(paths: Sequence[str]) -> dict[str, Any]:
    """eval_open_ended.py averages over a combined judged JSON or a directory of per-question files."""
    results: list[dict] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.glob("*.json")):
                content = read_json(f)
                if isinstance(content, list) and content and isinstance(content[0], dict):
                    results.append(content[0])
            continue
        data = read_json(p)
        if not isinstance(data, dict):
            raise FormatError(f"{p}: expected the combined judged JSON object")
        for k, v in data.items():
            if k in ("average_score", "accuracy"):
                continue
            if not (isinstance(v, list) and v and isinstance(v[0], dict)):
                raise FormatError(f"{p}: entry {k!r} is not [judgement, qa]")
            results.append(v[0])
    return {"benchmark": "rvs", **official.rvs_summarize(results)}


def score_files(bench: str, paths: Sequence[str], model: str | None = None) -> dict[str, Any]:
    """Dispatch on the benchmark name."""
    if bench == "ovobench":
        return score_ovobench(paths)
    if bench == "streamingbench":
        return score_streamingbench(paths, model)
    if bench == "infstreams":
        return score_infstreams(paths)
    if bench == "rvs":
        return score_rvs(paths)
    raise ValueError(f"unknown benchmark {bench!r}; choose ovobench, streamingbench, infstreams or rvs")


def render(summary: dict[str, Any]) -> str:
    """Plain-text lines with every figure to two decimals."""
    b = summary["benchmark"]
    lines = [f"{b} (official rules)"]
    if b == "ovobench":
        for cat, tasks in OVO_ORDER.items():
            for t in tasks:
                if t in summary["tasks"]:
                    lines.append(f"  {cat:9s} {t}: {summary['tasks'][t]['score']:.2f}")
            if cat in summary["categories"]:
                lines.append(f"  {cat} avg: {summary['categories'][cat]:.2f}")
        if summary["overall"] is not None:
            lines.append(f"  overall: {summary['overall']:.2f}")
    elif b == "streamingbench":
        for t, s in summary["tasks"].items():
            if "accuracy" in s:
                lines.append(f"  {t}: {s['accuracy']:.2f} ({s['correct']}/{s['total']})")
            else:
                lines.append(f"  {t}: time {s['time_accuracy']:.2f}, answer {s['answer_accuracy']:.2f} "
                             f"({s['total']})")
        for p, s in summary["totals"].items():
            lines.append(f"  {p} total: {s['accuracy']:.2f} ({s['correct']}/{s['total']})")
    elif b == "infstreams":
        g = summary["global"]
        lines.append(f"  global win rate A: {100 * g['win_rate_A']:.2f} (A={g['A']}, B={g['B']})")
    else:
        acc, avg = summary["accuracy"], summary["average_score"]
        lines.append(f"  accuracy: {'-' if acc is None else format(acc, '.2f')}, average score: "
                     f"{'-' if avg is None else format(avg, '.2f')}")
    crash = summary.get("official_crash_cases") or summary.get("invalid")
    if crash:
        lines.append(f"  cases where the official script would crash (handled as it intends): {crash}")
    return "\n".join(lines)


def write_outputs(summary: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """``score.json`` + ``score.txt`` in ``out_dir``."""
    from eval.runner import write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "score.json", summary)
    (out / "score.txt").write_text(render(summary) + "\n", encoding="utf-8")
    return out / "score.json"

