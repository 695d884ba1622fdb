"""Write data/sample.mp4 (12 s, 10 fps, 160x120, H.264) and data/sample.json (its scripted events).

The clip is a SyntheticSource scene with scripted events: a red square appears at 2 s, slide texts,
a counter and a clock. Deterministic: running it again gives the same frames.

    python data/make_sample.py [--out-dir data]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vstream.sources import FileSource, SyntheticSource, write_video  # noqa: E402

logger = logging.getLogger("make_sample")

SEED = 0
FPS = 10.0
DURATION_S = 12.0
SIZE = (160, 120)  # (width, height)

#: Scripted events; "what" is the plain-English description used by tests and docs.
EVENTS = [
    {"start_s": 2.0, "end_s": None, "kind": "shape", "shape": "square", "color": "red", "pos": [0.78, 0.55],
     "size": 0.22, "what": "a red square appears on the right"},
    {"start_s": 4.0, "end_s": 7.0, "kind": "text", "text": "SLIDE 1: photosynthesis", "pos": [0.05, 0.30],
     "what": "a slide caption reads 'SLIDE 1: photosynthesis'"},
    {"start_s": 8.0, "end_s": 11.0, "kind": "text", "text": "SLIDE 2: chlorophyll", "pos": [0.05, 0.30],
     "what": "a slide caption reads 'SLIDE 2: chlorophyll'"},
    {"start_s": 9.0, "end_s": 12.0, "kind": "shape", "shape": "circle", "color": "blue", "pos": [0.25, 0.60],
     "size": 0.18, "velocity": [0.15, 0.0], "what": "a blue circle appears on the left and moves right"},
    {"start_s": 0.0, "end_s": None, "kind": "counter", "label": "COUNT", "start": 0, "step": 1, "every_s": 2.0,
     "pos": [0.60, 0.14], "what": "a yellow counter 'COUNT n' goes up by one every 2 seconds (0 at 0 s)"},
]

#: Questions a viewer could answer from the clip, with the time after which the answer is visible.
QUESTIONS = [
    {"time_s": 3.0, "question": "What color is the square that appeared?", "answer": "red"},
    {"time_s": 7.0, "question": "What was the topic of the first slide?", "answer": "photosynthesis"},
    {"time_s": 11.0, "question": "What was written on the second slide?", "answer": "SLIDE 2: chlorophyll"},
    {"time_s": 12.0, "question": "What number does the counter show at the end?", "answer": "5"},
    {"time_s": 12.0, "question": "What shape appeared after the second slide started?", "answer": "a blue circle"},
]


def make_source() -> SyntheticSource:
    """The SyntheticSource the sample clip is rendered from."""
    events = [{k: v for k, v in e.items() if k != "what"} for e in EVENTS]
    return SyntheticSource(seed=SEED, duration_s=DURATION_S, fps=FPS, size=SIZE, events=events,
                           caption="vstream sample", n_shapes=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    video = args.out_dir / "sample.mp4"
    src = make_source()
    write_video(video, (f.rgb for f in src), FPS, codec="h264")
    facts = FileSource(video)
    meta = {
        "video": video.name,
        "duration_s": DURATION_S,
        "fps": FPS,
        "width": SIZE[0],
        "height": SIZE[1],
        "frames": facts.n_frames,
        "generator": {"source": "SyntheticSource", "seed": SEED, "caption": "vstream sample", "n_shapes": 1,
                      "script": "data/make_sample.py"},
        "always": ["a caption 'vstream sample' at the top", "a clock mm:ss.s at the bottom left",
                   "one small shape bouncing around"],
        "events": EVENTS,
        "questions": QUESTIONS,
    }
    (args.out_dir / "sample.json").write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("wrote %s (%d bytes, %d frames) and sample.json", video, video.stat().st_size, facts.n_frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
