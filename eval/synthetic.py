"""Synthetic benchmark: scripted videos with known events and questions in every benchmark's format.

Each video is a ``vstream.sources.SyntheticSource`` with scripted events: three slides with one word
each, an object that appears (a coloured square or circle), a triangle that flashes a known number
of times, a counter and the built-in clock. From the script come questions with known answers in
the StreamingBench, OVO-Bench, RVS and Inf-Streams formats, so every protocol runs end to end offline.

Short videos are written as MP4 files; long-stream variants (an hour or more at low resolution) are
``synthetic:...,events=FILE`` specs rendered on the fly (``events=`` names a small JSON file with the
script; ``vstream.sources.open_source`` reads it).
"""
from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vstream.sources import open_synthetic  # noqa: F401 - lives in vstream.sources; importable here

logger = logging.getLogger(__name__)

WORDS = ("APPLE", "RIVER", "TIGER", "CLOUD", "PIANO", "LEMON", "ROCKET", "FOREST", "CANDLE", "MARBLE", "ORBIT",
         "VELVET")
OBJECT_SHAPES = ("square", "circle")
OBJECT_COLORS = ("red", "green", "blue", "yellow", "orange", "purple")
PROACTIVE_OUTPUT = "FOUND"
MIN_DURATION_S = 10

FILES = {"streamingbench": "streamingbench.json", "ovobench": "ovobench.json", "rvs": "rvs.json",
         "infstreams_metadata": "infstreams_metadata.jsonl", "infstreams_windows": "infstreams_windows.jsonl",
         "manifest": "manifest.json"}


# ---- scripts ------------------------------------------------------------------------------------

@dataclass
class Script:
    """One synthetic video's events; every time is a whole second."""

    name: str
    seed: int
    duration_s: int
    words: list[str]
    slides: list[tuple[int, int]]  # (start, end) of slides 1..3
    shape: str
    color: str
    appear: tuple[int, int]  # the object is on screen in [start, end)
    blink_color: str
    blinks: list[tuple[int, int]]  # the triangle is on screen in each [start, end)
    counter_every_s: int
    distractors: list[str] = field(default_factory=list)

    def events(self) -> list[dict[str, Any]]:
        """SyntheticSource events."""
        ev: list[dict[str, Any]] = []
        for (s, e), w in zip(self.slides, self.words):
            ev.append({"kind": "text", "text": w, "start_s": s, "end_s": e, "pos": [0.05, 0.30], "scale": 1.4})
        ev.append({"kind": "shape", "shape": self.shape, "color": self.color, "start_s": self.appear[0],
                   "end_s": self.appear[1], "pos": [0.70, 0.62], "size": 0.32})
        for s, e in self.blinks:
            ev.append({"kind": "shape", "shape": "triangle", "color": self.blink_color, "start_s": s, "end_s": e,
                       "pos": [0.85, 0.22], "size": 0.22})
        ev.append({"kind": "counter", "label": "COUNT", "start": 0, "step": 1, "every_s": self.counter_every_s,
                   "start_s": 0, "pos": [0.55, 0.02]})
        return ev

    def source_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for SyntheticSource besides seed, duration, fps and size."""
        return {"events": self.events(), "caption": "", "n_shapes": 0, "clock": True}

    def counter_at(self, t: float) -> int:
        """The counter value shown at time ``t``."""
        return int(math.floor(t / self.counter_every_s + 1e-9))

    def blinks_done(self, t: float) -> int:
        """Flashes completed by time ``t``."""
        return sum(e <= t for _, e in self.blinks)

    def narration(self) -> list[tuple[float, float, str]]:
        """What a commentator says, as (start, end, sentence), in time order."""
        segs = [(float(s), f"the slide now shows the word {w.lower()}") for (s, _), w in zip(self.slides, self.words)]
        segs.append((float(self.appear[0]), f"a {self.color} {self.shape} has appeared on the screen"))
        segs += [(float(s), f"the {self.blink_color} triangle flashes") for s, _ in self.blinks]
        segs.sort()
        out = []
        for s, text in segs:
            n = len(text.split())
            out.append((s, round(s + 0.3 * n, 2), text))
        return out


def make_script(name: str, seed: int, duration_s: int) -> Script:
    """A deterministic script for a video of ``duration_s`` seconds (>= 10)."""
    if duration_s < MIN_DURATION_S:
        raise ValueError(f"synthetic videos need duration >= {MIN_DURATION_S} s, got {duration_s}")
    rng = random.Random(seed)
    D = int(duration_s)

    def f(x: float) -> int:
        return int(round(x * D))

    picked = rng.sample(WORDS, 6)
    words, distractors = picked[:3], picked[3:]
    slides = [(f(0.05), f(0.30)), (f(0.35), f(0.60)), (f(0.65), f(0.90))]
    color, blink_color = rng.sample(OBJECT_COLORS, 2)
    length = max(1, round(0.03 * D))
    lo, hi = f(0.08), f(0.40)
    n = max(1, min(rng.randint(2, 3), (hi - lo) // (2 * length)))
    step = (hi - lo) / n
    blinks = [(lo + int(round(i * step)), lo + int(round(i * step)) + length) for i in range(n)]
    return Script(name=name, seed=seed, duration_s=D, words=words, slides=slides, shape=rng.choice(OBJECT_SHAPES),
                  color=color, appear=(f(0.45), f(0.80)), blink_color=blink_color, blinks=blinks,
                  counter_every_s=max(1, round(D / 10)), distractors=distractors)


# ---- questions ----------------------------------------------------------------------------------

def hms(t: float) -> str:
    """Whole seconds as HH:MM:SS."""
    t = int(round(t))
    return f"{t // 3600:02d}:{t % 3600 // 60:02d}:{t % 60:02d}"


def _mcq(rng: random.Random, correct: str, wrong: list[str]) -> tuple[list[str], int]:
    """Four options (correct + 3 wrong) shuffled; returns (plain option texts, index of the correct one)."""
    opts = [correct] + [w for w in wrong if w != correct][:3]
    rng.shuffle(opts)
    return opts, opts.index(correct)


def _lettered(opts: list[str]) -> list[str]:
    return [f"{chr(ord('A') + k)}. {o}" for k, o in enumerate(opts)]


def _numbers(value: int) -> list[str]:
    return [str(value)] + [str(v) for v in (value + 1, value + 2, max(0, value - 1) if value > 0 else value + 3)]


def streamingbench_entry(sc: Script, video_path: str) -> dict[str, Any]:
    """A StreamingBench entry: real-time MCQs, sequential QA, a proactive item and an omni (audio) item."""
    rng = random.Random(sc.seed * 7919 + 1)
    D = sc.duration_s
    qs: list[dict[str, Any]] = []

    def mcq(task: str, t: int, question: str, correct: str, wrong: list[str], ability: str) -> None:
        opts, k = _mcq(rng, correct, wrong)
        qs.append({"task_type": task, "question": question, "time_stamp": hms(t), "answer": chr(ord("A") + k),
                   "options": _lettered(opts), "required_ability": ability})

    s2, e2 = sc.slides[1]
    words_wrong = sc.distractors + [w for w in sc.words]
    mcq("Text-Rich Understanding", (s2 + e2) // 2, "Which word is written on the screen right now?", sc.words[1],
        [w for w in words_wrong if w != sc.words[1]], "ocr")
    t_obj = max(sc.appear[0] + 1, round(0.55 * D))
    mcq("Object Perception", t_obj, "Which shape has just appeared on the screen?", sc.shape,
        [s for s in ("square", "circle", "triangle", "star") if s != sc.shape], "object")
    mcq("Attribute Perception", t_obj, f"What color is the {sc.shape} on the screen?", sc.color,
        [c for c in OBJECT_COLORS if c != sc.color], "attribute")
    t_cnt = round(0.75 * D)
    value = sc.counter_at(t_cnt - 1)
    mcq("Counting", t_cnt, "What number does the COUNT display show now?", str(value), _numbers(value)[1:], "counting")
    mcq("Sequential Question Answering", round(0.62 * D), "Which word did the first slide show?", sc.words[0],
        [w for w in words_wrong if w != sc.words[0]], "memory")
    mcq("Sequential Question Answering", round(0.92 * D), "Which word did the slide right after that one show?",
        sc.words[1], [w for w in words_wrong if w != sc.words[1]], "memory")
    qs.append({"task_type": "Proactive Output", "time_stamp": hms(max(0, sc.appear[0] - 3)),
               "question": f"When a {sc.color} {sc.shape} appears on the screen, say '{PROACTIVE_OUTPUT}'.",
               "ground_truth_time_stamp": hms(sc.appear[0]), "ground_truth_output": PROACTIVE_OUTPUT,
               "required_ability": "proactive"})
    mcq("Emotion Recognition", round(0.5 * D), "What emotion does the narrator's voice convey?", "calm",
        ["angry", "sad", "excited"], "audio")
    qs.sort(key=lambda q: q["time_stamp"])
    return {"time": hms(D), "video_categories": "synthetic", "video_path": video_path, "questions": qs}


def ovobench_items(sc: Script, video_path: str) -> list[dict[str, Any]]:
    """OVO-Bench items: backward (EPM), real-time (OCR, ATR), forward (REC, SSR, CRR)."""
    rng = random.Random(sc.seed * 7919 + 2)
    D = sc.duration_s
    words_wrong = sc.distractors + sc.words
    items: list[dict[str, Any]] = []

    def mcq(task: str, t: int, question: str, correct: str, wrong: list[str]) -> None:
        opts, k = _mcq(rng, correct, wrong)
        items.append({"id": f"{sc.name}-{task}", "task": task, "video": video_path, "realtime": t,
                      "question": question, "options": opts, "answer": correct, "gt": k})

    mcq("EPM", round(0.95 * D), "Which word was shown on the first slide?", sc.words[0],
        [w for w in words_wrong if w != sc.words[0]])
    s3, e3 = sc.slides[2]
    mcq("OCR", (s3 + e3) // 2, "What word is written on the screen right now?", sc.words[2],
        [w for w in words_wrong if w != sc.words[2]])
    mcq("ATR", max(sc.appear[0] + 1, round(0.6 * D)), f"What color is the {sc.shape} on the screen?", sc.color,
        [c for c in OBJECT_COLORS if c != sc.color])
    rec_times = sorted({min(D, e + 1) for _, e in sc.blinks} | {max(1, sc.blinks[0][0])})
    items.append({"id": f"{sc.name}-REC", "task": "REC", "video": video_path,
                  "activity": f"flash the {sc.blink_color} triangle",
                  "start_times": [s for s, _ in sc.blinks], "end_times": [e for _, e in sc.blinks],
                  "test_info": [{"realtime": t, "count": sc.blinks_done(t)} for t in rec_times]})
    steps = [f"show the word {w}" for w in sc.words]
    probes = []
    for k, (s, e) in enumerate(sc.slides):
        mid = (s + e + 1) // 2
        probes.append({"realtime": mid, "step": steps[k], "type": 1})
        probes.append({"realtime": mid, "step": steps[(k + 1) % 3], "type": 0})
    items.append({"id": f"{sc.name}-SSR", "task": "SSR", "video": video_path, "tutorial": "three word slides",
                  "all_steps": steps, "start_time": sc.slides[0][0], "end_time": sc.slides[2][1], "test_info": probes})
    a = sc.appear[0]
    items.append({"id": f"{sc.name}-CRR", "task": "CRR", "video": video_path,
                  "question": f"What color is the {sc.shape} that appears on the screen?", "ask_time": 0,
                  "clue_time": a, "test_info": [{"realtime": max(1, a - 2), "type": 0},
                                                {"realtime": min(D, a + 2), "type": 1}]})
    return items


def rvs_entry(sc: Script, video_path: str) -> dict[str, Any]:
    """An RVS entry with two open-ended questions."""
    s2, e2 = sc.slides[1]
    return {"video_id": sc.name, "video_path": video_path, "duration": sc.duration_s, "conversations": [
        {"question": "What word was written on the second slide?",
         "answer": f"The second slide showed the word {sc.words[1]}.", "start_time": s2,
         "end_time": min(sc.duration_s, e2 + 1)},
        {"question": "What shape appeared on the screen, and what color was it?",
         "answer": f"A {sc.color} {sc.shape} appeared.", "start_time": sc.appear[0],
         "end_time": round(0.85 * sc.duration_s)}]}


def infstreams_rows(sc: Script, video_path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metadata row with word-level ASR, scoring windows). One ASR row has ws > we, as in the real file."""
    words: list[list[Any]] = []
    for s, _, text in sc.narration():
        for i, w in enumerate(text.split()):
            ws = round(s + 0.3 * i, 2)
            words.append([ws, round(ws + 0.25, 2), w])
    if words:
        words[0][0], words[0][1] = words[0][1], words[0][0]  # the published metadata has such rows
    meta = {"video": video_path, "content": words}
    D = sc.duration_s
    windows = []
    bounds = [0, D // 3, 2 * D // 3, D]
    for a, b in zip(bounds, bounds[1:]):
        segs = [[s, e, t] for s, e, t in sc.narration() if a <= s < b]
        if not segs:
            continue
        pre = " ".join(w for ws, we, w in words if min(ws, we) < a)
        windows.append({"video": video_path, "title": f"{sc.name} {a}-{b}s", "content": segs, "preasr": pre})
    return meta, windows


# ---- writing ------------------------------------------------------------------------------------

@dataclass
class SyntheticBench:
    """Paths of a generated synthetic benchmark."""

    root: Path
    streamingbench: Path
    ovobench: Path
    rvs: Path
    infstreams_metadata: Path
    infstreams_windows: Path
    scripts: list[Script]

    @property
    def infstreams_start_s(self) -> int:
        """A start time for the commentary run: a third of the shortest video (windows before it exist)."""
        return min(s.duration_s for s in self.scripts) // 3


def make_bench(out_dir: str | Path, *, videos: int = 3, duration_s: int = 30, fps: float = 4.0,
               size: tuple[int, int] = (160, 120), seed: int = 0, long_videos: int = 0,
               long_duration_s: int = 3600, long_fps: float = 1.0, long_size: tuple[int, int] = (64, 48),
               write_videos: bool = True) -> SyntheticBench:
    """Generate the synthetic benchmark into ``out_dir`` (deterministic: same arguments, same files).

    ``videos`` short videos of ``duration_s`` are written as MP4 files (``write_videos=False``: specs);
    ``long_videos`` long ones are specs with an events file, rendered on the fly.
    """
    from vstream.sources import SyntheticSource, write_video

    if videos < 0 or long_videos < 0 or videos + long_videos == 0:
        raise ValueError("ask for at least one video (--videos N or --long-videos N)")
    w, h = size
    if w % 2 or h % 2:
        raise ValueError(f"frame size must be even for H.264, got {w}x{h}")
    if write_videos and videos and w < 64:
        raise ValueError(f"frame width must be >= 64 for MP4 files (decord misreads narrower H.264), got {w}")
    root = Path(out_dir)
    (root / "events").mkdir(parents=True, exist_ok=True)
    scripts: list[tuple[Script, str]] = []
    for i in range(videos + long_videos):
        is_long = i >= videos
        name = f"syn_long_{i - videos:03d}" if is_long else f"syn_{i:03d}"
        sc = make_script(name, seed * 1000 + i, long_duration_s if is_long else duration_s)
        ev_rel = f"events/{name}.json"
        (root / ev_rel).write_text(json.dumps(sc.source_kwargs(), indent=1), encoding="utf-8")
        vfps, (vw, vh) = (long_fps, long_size) if is_long else (fps, size)
        spec = f"synthetic:seed={sc.seed},duration={sc.duration_s},fps={vfps:g},size={vw}x{vh},events={ev_rel}"
        if is_long or not write_videos:
            path = spec
        else:
            path = f"videos/{name}.mp4"
            out = root / path
            out.parent.mkdir(parents=True, exist_ok=True)
            src = SyntheticSource(seed=sc.seed, duration_s=sc.duration_s, fps=vfps, size=(vw, vh),
                                  **sc.source_kwargs())
            tmp = out.with_suffix(".tmp.mp4")
            write_video(tmp, (f.rgb for f in src), vfps, codec="h264")
            tmp.replace(out)
        scripts.append((sc, path))
    sb = [streamingbench_entry(sc, p) for sc, p in scripts]
    ovo = [it for sc, p in scripts for it in ovobench_items(sc, p)]
    rvs = [rvs_entry(sc, p) for sc, p in scripts]
    metas, wins = [], []
    for sc, p in scripts:
        m, ws = infstreams_rows(sc, p)
        metas.append(m)
        wins += ws
    paths = {k: root / v for k, v in FILES.items()}
    paths["streamingbench"].write_text(json.dumps(sb, indent=1), encoding="utf-8")
    paths["ovobench"].write_text(json.dumps(ovo, indent=1), encoding="utf-8")
    paths["rvs"].write_text(json.dumps(rvs, indent=1), encoding="utf-8")
    paths["infstreams_metadata"].write_text("".join(json.dumps(m) + "\n" for m in metas), encoding="utf-8")
    paths["infstreams_windows"].write_text("".join(json.dumps(x) + "\n" for x in wins), encoding="utf-8")
    paths["manifest"].write_text(json.dumps([{"video": p, **asdict(sc)} for sc, p in scripts], indent=1),
                                 encoding="utf-8")
    logger.info("synthetic benchmark: %d videos in %s", len(scripts), root)
    return SyntheticBench(root=root, streamingbench=paths["streamingbench"], ovobench=paths["ovobench"],
                          rvs=paths["rvs"], infstreams_metadata=paths["infstreams_metadata"],
                          infstreams_windows=paths["infstreams_windows"], scripts=[sc for sc, _ in scripts])
