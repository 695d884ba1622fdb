"""Generate the synthetic benchmark (StreamingBench, OVO-Bench, RVS and Inf-Streams formats).

    python data/make_synthetic_bench.py --out data/synthetic_bench [--videos 3] [--duration 30]
                                        [--long-videos 1 --long-duration 3600]

Short videos are written as MP4 files under OUT/videos; long-stream variants are "synthetic:...,
events=events/NAME.json" specs rendered on the fly by the harness (nothing large is stored). Run the
protocols on the result with `vstream eval streamingbench OUT/streamingbench.json --out runs/sb ...`,
or generate and run everything at once with `vstream eval synthetic --out runs/syn`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from eval.synthetic import make_bench  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "synthetic_bench"))
    ap.add_argument("--videos", type=int, default=3, help="short videos, written as MP4 files")
    ap.add_argument("--duration", type=int, default=30, help="short video length in seconds (>= 10)")
    ap.add_argument("--fps", type=float, default=4.0, help="frame rate of the short videos")
    ap.add_argument("--size", default="160x120", help="short video frame size WxH (width >= 64)")
    ap.add_argument("--long-videos", type=int, default=0, help="long-stream variants (specs, not stored)")
    ap.add_argument("--long-duration", type=int, default=3600, help="long video length in seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--specs-only", action="store_true", help="no MP4 files: every video is a synthetic spec")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
        bench = make_bench(args.out, videos=args.videos, duration_s=args.duration, fps=args.fps, size=(w, h),
                           seed=args.seed, long_videos=args.long_videos, long_duration_s=args.long_duration,
                           write_videos=not args.specs_only)
    except ValueError as e:
        print(f"make_synthetic_bench: error: {e}", file=sys.stderr)
        return 2
    for name in ("streamingbench", "ovobench", "rvs", "infstreams_metadata", "infstreams_windows"):
        print(f"{name}: {getattr(bench, name)}")
    print(f"suggested Inf-Streams --start-time: {bench.infstreams_start_s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
