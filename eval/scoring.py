"""vstream's own parsing and scoring rules (``--protocol vstream``) and the shared aggregations.

The official rules live in eval/official.py. All scores are percentages (0..100) rounded only when rendered.
"""
from __future__ import annotations

import logging
import re
from collections import defaultdict
from typing import Any, Iterable, Mapping

logger = logging.getLogger(__name__)

# ---- parsing replies ----------------------------------------------------------------------------

_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_NUM_RE = re.compile(r"-?\d+(?:\.\d+)?|[A-Za-z]+")


def first_letter(reply: str) -> str | None:
    """StreamingBench: the reply's first non-blank character (None for an empty reply)."""
    s = reply.lstrip()
    return s[0] if s else None


def streamingbench_correct(reply: str, answer: str) -> bool:
    """StreamingBench rule: correct when the first character of the reply equals the answer letter."""
    return first_letter(reply) == answer.strip()[:1] and bool(answer.strip())


def parse_number(reply: str) -> int | None:
    """The first number in the reply (digits, or an English number word up to twenty)."""
    for tok in _NUM_RE.findall(reply):
        if tok[0].isdigit() or tok[0] == "-":
            return int(round(float(tok)))
        if tok.lower() in _NUMBER_WORDS:
            return _NUMBER_WORDS[tok.lower()]
    return None


def rec_correct(reply: str, count: int) -> bool:
    """OVO-Bench REC: the number in the reply equals the gold count."""
    n = parse_number(reply)
    return n is not None and n == int(count)


def parse_yes_no(reply: str) -> bool | None:
    """True for a reply that starts with "yes", False for "no", None otherwise (punctuation ignored)."""
    m = re.match(r"\W*([A-Za-z]+)", reply)
    if not m:
        return None
    w = m.group(1).lower()
    return True if w == "yes" else False if w == "no" else None


def yes_no_correct(reply: str, expected_yes: bool) -> bool:
    """OVO-Bench SSR / CRR: the reply's Yes/No equals the gold type."""
    v = parse_yes_no(reply)
    return v is not None and v == bool(expected_yes)


def proactive_correct(fired_at_s: float | None, reply: str, gt_time_s: float, gt_output: str,
                      tolerance_s: float = 2.0) -> bool:
    """StreamingBench proactive: fired within ±tolerance of the ground truth and the output contains it."""
    if fired_at_s is None:
        return False
    return abs(fired_at_s - gt_time_s) <= tolerance_s + 1e-9 and gt_output.strip().lower() in reply.lower()


# ---- aggregation --------------------------------------------------------------------------------

def _pct(correct: float, total: int) -> float | None:
    return 100.0 * correct / total if total else None


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def accuracy_by(records: Iterable[Mapping[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """``{value of key: {"n", "correct", "accuracy"}}`` over records carrying a boolean ``correct``."""
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        a = acc[str(r[key])]
        a[0] += 1
        a[1] += bool(r["correct"])
    return {k: {"n": n, "correct": c, "accuracy": _pct(c, n)} for k, (n, c) in sorted(acc.items())}


def ovo_aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """OVO-Bench: score per task (mean over its queries/probes), then per category (mean of tasks),
    then overall (mean of categories). Records carry ``task``, ``category`` and ``correct``."""
    records = list(records)
    tasks = accuracy_by(records, "task")
    cat_of = {str(r["task"]): str(r["category"]) for r in records}
    per_cat: dict[str, list[float]] = defaultdict(list)
    for t, v in tasks.items():
        per_cat[cat_of[t]].append(v["accuracy"])
    categories = {c: _mean(v) for c, v in sorted(per_cat.items())}
    return {"tasks": tasks, "categories": categories, "overall": _mean(categories.values()), "n": len(records)}


def streamingbench_aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """StreamingBench: accuracy per task, per group (question-weighted) and overall; skipped items
    (``correct`` is None, e.g. omni items that need audio) are counted, not scored."""
    records = list(records)
    scored = [r for r in records if r.get("correct") is not None]
    skipped = [r for r in records if r.get("correct") is None]
    overall_c = sum(bool(r["correct"]) for r in scored)
    return {"tasks": accuracy_by(scored, "task"), "groups": accuracy_by(scored, "group"),
            "overall": _pct(overall_c, len(scored)), "n_scored": len(scored), "n_skipped": len(skipped),
            "skipped_by_reason": dict(sorted(_count(r.get("skip_reason", "skipped") for r in skipped).items()))}


def _count(values: Iterable[Any]) -> dict[Any, int]:
    out: dict[Any, int] = defaultdict(int)
    for v in values:
        out[v] += 1
    return dict(out)


# ---- Inf-Streams pairwise win rate --------------------------------------------------------------

def window_text(items: Iterable[Mapping[str, Any]], start: float, end: float) -> str:
    """A model's text for a scoring window: its items with end_time in (start, end], in order."""
    return " ".join(str(it["response"]).strip() for it in items
                    if start < float(it["end_time"]) <= end and str(it["response"]).strip())


def pairwise_votes(verdict_ours_first: str | None, verdict_ours_second: str | None) -> tuple[int, int, int]:
    """Votes from one window judged in both orders.

    ``verdict_ours_first``: the judge's "A"/"B" when ours was candidate A; ``verdict_ours_second``:
    when ours was candidate B. None = invalid reply. Returns (votes for ours, votes for other, invalid).
    """
    ours = other = invalid = 0
    for verdict, our_letter in ((verdict_ours_first, "A"), (verdict_ours_second, "B")):
        if verdict not in ("A", "B"):
            invalid += 1
        elif verdict == our_letter:
            ours += 1
        else:
            other += 1
    return ours, other, invalid


def win_rate(judgements: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Win rate = votes for ours / (votes for ours + votes for other), globally and per video.

    Each judgement: ``{"video", "ours_first": "A"|"B"|None, "ours_second": "A"|"B"|None}``.
    """
    per_video: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for j in judgements:
        o, t, inv = pairwise_votes(j.get("ours_first"), j.get("ours_second"))
        v = per_video[str(j["video"])]
        v[0] += o
        v[1] += t
        v[2] += inv
        v[3] += 1

    def rate(o: int, t: int) -> float | None:
        return 100.0 * o / (o + t) if o + t else None

    tot = [sum(v[k] for v in per_video.values()) for k in range(4)]
    return {"win_rate": rate(tot[0], tot[1]), "votes_ours": tot[0], "votes_other": tot[1], "invalid": tot[2],
            "windows": tot[3],
            "per_video": {k: {"win_rate": rate(v[0], v[1]), "votes_ours": v[0], "votes_other": v[1],
                              "invalid": v[2], "windows": v[3]} for k, v in sorted(per_video.items())}}


# ---- RVS ----------------------------------------------------------------------------------------

def rvs_aggregate(judgements: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """RVS: accuracy = share of "yes" and mean score over validly judged answers; invalid counted."""
    judgements = list(judgements)
    valid = [j for j in judgements if j.get("pred") in ("yes", "no") and j.get("score") is not None]
    yes = sum(j["pred"] == "yes" for j in valid)
    return {"accuracy": _pct(yes, len(valid)),
            "mean_score": (sum(float(j["score"]) for j in valid) / len(valid)) if valid else None,
            "judged": len(valid), "invalid": len(judgements) - len(valid)}
