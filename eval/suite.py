"""The synthetic suite: every benchmark runner on a generated synthetic benchmark, one protocol.

Writes ``<out>/<benchmark>/...`` per benchmark and a combined ``<out>/summary.json`` + ``summary.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.infstreams import judge_infstreams, run_infstreams
from eval.ovobench import run_ovobench
from eval.runner import markdown_table, write_summary
from eval.rvs import run_rvs
from eval.streamingbench import check_protocol, run_streamingbench
from eval.synthetic import SyntheticBench

BENCHMARKS = ("streamingbench", "ovobench", "rvs", "infstreams")


def run_synthetic_suite(agent: Any, bench: SyntheticBench, out_dir: str | Path, *, judge: Any,
                        benchmarks: tuple[str, ...] = BENCHMARKS, protocol: str = "official",
                        context_seconds: float | None = None, resume: bool = False, overwrite: bool = False,
                        limit: int | None = None, max_new_tokens: int = 8, show_progress: bool = True,
                        watch_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every selected benchmark on ``bench``; returns the combined summary."""
    check_protocol(protocol)
    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    out = Path(out_dir)
    common = dict(protocol=protocol, resume=resume, overwrite=overwrite, limit=limit, show_progress=show_progress,
                  watch_kwargs=watch_kwargs)
    results: dict[str, Any] = {}
    rows = []
    if "streamingbench" in benchmarks:
        s = run_streamingbench(agent, str(bench.streamingbench), str(out / "streamingbench"),
                               max_new_tokens=max_new_tokens, context_seconds=context_seconds, **common)
        results["streamingbench"] = s
        rows.append(("StreamingBench", "real-time accuracy %" if protocol == "official" else "accuracy %",
                     s["overall"], f"{s['n_scored']} scored, {s['n_skipped']} skipped; {s['context']}"))
    if "ovobench" in benchmarks:
        s = run_ovobench(agent, str(bench.ovobench), str(out / "ovobench"), max_new_tokens=max_new_tokens, **common)
        results["ovobench"] = s
        rows.append(("OVO-Bench", "overall %", s["overall"], f"{s['n']} queries/probes"))
    if "rvs" in benchmarks:
        s = run_rvs(agent, str(bench.rvs), str(out / "rvs"), judge, name="rvs-synthetic",
                    max_new_tokens=max(max_new_tokens, 16), **common)
        results["rvs"] = s
        rows.append(("RVS (synthetic)", "accuracy % / score", s["accuracy"],
                     f"mean score {s['mean_score'] if s['mean_score'] is None else round(s['mean_score'], 2)}"))
    if "infstreams" in benchmarks:
        run = run_infstreams(agent, str(bench.infstreams_metadata), str(out / "infstreams"),
                             start_time=bench.infstreams_start_s, **common)
        s = judge_infstreams(str(out / "infstreams" / "merged.jsonl"), str(bench.infstreams_windows),
                             str(out / "infstreams"), judge, protocol=protocol, resume=resume, overwrite=overwrite,
                             show_progress=show_progress)
        results["infstreams"] = {"run": run, "judge": s}
        rows.append(("Inf-Streams vs reference", "win rate %", s["win_rate"],
                     f"{s['windows']} windows, {s['invalid']} invalid"))
    summary = {"suite": "synthetic", "protocol": protocol, "model": getattr(agent, "model_name", None),
               "bench_dir": str(bench.root), "judge": judge.describe() if judge is not None else None,
               "results": results}
    md = "\n".join([f"# Synthetic benchmark — {summary['model']}\n",
                    f"Protocol: **{protocol}**. Known-answer questions on scripted synthetic videos; judge: "
                    f"{(summary['judge'] or {}).get('judge', 'none')}.\n",
                    markdown_table(["benchmark", "metric", "value", "notes"], rows)])
    write_summary(out, summary, md)
    return summary
