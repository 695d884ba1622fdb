"""Uniform offline sampling baseline: answer from N frames spread evenly over everything seen so far.

The offline way of answering a question about a stream (what StreamingBench's offline models do): at
question time, N frames uniformly sampled from [start, now] go to the model as N one-frame chunks of a
fresh context; nothing is remembered between questions. ``UniformAgent(agent, n)`` wraps an Agent whose
config keeps a recent window of >= N chunks and no long-term memory (the ``uniform-N`` presets); its
``watch`` returns a ``UniformSession`` with the Session methods the eval harness drives
(``advance_to``, ``ask``, ``probe``, ``add_text``, ``stream_time_s``, ``ended``, ``close``).

Watching keeps the sampled frames (at the config's fps) in memory, at most ``cap`` of them: when full,
every other kept frame is dropped and the keeping stride doubles, so the kept set stays evenly spread.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Iterator

import numpy as np

from vstream.sources.frames import Frame

logger = logging.getLogger(__name__)

PRESET_FRAMES = {"uniform-16": 16, "uniform-32": 32}


class _Frames:
    """A VideoSource over given frames, re-timed one per second (one frame per 1-s chunk)."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        self._frames = frames
        self.name = f"uniform[{len(frames)}]"
        self.fps = 1.0
        self.duration = float(len(frames))

    def __iter__(self) -> Iterator[Frame]:
        for i, rgb in enumerate(self._frames):
            yield Frame(float(i), rgb)

    def close(self) -> None:
        pass


class UniformAgent:
    """An Agent that answers every question from ``n_frames`` frames sampled uniformly over the stream."""

    def __init__(self, agent: Any, n_frames: int, cap: int | None = None) -> None:
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        mc = agent.config.memory
        if mc.window_chunks < n_frames or mc.long_term:
            raise ValueError(f"uniform sampling of {n_frames} frames needs memory.window_chunks >= {n_frames} and "
                             "memory.long_term off; use the uniform-N presets (--config uniform-16)")
        self.agent, self.n_frames, self.cap = agent, n_frames, cap or 8 * n_frames
        self.config = agent.config
        self.model_name = agent.model_name

    def with_config(self, changes: dict[str, Any]) -> "UniformAgent":
        from vstream.api import Agent

        return UniformAgent(Agent(self.agent.adapter, self.config.replace(**changes).validate()), self.n_frames,
                            self.cap)

    def watch(self, source: Any, *, start_s: float = 0.0, end_s: float | None = None, fps: float | None = None,
              **kw: Any) -> "UniformSession":
        """A session over ``source`` (``background``, ``progress`` and ``chunk_seconds`` are accepted and unused:
        watching only decodes and keeps frames)."""
        from vstream.sources import open_source

        if kw.get("commentary"):
            raise ValueError("the uniform sampling baseline answers questions; it has no commentary mode")
        opts = {"start_s": start_s, "end_s": end_s} if (start_s or end_s is not None) else {}
        return UniformSession(self, open_source(source, **opts), fps or self.config.sampler.fps, float(start_s))


class UniformSession:
    """See the module docstring."""

    def __init__(self, owner: UniformAgent, source: Any, fps: float, start_s: float) -> None:
        self.owner, self.source, self.fps = owner, source, float(fps)
        self._it = iter(source)
        self._kept: list[tuple[float, np.ndarray]] = []
        self._stride = 1
        self._seen = 0
        self._next_t = start_s
        self._texts: list[str] = []
        self.stream_time_s = start_s
        self.ended = False
        self._pending: Frame | None = None

    def _keep(self, f: Frame) -> None:
        if self._seen % self._stride == 0:
            self._kept.append((f.t, f.rgb))
            if len(self._kept) > self.owner.cap:
                self._kept = self._kept[::2]
                self._stride *= 2
        self._seen += 1

    def advance_to(self, t_s: float) -> float:
        """Read frames with time < ``t_s`` (sampled at ``fps``); returns the stream time reached."""
        while not self.ended:
            f = self._pending or next(self._it, None)
            self._pending = None
            if f is None:
                self.ended = True
                break
            if f.t >= t_s - 1e-9:
                self._pending = f
                self.stream_time_s = t_s
                return t_s
            if f.t >= self._next_t - 1e-9:
                self._keep(f)
                self._next_t = math.floor(f.t * self.fps + 1e-6) / self.fps + 1.0 / self.fps
        if self._kept:
            self.stream_time_s = max(self.stream_time_s, self._kept[-1][0] + 1.0 / self.fps)
        return self.stream_time_s

    def sampled(self) -> list[np.ndarray]:
        """The frames a question gets now: ``n_frames`` spread evenly over the kept ones (all when fewer)."""
        n = len(self._kept)
        if n == 0:
            raise RuntimeError("no frame seen yet; advance the stream before asking")
        idx = sorted(set(np.linspace(0, n - 1, min(n, self.owner.n_frames)).round().astype(int).tolist()))
        return [self._kept[i][1] for i in idx]

    def _fresh(self) -> Any:
        s = self.owner.agent.watch(_Frames(self.sampled()), background=False)
        s.run_to_end()
        for text in self._texts:
            s.add_text(text)
        return s

    def ask(self, question: str, **kw: Any) -> Any:
        """Answer from a fresh context of the sampled frames (``history`` is ignored: nothing is kept)."""
        kw.pop("history", None)
        s = self._fresh()
        try:
            return s.ask(question, history=False, **kw)
        finally:
            s.close()

    def probe(self, text: str) -> float:
        s = self._fresh()
        try:
            return s.probe(text)
        finally:
            s.close()

    def add_text(self, text: str) -> None:
        """Text given to every later question's fresh context (e.g. gold history)."""
        self._texts.append(text)

    def stats(self) -> dict[str, Any]:
        return {"chunks": math.floor(self.stream_time_s), "frames_kept": len(self._kept), "stride": self._stride}

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> "UniformSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
