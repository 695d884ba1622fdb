"""The benchmarks' official parsing and scoring rules, reproduced rule for rule (no model, no I/O).

Sources (read, not copied): StreamingBench ``src/data/count.py`` and ``src/benchmark/*.py``; OVO-Bench
``utils/OVOBenchScore.py``; Inf-Streams ``streaming_vlm/eval/model_compete/{judge,score_segments,
merge_score}.py``; RVS ``video_qa/eval/eval_open_ended.py`` (ReKV). Where the official code would crash
on an input (an empty reply, a reply given as a list, an unparsable judge reply) these functions do what
it evidently intends and say so through a ``crash`` flag or count, so summaries can report such cases.
Scores are percentages (the official files hold fractions; published tables print percentages).
"""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from typing import Any, Iterable, Mapping

# ---- StreamingBench ---------------------------------------------------------------------------


def sb_time_s(time_stamp: str) -> int:
    """StreamingBench "HH:MM:SS" -> whole seconds, as the official scripts compute it (a fractional
    second, on which they would crash, is dropped)."""
    return sum(int(float(x)) * 60 ** i for i, x in enumerate(reversed(str(time_stamp).split(":"))))


def sb_mcq_letter(reply: Any) -> str | None:
    """count.py: the reply's first character, unstripped; None when the reply is empty or missing (the
    official script skips those in the sequential-QA branch and crashes on them in the others)."""
    if not isinstance(reply, str) or not reply:
        return None
    return reply[0]


def sb_mcq_correct(reply: Any, answer: str) -> bool | None:
    """count.py: ``reply[0] == answer``; None = not counted (empty reply)."""
    letter = sb_mcq_letter(reply)
    return None if letter is None else letter == answer


def sb_proactive_fires(reply: str) -> bool:
    """StreamingBenchProactive.py: a poll fires when ``'yes' in reply.strip().lower()``."""
    return "yes" in (reply or "").strip().lower()


def sb_proactive_correct(last_time: float | None, last_reply: str, gt_time_s: float,
                         gt_output: str) -> tuple[bool, bool]:
    """count.py: (time correct, answer correct). Time: the last dialog turn's time within [-2, +2] s of the
    ground truth; answer: time correct and ``ground_truth_output`` a case-sensitive substring of the last
    reply. ``last_time`` None = no dialog at all (the official script crashes): both False."""
    if last_time is None:
        return False, False
    time_ok = -2 <= last_time - gt_time_s <= 2
    return time_ok, time_ok and gt_output in (last_reply or "")


def sb_count(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """count.py statistics over scored rows.

    Each row: ``{"task", "part"}`` plus either ``"correct"`` (bool; MCQ / sequential QA; None = not counted)
    or ``"time_correct"`` and ``"answer_correct"`` (proactive). ``part`` is the official file the item
    belongs to ("real", "omni", "sqa", "proactive"); real and omni files get a ``total`` line as in count.py.
    """
    tasks: dict[str, dict[str, Any]] = {}
    parts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    not_counted = 0
    for r in rows:
        task = str(r["task"])
        if "time_correct" in r:
            s = tasks.setdefault(task, {"total": 0, "time_correct": 0, "answer_correct": 0})
            s["total"] += 1
            s["time_correct"] += bool(r["time_correct"])
            s["answer_correct"] += bool(r["answer_correct"])
            continue
        if r.get("correct") is None:
            not_counted += 1
            continue
        s = tasks.setdefault(task, {"total": 0, "correct": 0})
        s["total"] += 1
        s["correct"] += bool(r["correct"])
        if r.get("part") in ("real", "omni"):
            p = parts[str(r["part"])]
            p[0] += 1
            p[1] += bool(r["correct"])
    for s in tasks.values():
        n = s["total"]
        if "time_correct" in s:
            s["time_accuracy"] = 100.0 * s["time_correct"] / n if n else 0.0
            s["answer_accuracy"] = 100.0 * s["answer_correct"] / n if n else 0.0
        else:
            s["accuracy"] = 100.0 * s["correct"] / n if n else 0.0
    totals = {p: {"total": n, "correct": c, "accuracy": 100.0 * c / n if n else 0.0} for p, (n, c) in parts.items()}
    return {"tasks": tasks, "totals": totals, "not_counted": not_counted}


# ---- OVO-Bench --------------------------------------------------------------------------------

def ovo_mcq_score(response: Any, gt_letter: str) -> int:
    """OVOBenchScore.py backward/real-time: ``int(gt in response)`` (substring for text, membership for a
    list reply, as Python evaluates it); None -> 0."""
    if response is None:
        return 0
    return int(gt_letter in response)


def ovo_rec_score(response: Any) -> tuple[str | None, bool]:
    """(digits, crash): OVOBenchScore.py REC joins every digit run of the reply. A list reply makes the
    official scorer crash (TypeError); its strings are joined first (crash=True). None -> (None, False)."""
    if response is None:
        return None, False
    crash = not isinstance(response, str)
    text = "".join(str(x) for x in response) if crash else response
    return "".join(re.findall(r"\d+", text)), crash


def ovo_rec_correct(response: Any, count: Any) -> tuple[int, bool]:
    """(score, crash) for one REC probe: the joined digits equal ``str(count)``."""
    digits, crash = ovo_rec_score(response)
    return int(digits is not None and digits == str(count)), crash


def ovo_yes_no_score(response: Any, type_: int) -> int:
    """OVOBenchScore.py SSR/CRR: exact "N"/"Y" matching the type, else the case-sensitive "No"/"Yes"
    contained in the reply (membership for a list); None -> 0."""
    if response is None:
        return 0
    if (response == "N" and type_ == 0) or (response == "Y" and type_ == 1):
        return 1
    return int(("No" if type_ == 0 else "Yes") in response)


def ovo_aggregate(scores: Mapping[str, Mapping[str, list[int]]]) -> dict[str, Any]:
    """OVOBenchScore.py: per task 100*sum/len; per category 100 * mean of the task fractions; overall the
    mean of the three categories. ``scores``: {category: {task: [0/1, ...]}} in the official order.

    A category with no result makes the official scorer crash (NameError); the overall is then the mean of
    the categories present and ``categories_missing`` names the others.
    """
    tasks: dict[str, dict[str, Any]] = {}
    cats: dict[str, float] = {}
    for cat, per_task in scores.items():
        fracs = []
        for task, v in per_task.items():
            if not v:
                continue
            tasks[task] = {"category": cat, "n": len(v), "correct": int(sum(v)), "score": 100 * sum(v) / len(v)}
            fracs.append(sum(v) / len(v))
        if fracs:
            cats[cat] = 100 * sum(fracs) / len(fracs)
    present = [c for c in ("backward", "realtime", "forward") if c in cats]
    overall = None
    if len(present) == 3:
        overall = (cats["backward"] + cats["realtime"] + cats["forward"]) / 3
    elif present:
        overall = sum(cats[c] for c in present) / len(present)
    return {"tasks": tasks, "categories": cats, "overall": overall,
            "categories_missing": [c for c in ("backward", "realtime", "forward") if c not in cats]}


# ---- Inf-Streams ------------------------------------------------------------------------------

def inf_vote(reply: Any) -> str:
    """judge.py: "A" when the stripped, upper-cased reply starts with "A", else "B" (never invalid)."""
    return "A" if str(reply or "").strip().upper().startswith("A") else "B"


def inf_window(content: list[list[Any]]) -> tuple[int, int, str]:
    """score_segments.py: (int(first start), int(last end), reference texts joined by newlines)."""
    if not content:
        return 0, 0, ""
    return int(content[0][0]), int(content[-1][1]), "\n".join(str(x[2]) for x in content if len(x) >= 3)


def inf_text(items: Iterable[Mapping[str, Any]], start: int, end: int) -> str:
    """score_segments.py: stripped texts of the items with ``start < int(end_time) <= end``, in order."""
    out = []
    for it in items:
        et = it.get("end_time")
        if et is None:
            continue
        if start < int(et) <= end:
            txt = it.get("response") if "response" in it else it.get("text")
            if isinstance(txt, str) and txt.strip():
                out.append(txt.strip())
    return " ".join(out)


def inf_covers(row: Mapping[str, Any] | None, start: int, end: int) -> bool:
    """score_segments.py: a merged row covers the window when chunk_start <= start and end <= chunk_end."""
    return bool(row) and int(row["chunk_start"]) <= start and end <= int(row["chunk_end"])


def inf_votes(vote_ab: str, vote_ba_raw: str) -> dict[str, Any]:
    """judge_pair + score_segments: the second verdict (B, A order) flipped back; votes and winner."""
    vote_ba = "A" if vote_ba_raw == "B" else "B"
    a = int(vote_ab == "A") + int(vote_ba == "A")
    b = int(vote_ab == "B") + int(vote_ba == "B")
    return {"vote_ab": vote_ab, "vote_ba": vote_ba, "votes": {"A": a, "B": b},
            "winner": "A" if a > b else "B" if b > a else "equal"}


def inf_summarize(segments: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """merge_score.py: dedupe by (video, start, end) keeping the last; win rates rounded to 4 places."""
    key2obj: dict[tuple, Mapping[str, Any]] = {}
    for o in segments:
        key2obj[(o["video"], o["start"], o["end"])] = o
    per: dict[str, list[int]] = {}
    ga = gb = 0
    for o in sorted(key2obj.values(), key=lambda x: (x["video"], x["start"], x["end"])):
        a, b = int(o["votes"]["A"]), int(o["votes"]["B"])
        p = per.setdefault(o["video"], [0, 0])
        p[0] += a
        p[1] += b
        ga += a
        gb += b

    def rates(a: int, b: int) -> dict[str, Any]:
        t = max(1, a + b)
        return {"A": a, "B": b, "win_rate_A": round(a / t, 4), "win_rate_B": round(b / t, 4)}

    return {"per_video": {v: rates(*per[v]) for v in sorted(per)}, "global": rates(ga, gb),
            "segments": len(key2obj)}


# ---- RVS --------------------------------------------------------------------------------------

def rvs_parse(reply: Any) -> dict | None:
    """eval_open_ended.py: ``ast.literal_eval`` of the whole reply; None when that fails or is not a dict
    (the official loop then asks again, without bound)."""
    if not isinstance(reply, str):
        return None
    try:
        obj = ast.literal_eval(reply)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def rvs_summarize(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """eval_open_ended.py: mean of ``int(score)`` over every judged answer; accuracy = yes / (yes + no)
    where "yes" in pred.lower() counts yes, else "no" in it counts no (``prev`` read when ``pred`` is absent).
    A result without a usable score makes the official script crash: counted in ``invalid``, left out."""
    count = score_sum = yes = no = invalid = 0
    for r in results:
        try:
            score = int(r["score"])
            pred = r["pred"] if "pred" in r else r["prev"]
            low = str(pred).lower()
        except (KeyError, TypeError, ValueError):
            invalid += 1
            continue
        count += 1
        score_sum += score
        if "yes" in low:
            yes += 1
        elif "no" in low:
            no += 1
    return {"average_score": score_sum / count if count else None,
            "accuracy": 100.0 * yes / (yes + no) if yes + no else None,
            "yes": yes, "no": no, "judged": count, "invalid": invalid}
