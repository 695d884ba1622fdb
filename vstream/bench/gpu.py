"""`vstream bench gpu`: the whole GPU suite in one command, sized for one H100 in 9 minutes.

Steps (each its own process, see ``vstream.bench.gpu_steps``; each writes ``gpu_NAME.json`` + ``.png``):

1. ``realtime``: StreamingVLM's setting (qwen2.5-vl-7b-random, 2 fps, <= 768 visual tokens a second,
   20 commentary tokens a chunk, W = 16): sustained FPS, per-token latency late / early.
2. ``ingest``: pure ingest FPS without commentary, same model and chunks; vision / prefill / bookkeeping split.
3. ``memory``: TTFT of a question with ~1 h of long-term memory (1,800 entries of 2-s chunks, disk tier) vs none.
4. ``fleet``: batched Fleet over separate sessions at 1 / 4 / 16 streams.
5. ``bf16``: bf16 streaming vs one full HF forward at real size (max |Δ logit| / max |logit|).
6. ``pipeline``: a 1080p H.264 file, ingest over the decode bound (``vstream.bench.pipeline``).

Each step has a time budget (a step still running when it is spent is stopped and recorded as skipped);
the suite as a whole has one too. A step that fails is recorded with its error line and the others run.
``summary.json`` (device, driver, torch / CUDA / transformers versions, commit, each step's status and
headline numbers against its anchor) is rewritten after every step, so a run cut short still leaves one.
``--smoke`` runs the same steps and code paths with tiny presets on CPU (under 2 minutes).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vstream.bench.common import environment

logger = logging.getLogger(__name__)

BIG = "qwen2.5-vl-7b-random"
TINY = "tiny-qwen2.5-vl"
#: bf16 streaming vs full forward: max |Δ logit| / max |logit| must stay under this (bf16 keeps 8 bits of
#: mantissa, so one rounding is 2^-9 relative; summing orders differ between the cached and the full pass).
BF16_BOUND = 0.05

#: What each figure is measured against: the published anchor, the goal, and which headline number to read.
ANCHORS: dict[str, dict[str, Any]] = {
    "realtime": {"anchor": "StreamingVLM: 8 FPS on one H100", "goal": ">= 16 FPS sustained with commentary",
                 "metric": "sustained_fps", "op": ">=", "value": 16.0},
    "ingest": {"anchor": "ViCoStream: 134 FPS ingest on one A100", "goal": ">= 150 FPS ingest",
               "metric": "ingest_fps", "op": ">=", "value": 150.0},
    "memory": {"anchor": "HERMES: < 30 ms TTFT", "goal": "<= 25 ms TTFT with 1 h of memory",
               "metric": "ttft_1h_ms", "op": "<=", "value": 25.0},
    "fleet": {"anchor": "fleet target", "goal": ">= 4x batched over separate at 16 streams",
              "metric": "speedup_16", "op": ">=", "value": 4.0},
    "bf16": {"anchor": "one full HF forward (same weights, same dtype)", "goal": f"relative error <= {BF16_BOUND}",
             "metric": "relative_error", "op": "<=", "value": BF16_BOUND},
    "pipeline": {"anchor": "the decode bound (decoding the file alone)", "goal": "ingest time close to decode time",
                 "metric": "ratio", "op": None, "value": None},
    "decode": {"anchor": "gpt-fast: static KV cache + CUDA graphs", "goal": ">= 1.3x faster per token than the "
               "dynamic cache, same greedy words", "metric": "graphs_speedup", "op": ">=", "value": 1.3},
}


@dataclass
class Step:
    """One step: its name, time budget (seconds) and the settings its process gets (JSON)."""

    name: str
    budget_s: float
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class SuiteConfig:
    """The suite: its steps in order, the whole run's budget, the device."""

    steps: list[Step]
    total_budget_s: float
    device: str
    smoke: bool
    min_start_s: float = 10.0  # a step is not started with less than this left


def suite_config(smoke: bool, device: str = "cuda") -> SuiteConfig:
    """The full suite (real-size presets on ``device``; 540 s) or the smoke suite (tiny presets, CPU)."""
    m = TINY if smoke else BIG
    # smoke: a small source frame (resizing 720p on 2 CPU cores costs ~1 s a chunk; on a GPU it is nothing)
    rt = dict(model=m, device=device, fps=2.0, chunk_seconds=1.0, max_visual_tokens=768, window=16,
              source_size=[160, 120] if smoke else [1280, 720], frame_side=None if smoke else 1120)
    steps = [
        Step("realtime", 45 if smoke else 115,
             dict(rt, chunks=24 if smoke else 60, commentary_tokens=20, questions=2 if smoke else 3)),
        Step("ingest", 30 if smoke else 60, dict(rt, chunks=20 if smoke else 64)),
        Step("memory", 40 if smoke else 120,
             dict(model=m, device=device, entries=300 if smoke else 1800, window=16, repeats=5 if smoke else 9,
                  size=None if smoke else 224, frames=2, chunk_seconds=2.0, ram_bytes=(1 if smoke else 256) << 20,
                  quantize="none", add_budget_s=15 if smoke else 80)),
        Step("fleet", 45 if smoke else 80,
             dict(model=m, device=device, streams=[1, 4, 16], chunks=3 if smoke else 12, window=2 if smoke else 4,
                  size=32 if smoke else 448, max_batch=16, repeats=1)),
        Step("bf16", 30 if smoke else 60, dict(rt, chunks=3 if smoke else 4, dtype="bfloat16", bound=BF16_BOUND)),
        Step("pipeline", 40 if smoke else 60,
             dict(model=m, device=device, width=320 if smoke else 1920, height=180 if smoke else 1080,
                  seconds=3 if smoke else 20, clip_fps=30, fps=1.0)),
        Step("decode", 30 if smoke else 45, dict(rt, chunks=3 if smoke else 8, tokens=8 if smoke else 64,
                                                   repeats=2 if smoke else 3)),
    ]
    return SuiteConfig(steps=steps, total_budget_s=115 if smoke else 540, device=device, smoke=smoke,
                       min_start_s=5 if smoke else 15)


def device_info() -> dict[str, Any]:
    """Device name, driver, torch / CUDA / transformers versions, commit (``environment()`` plus the GPU's)."""
    import torch
    import transformers

    info = {**environment(), "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "cuda_available": torch.cuda.is_available(), "driver": None, "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu_memory_bytes=int(props.total_memory), multiprocessors=int(props.multi_processor_count))
        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                got = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                     text=True, timeout=20)
                info["driver"] = got.stdout.strip().splitlines()[0] if got.stdout.strip() else None
            except (OSError, subprocess.SubprocessError) as e:
                logger.warning("nvidia-smi did not answer: %s", e)
    return info


def _error_line(log: Path) -> str:
    """The last non-empty line of a step's log (the exception, for a step that raised)."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1][:500] if lines else "no output"


def _goal(name: str, headline: dict[str, Any], smoke: bool) -> bool | None:
    a = ANCHORS[name]
    v = headline.get(a["metric"])
    if smoke or a["op"] is None or not isinstance(v, (int, float)):
        return None  # tiny presets on CPU say nothing about the anchors
    return bool(v >= a["value"]) if a["op"] == ">=" else bool(v <= a["value"])


def run_step(step: Step, out: Path, timeout_s: float, smoke: bool) -> dict[str, Any]:
    """Run one step in its own process (its own process group, stopped at ``timeout_s``); its summary entry."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{step.name}.log"
    result_path = out / f"gpu_{step.name}.json"
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "vstream.bench.gpu_steps", step.name, json.dumps(step.settings), str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    entry: dict[str, Any] = {"step": step.name, "budget_s": step.budget_s, "timeout_s": round(timeout_s, 1),
                             **{k: ANCHORS[step.name][k] for k in ("anchor", "goal")}}
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step's own process group (it and its threads' children)
            proc.wait(timeout=60)
            rc = None
    entry["wall_s"] = round(time.perf_counter() - t0, 2)
    if rc is None:
        entry.update(status="skipped", reason=f"time budget of {timeout_s:.0f} s spent; stopped")
    elif rc != 0:
        entry.update(status="failed", error=_error_line(log), returncode=rc)
    elif not result_path.exists():
        entry.update(status="failed", error=f"the step wrote no {result_path.name}")
    else:
        res = json.loads(result_path.read_text())
        entry["status"] = res.get("status", "ok")
        if entry["status"] != "ok":
            entry["reason"] = res.get("reason", "")
        headline = res.get("headline") or {}
        entry.update(json=result_path.name, headline=headline, build=res.get("build"),
                     goal_met=_goal(step.name, headline, smoke))
        if (out / f"gpu_{step.name}.png").exists():
            entry["png"] = f"gpu_{step.name}.png"
    logger.info("step %s: %s (%.1f s)", step.name, entry["status"], entry["wall_s"])
    return entry


def _write_summary(summary: dict[str, Any], out: Path) -> Path:
    """summary.json via a temp file and a rename (a run cut short leaves the last whole one)."""
    p = out / "summary.json"
    tmp = out / ".summary.json.tmp"
    with open(tmp, "w") as fh:
        fh.write(json.dumps(summary, indent=1))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p)
    return p


def run_suite(cfg: SuiteConfig, out: Path, only: list[str] | None = None) -> dict[str, Any]:
    """Run the suite's steps in order within their budgets; writes ``out/summary.json``, returns it."""
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    summary: dict[str, Any] = {"bench": "gpu", "smoke": cfg.smoke, "device": device_info(),
                               "total_budget_s": cfg.total_budget_s, "config": asdict(cfg), "steps": {}}
    _write_summary(summary, out)
    for step in cfg.steps:
        if only is not None and step.name not in only:
            summary["steps"][step.name] = {"step": step.name, "status": "skipped", "reason": "not asked for (--only)"}
            continue
        left = cfg.total_budget_s - (time.perf_counter() - t_start)
        if left < cfg.min_start_s:
            summary["steps"][step.name] = {"step": step.name, "status": "skipped", "budget_s": step.budget_s,
                                           "reason": f"the suite's {cfg.total_budget_s:.0f} s budget is spent "
                                                     f"({left:.0f} s left)"}
        else:
            summary["steps"][step.name] = run_step(step, out, min(step.budget_s, left), cfg.smoke)
        summary["wall_s"] = round(time.perf_counter() - t_start, 2)
        _write_summary(summary, out)
    summary["counts"] = {s: sum(1 for e in summary["steps"].values() if e["status"] == s)
                         for s in ("ok", "skipped", "failed")}
    _write_summary(summary, out)
    return summary


def main_args(args: Any) -> dict[str, Any]:
    """``vstream bench gpu``: check the arguments (before anything loads), run, return what to print."""
    import torch

    only = [s for s in args.only.split(",") if s] if getattr(args, "only", None) else None
    names = [s.name for s in suite_config(True).steps]
    if only is not None and (not only or any(s not in names for s in only)):
        raise ValueError(f"--only takes step names from {','.join(names)}; got {args.only!r}")
    device = args.device
    if device == "auto":
        device = "cpu" if args.smoke else "cuda"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("no CUDA GPU is visible: the full GPU suite needs one; run `vstream bench gpu --smoke` "
                         "for the CPU check of the same code paths")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    cfg = suite_config(args.smoke, device)
    if args.budget is not None:
        if not args.budget > 0:
            raise ValueError(f"--budget must be > 0 seconds, got {args.budget}")
        cfg.total_budget_s = float(args.budget)
    scale = getattr(args, "budget_scale", 1.0)
    if not scale > 0:
        raise ValueError(f"--budget-scale must be > 0, got {scale}")
    for st in cfg.steps:
        st.budget_s *= scale
    if args.budget is None:
        cfg.total_budget_s *= scale
    out = Path(args.out)
    summary = run_suite(cfg, out, only)
    return {"summary": str(out / "summary.json"), "counts": summary["counts"], "wall_s": summary["wall_s"],
            "steps": {k: {"status": v["status"], **({"headline": v["headline"]} if "headline" in v else {}),
                          **({"error": v["error"]} if "error" in v else {}),
                          **({"reason": v["reason"]} if "reason" in v else {})}
                      for k, v in summary["steps"].items()}}
