"""Benchmark file loaders (Inf-Streams, StreamingBench, OVO-Bench, RVS) with one-line errors.

Every loader returns plain dataclasses; a missing file, a missing field or a bad value raises
``FormatError`` (a ValueError) whose message names the file, the row and the field.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from vstream.sources import split_synthetic_events

logger = logging.getLogger(__name__)

SYNTHETIC_PREFIX = "synthetic:"


class FormatError(ValueError):
    """A benchmark file is missing, malformed or lacks a field."""


class MissingVideoError(FormatError):
    """A video named by a benchmark file does not exist."""


# ---- generic readers ----------------------------------------------------------------------------

def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file raises FormatError naming it."""
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"benchmark file not found: {p}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FormatError(f"{p}: not valid JSON (line {e.lineno}: {e.msg})") from None


def read_jsonl(path: str | os.PathLike, *, tolerate_partial_tail: bool = False) -> list[dict]:
    """Read a JSON-lines file (blank lines skipped).

    ``tolerate_partial_tail``: a malformed last line (a run killed mid-write) is dropped with a warning
    instead of raising.
    """
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"benchmark file not found: {p}")
    lines = p.read_text(encoding="utf-8").splitlines()
    rows: list[dict] = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if tolerate_partial_tail and i == len(lines):
                logger.warning("%s: dropping a partial last line (%s)", p, e.msg)
                break
            raise FormatError(f"{p}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise FormatError(f"{p}:{i}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def require(row: dict, name: str, where: str) -> Any:
    """``row[name]``, or FormatError("<where>: missing field 'name'")."""
    if not isinstance(row, dict):
        raise FormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if name not in row or row[name] is None:
        raise FormatError(f"{where}: missing field {name!r}")
    return row[name]


_TS_RE = re.compile(r"^\s*(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)\s*$")


def parse_time(value: Any, where: str = "time") -> float:
    """Seconds from a number, "12.5", "MM:SS" or "HH:MM:SS(.f)"."""
    if isinstance(value, bool):
        raise FormatError(f"{where}: bad time value {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        s = value.strip()
        try:
            return float(s)
        except ValueError:
            pass
        m = _TS_RE.match(s)
        if m:
            h = int(m.group(1) or 0)
            return h * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    raise FormatError(f"{where}: bad time value {value!r} (use seconds or HH:MM:SS)")


def resolve_video(path: str, root: str | os.PathLike | None) -> str:
    """A source spec for ``open_source``: URLs pass through, files join ``root``; a synthetic spec's
    ``events=FILE`` joins ``root``."""
    if not isinstance(path, str) or not path:
        raise FormatError(f"bad video path {path!r}")
    if path.startswith(SYNTHETIC_PREFIX):
        base, events = split_synthetic_events(path)
        if events is None or os.path.isabs(events) or root is None:
            return path
        return f"{base}{',' if ':' in base else ':'}events={Path(root) / events}"
    if "://" in path:
        return path
    p = Path(path).expanduser()
    if not p.is_absolute() and root is not None:
        p = Path(root) / p
    return str(p)


def check_videos(sources: Iterable[str]) -> None:
    """Raise MissingVideoError naming the first missing video file (and how many more are missing)."""
    missing = []
    for s in dict.fromkeys(sources):
        if s.startswith(SYNTHETIC_PREFIX):
            events = split_synthetic_events(s)[1]
            if events and not os.path.isfile(events):
                raise MissingVideoError(f"synthetic events file not found: {events} (named by {s!r})")
        elif "://" not in s and not os.path.isfile(s):
            missing.append(s)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MissingVideoError(f"video file not found: {missing[0]}{more}; check the path or pass --video-root DIR")


def video_matches(source: str, wanted: set[str] | None, *extra_names: str) -> bool:
    """True when ``wanted`` is None or names this video (full path, relative path, file name or stem)."""
    if not wanted:
        return True
    names = {source, os.path.basename(source), Path(source).stem, *extra_names}
    names |= {os.path.basename(n) for n in extra_names if n} | {Path(n).stem for n in extra_names if n}
    return bool(names & wanted)


def _as_list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise FormatError(f"{where}: expected a list, got {type(value).__name__}")
    return value


# ---- Inf-Streams-Eval ---------------------------------------------------------------------------

@dataclass
class InfStreamsVideo:
    """One metadata row: a video and its word-level ASR ``[(ws, we, word)]``."""

    video: str  # as written in the file (relative path)
    source: str  # resolved path or spec
    words: list[tuple[float, float, str]]
    n_inverted: int = 0  # rows with ws > we (kept; they exist in the published file)

    @property
    def end_time(self) -> float:
        """End of the ASR: the largest time stamp (rows with ws > we included)."""
        return max((max(ws, we) for ws, we, _ in self.words), default=0.0)

    def previous_text(self, start_s: float) -> str:
        """ASR words that start before ``start_s``, joined with spaces (the run's previous text)."""
        return " ".join(w.strip() for ws, _, w in self.words if ws < start_s and w.strip())


@dataclass
class InfStreamsWindow:
    """One scoring window: reference segments ``[(s, e, text)]`` of one video."""

    index: int
    video: str
    title: str
    segments: list[tuple[float, float, str]]
    preasr: str = ""

    @property
    def start(self) -> float:
        return min((min(s, e) for s, e, _ in self.segments), default=0.0)

    @property
    def end(self) -> float:
        return max((max(s, e) for s, e, _ in self.segments), default=0.0)

    @property
    def reference_text(self) -> str:
        return " ".join(t.strip() for _, _, t in self.segments if t.strip())


def _triples(rows: Any, where: str) -> tuple[list[tuple[float, float, str]], int]:
    out: list[tuple[float, float, str]] = []
    inverted = 0
    for j, r in enumerate(_as_list(rows, where)):
        if not isinstance(r, (list, tuple)) or len(r) < 3:
            raise FormatError(f"{where}[{j}]: expected [start, end, text], got {r!r}")
        s, e = parse_time(r[0], f"{where}[{j}][0]"), parse_time(r[1], f"{where}[{j}][1]")
        inverted += s > e
        out.append((s, e, str(r[2])))
    return out, inverted


def load_infstreams_metadata(path: str | os.PathLike, video_root: str | None = None) -> list[InfStreamsVideo]:
    """``eval_all_metadata.jsonl``: ``{"video", "content": [[ws, we, word], ...]}`` per line."""
    root = video_root if video_root is not None else str(Path(path).parent)
    out = []
    for i, row in enumerate(read_jsonl(path), 1):
        where = f"{path}:{i}"
        video = require(row, "video", where)
        words, inverted = _triples(require(row, "content", where), f"{where} content")
        if inverted:
            logger.debug("%s: %d ASR rows with ws > we", where, inverted)
        out.append(InfStreamsVideo(video=video, source=resolve_video(video, root), words=words, n_inverted=inverted))
    return out


def load_infstreams_windows(path: str | os.PathLike) -> list[InfStreamsWindow]:
    """Scoring windows: ``{"video", "title", "content": [[s, e, text], ...], "preasr"}`` per line."""
    out = []
    for i, row in enumerate(read_jsonl(path), 1):
        where = f"{path}:{i}"
        segments, _ = _triples(require(row, "content", where), f"{where} content")
        out.append(InfStreamsWindow(index=i - 1, video=require(row, "video", where), title=str(row.get("title", "")),
                                    segments=segments, preasr=str(row.get("preasr") or "")))
    return out


def load_commentary_items(path: str | os.PathLike) -> dict[str, list[dict]]:
    """A run's commentary, per video: accepts per-chunk lines or merged per-video lines (both carry
    ``"video"`` and ``"items": [{"response", "start_time", "end_time"}]``). Items are sorted by time."""
    out: dict[str, list[dict]] = {}
    seen: dict[str, set] = {}
    for i, row in enumerate(read_jsonl(path, tolerate_partial_tail=True), 1):
        where = f"{path}:{i}"
        video = require(row, "video", where)
        for j, it in enumerate(_as_list(require(row, "items", where), f"{where} items")):
            iw = f"{where} items[{j}]"
            item = {"response": str(require(it, "response", iw)),
                    "start_time": parse_time(require(it, "start_time", iw), iw),
                    "end_time": parse_time(require(it, "end_time", iw), iw)}
            key = (item["start_time"], item["end_time"])
            if key in seen.setdefault(video, set()):
                continue  # the same chunk written twice (a per-chunk file concatenated with a merged one)
            seen[video].add(key)
            out.setdefault(video, []).append(item)
    for items in out.values():
        items.sort(key=lambda it: (it["end_time"], it["start_time"]))
    return out


# ---- StreamingBench -----------------------------------------------------------------------------

SB_REALTIME_TASKS = ("Object Perception", "Causal Reasoning", "Clips Summarization", "Attribute Perception",
                     "Event Understanding", "Text-Rich Understanding", "Prospective Reasoning",
                     "Spatial Understanding", "Action Perception", "Counting",
                     # the names the official data files use for four of them (questions_real.json)
                     "Object Recognition", "Attribute Recognition", "Action Recognition", "Clips Summarize")
SB_OMNI_TASKS = ("Emotion Recognition", "Scene Understanding", "Source Discrimination", "Multimodal Alignment")
SB_CONTEXTUAL_TASKS = ("Misleading Context Understanding", "Anomaly Context Understanding",
                       "Sequential Question Answering", "Proactive Output")
#: tasks shipped in the official questions_omni.json besides the omni-source ones
SB_OMNI_FILE_TASKS = SB_OMNI_TASKS + ("Misleading Context Understanding", "Anomaly Context Understanding")


def sb_group(task_type: str) -> str:
    """StreamingBench task group: "real-time", "omni-source" or "contextual" (unknown tasks: real-time)."""
    t = task_type.strip().lower()
    if t in {x.lower() for x in SB_OMNI_TASKS}:
        return "omni-source"
    if t in {x.lower() for x in SB_CONTEXTUAL_TASKS}:
        return "contextual"
    return "real-time"


def sb_part(task_type: str) -> str:
    """The official file a task's items come in: "real", "omni", "sqa" or "proactive" (count.py's unit)."""
    t = task_type.strip().lower()
    if t == "sequential question answering":
        return "sqa"
    if t == "proactive output":
        return "proactive"
    if t in {x.lower() for x in SB_OMNI_FILE_TASKS}:
        return "omni"
    return "real"


@dataclass
class SBQuestion:
    """One StreamingBench question."""

    qid: str
    source: str
    video_path: str
    task_type: str
    question: str
    time_s: float
    kind: str  # "mcq" | "sqa" | "proactive" | "omni"
    answer: str = ""  # gold letter (mcq, sqa, omni)
    options: list[str] = field(default_factory=list)
    gt_time_s: float | None = None  # proactive
    gt_output: str = ""  # proactive
    required_ability: str = ""
    time_stamp: str = ""  # as written (the official sequential-QA context quotes it)
    sqa_group: int | None = None  # list-of-lists layout: index of the outer list (one context per group)
    order: int = 0  # position in the file

    @property
    def group(self) -> str:
        return sb_group(self.task_type)

    @property
    def part(self) -> str:
        return sb_part(self.task_type)


def load_streamingbench(path: str | os.PathLike, video_root: str | None = None) -> list[SBQuestion]:
    """StreamingBench JSON: a list of ``{"video_path", "questions": [...]}`` entries, or the sequential-QA
    layout (``questions_sqa.json``): a list of such lists, one per video, whose questions share a context."""
    root = video_root if video_root is not None else str(Path(path).parent)
    data = _as_list(read_json(path), str(path))
    if data and all(isinstance(e, list) for e in data):
        entries = [(g, f"{path} [{g}][{k}]", e) for g, group in enumerate(data) for k, e in enumerate(group)]
    else:
        entries = [(None, f"{path} [{i}]", e) for i, e in enumerate(data)]
    out: list[SBQuestion] = []
    for i, (sqa_group, where, entry) in enumerate(entries):
        video_path = require(entry, "video_path", where)
        source = resolve_video(video_path, root)
        for j, q in enumerate(_as_list(require(entry, "questions", where), f"{where} questions")):
            qw = f"{where} questions[{j}]"
            task = str(require(q, "task_type", qw))
            question = str(require(q, "question", qw))
            raw_ts = require(q, "time_stamp", qw)
            time_s = parse_time(raw_ts, f"{qw} time_stamp")
            qid = str(q.get("id", f"{i}-{j}"))
            base = dict(qid=qid, source=source, video_path=video_path, task_type=task, question=question,
                        time_s=time_s, required_ability=str(q.get("required_ability", "")), time_stamp=str(raw_ts),
                        sqa_group=sqa_group, order=len(out))
            if "ground_truth_time_stamp" in q or task.strip().lower() == "proactive output":
                gt = parse_time(require(q, "ground_truth_time_stamp", qw), f"{qw} ground_truth_time_stamp")
                out.append(SBQuestion(kind="proactive", gt_time_s=gt,
                                      gt_output=str(require(q, "ground_truth_output", qw)), **base))
                continue
            options = [str(o) for o in _as_list(require(q, "options", qw), f"{qw} options")]
            answer = str(require(q, "answer", qw)).strip()
            group = sb_group(task)
            kind = ("omni" if group == "omni-source" else
                    "sqa" if task.strip().lower() == "sequential question answering" else "mcq")
            out.append(SBQuestion(kind=kind, answer=answer, options=options, **base))
    return out


# ---- OVO-Bench ----------------------------------------------------------------------------------

OVO_CATEGORIES = {
    "backward": ("EPM", "ASI", "HLD"),
    "realtime": ("STU", "OJR", "ATR", "ACR", "OCR", "FPD"),
    "forward": ("REC", "SSR", "CRR"),
}
OVO_TASK_CATEGORY = {t: c for c, ts in OVO_CATEGORIES.items() for t in ts}


@dataclass
class OVOQuery:
    """One OVO-Bench query: an MCQ (backward / real-time) or one forward probe (REC / SSR / CRR)."""

    qid: str
    item_id: str
    task: str
    source: str
    video: str
    time_s: float
    question: str = ""  # MCQ question, CRR question, REC activity, SSR step
    options: list[str] = field(default_factory=list)
    gold: Any = None  # MCQ: letter; REC: int count; SSR/CRR: bool (yes)
    item: dict = field(default_factory=dict, repr=False)  # the benchmark item as read (official result files)
    probe: int | None = None  # forward tasks: index into item["test_info"]

    @property
    def category(self) -> str:
        return OVO_TASK_CATEGORY[self.task]


def _yes_no_value(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("yes", "no", "1", "0", "true", "false"):
        return value.strip().lower() in ("yes", "1", "true")
    raise FormatError(f"{where}: expected yes/no (1/0), got {value!r}")


def _gold_letter(item: dict, options: list[str], where: str) -> str:
    gt = item.get("gt")
    if isinstance(gt, int) and not isinstance(gt, bool):
        if not 0 <= gt < max(len(options), 1):
            raise FormatError(f"{where}: gt index {gt} out of range for {len(options)} options")
        return chr(ord("A") + gt)
    ans = item.get("answer")
    if isinstance(ans, str) and ans.strip():
        a = ans.strip()
        if len(a) == 1 and a.upper().isalpha():
            return a.upper()
        for k, o in enumerate(options):
            if o.strip() == a or re.sub(r"^[A-Z][.)]\s*", "", o.strip()) == a:
                return chr(ord("A") + k)
    if isinstance(gt, str) and len(gt.strip()) == 1 and gt.strip().isalpha():
        return gt.strip().upper()
    raise FormatError(f"{where}: missing field 'gt' (index of the correct option)")


def load_ovobench(path: str | os.PathLike, video_root: str | None = None) -> list[OVOQuery]:
    """OVO-Bench JSON list; forward items expand into one query per ``test_info`` probe."""
    root = video_root if video_root is not None else str(Path(path).parent)
    data = read_json(path)
    out: list[OVOQuery] = []
    for i, item in enumerate(_as_list(data, str(path))):
        where = f"{path} [{i}]"
        task = str(require(item, "task", where)).strip().upper()
        if task not in OVO_TASK_CATEGORY:
            raise FormatError(f"{where}: unknown task {task!r}; known: {', '.join(OVO_TASK_CATEGORY)}")
        video = require(item, "video", where)
        source = resolve_video(video, root)
        item_id = str(item.get("id", i))
        if OVO_TASK_CATEGORY[task] != "forward":
            options = [str(o) for o in _as_list(require(item, "options", where), f"{where} options")]
            out.append(OVOQuery(qid=item_id, item_id=item_id, task=task, source=source, video=video,
                                time_s=parse_time(require(item, "realtime", where), f"{where} realtime"),
                                question=str(require(item, "question", where)), options=options,
                                gold=_gold_letter(item, options, where), item=item))
            continue
        if task == "REC":
            text = str(require(item, "activity", where))
        elif task == "SSR":
            text = ""  # per probe: the step
        else:
            text = str(require(item, "question", where))
        for k, probe in enumerate(_as_list(require(item, "test_info", where), f"{where} test_info")):
            pw = f"{where} test_info[{k}]"
            t = parse_time(require(probe, "realtime", pw), f"{pw} realtime")
            if task == "REC":
                count = require(probe, "count", pw)
                try:
                    gold: Any = int(count)
                except (TypeError, ValueError):
                    raise FormatError(f"{pw}: count must be an integer, got {count!r}") from None
                q = text
            elif task == "SSR":
                q = str(require(probe, "step", pw))
                gold = _yes_no_value(require(probe, "type", pw), f"{pw} type")
            else:
                q = text
                gold = _yes_no_value(require(probe, "type", pw), f"{pw} type")
            out.append(OVOQuery(qid=f"{item_id}#{k}", item_id=item_id, task=task, source=source, video=video,
                                time_s=t, question=q, gold=gold, item=item, probe=k))
    return out


# ---- RVS-Ego / RVS-Movie ------------------------------------------------------------------------

@dataclass
class RVSQuestion:
    """One open-ended RVS question, asked at ``end_time``."""

    qid: str
    video_id: str
    source: str
    question: str
    answer: str
    start_s: float
    time_s: float  # end_time: the question sees the stream up to here


def load_rvs(path: str | os.PathLike, video_root: str | None = None) -> list[RVSQuestion]:
    """RVS JSON (a list, or JSONL) of ``{"video_id", "video_path", "duration", "conversations": [...]}``."""
    root = video_root if video_root is not None else str(Path(path).parent)
    rows = read_jsonl(path) if str(path).endswith(".jsonl") else _as_list(read_json(path), str(path))
    out = []
    for i, entry in enumerate(rows):
        where = f"{path} [{i}]"
        vid = str(entry.get("video_id") or Path(str(require(entry, "video_path", where))).stem)
        source = resolve_video(require(entry, "video_path", where), root)
        for j, c in enumerate(_as_list(require(entry, "conversations", where), f"{where} conversations")):
            cw = f"{where} conversations[{j}]"
            out.append(RVSQuestion(qid=f"{vid}#{j}", video_id=vid, source=source,
                                   question=str(require(c, "question", cw)), answer=str(require(c, "answer", cw)),
                                   start_s=parse_time(c.get("start_time", 0.0), f"{cw} start_time"),
                                   time_s=parse_time(require(c, "end_time", cw), f"{cw} end_time")))
    return out
