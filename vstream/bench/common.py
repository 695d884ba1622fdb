"""Helpers every `vstream bench` benchmark shares: device sync and memory, synthetic chunks, where a run
happened, and writing results (JSON) and figures (PNG).

Imports nothing from the other bench modules (they import it).
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch


def sync() -> None:
    """Wait for queued device work, so a wall-clock reading covers it (no-op on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class PhaseClock:
    """Time named phases of a step: CUDA events on a GPU (read after one synchronize), wall time on CPU.

    ``with clock.phase("vision"): ...`` marks a phase; ``collect()`` waits for the device and returns the
    seconds per phase name since the last ``collect`` (phases entered several times are summed).
    """

    def __init__(self, device: torch.device | str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self._marks: list[tuple[str, Any, Any]] = []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._marks.append((name, start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._marks.append((name, t0, time.perf_counter()))

    def collect(self) -> dict[str, float]:
        """Seconds per phase since the last call (synchronises the device first)."""
        sync()
        out: dict[str, float] = {}
        for name, a, b in self._marks:
            out[name] = out.get(name, 0.0) + (a.elapsed_time(b) / 1000.0 if self.cuda else b - a)
        self._marks.clear()
        return out


@contextlib.contextmanager
def timed_methods(obj: Any, clock: PhaseClock, phases: dict[str, str]) -> Iterator[None]:
    """Within the block, calls of ``obj``'s methods are timed as phases (``{method name: phase name}``)."""
    def wrap(fn: Any, phase: str) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with clock.phase(phase):
                return fn(*args, **kwargs)
        return timed

    own = {m: obj.__dict__[m] for m in phases if m in vars(obj)}  # instance attributes to put back
    for meth, phase in phases.items():
        setattr(obj, meth, wrap(getattr(obj, meth), phase))
    try:
        yield
    finally:
        for meth in phases:
            if meth in own:
                setattr(obj, meth, own[meth])
            else:
                delattr(obj, meth)  # back to the class's method


def device_mem() -> int:
    """Bytes of device memory held by tensors now (0 on CPU)."""
    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


def median_or_none(xs: Sequence[float]) -> float | None:
    """The median of ``xs``, None when it is empty."""
    return statistics.median(xs) if xs else None


def random_chunks(n: int, frames: int, size: int, seed: int = 0, chunk_seconds: float = 1.0) -> Iterator[Any]:
    """Yield ``n`` chunks of random frames (no decoding cost in the measurement)."""
    from vstream.sources import Chunk

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(8, size, size, 3), dtype=np.uint8)
    for i in range(n):
        fr = np.roll(base[i % 8: i % 8 + 1].repeat(frames, 0), i, axis=1)  # [F, H, W, 3]
        ts = [i * chunk_seconds + j * chunk_seconds / frames for j in range(frames)]
        yield Chunk(index=i, start_s=i * chunk_seconds, end_s=(i + 1) * chunk_seconds, frames=fr, timestamps=ts)


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Where a benchmark ran: device, torch version, threads, CPUs, commit, local time.

    The commit comes from git, else from the ``VSTREAM_COMMIT`` environment variable (a copy of the tree
    without its .git, as on a lent GPU machine)."""
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"device": dev, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "commit": _git_commit() or os.environ.get("VSTREAM_COMMIT"),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def write_json(result: dict[str, Any], out: Path, name: str) -> Path:
    """Write ``result`` to ``out/name.json`` (the directory is created); returns the path."""
    out.mkdir(parents=True, exist_ok=True)
    p = out / f"{name}.json"
    p.write_text(json.dumps(result, indent=1))
    return p


def new_figure(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``plt.subplots(*args, **kwargs)`` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_png(fig: Any, path: Path | str) -> None:
    """Lay out ``fig``, write it to ``path`` as PNG and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
