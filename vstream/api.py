"""The facade that the CLI, the app and the eval harness call: Agent, Session, Answer, Evidence."""
from __future__ import annotations

import collections
import logging
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from vstream.session.alerts import Alerts, Notifier
from vstream.config import AgentConfig, MemoryConfig, from_name
from vstream.engine.core import Engine
from vstream.models.base import ModelAdapter
from vstream.session.pipeline import Pipeline
from vstream.session.asking import Asking
from vstream.session.responder import Responder
from vstream.session.stats import stream_stats
from vstream.types import Alert, Answer, ChunkReport, CommentaryItem, Evidence

logger = logging.getLogger(__name__)

__all__ = ["Agent", "Session", "Answer", "Evidence", "CommentaryItem", "Alert", "search", "export", "transcript"]


def search(directory: str | Path, query: str, *, top: int = 5, thumbs_dir: str | Path | None = None,
           since: Any = None, until: Any = None, tz: str | None = None) -> list:
    """Moments of a memory directory matching ``query`` (no VLM, read-only): ``vstream.session.recall.search``."""
    from vstream.session.recall import search as _search

    return _search(directory, query, top=top, thumbs_dir=thumbs_dir, since=since, until=until, tz=tz)


def export(directory: str | Path, fmt: str = "srt", *, since: Any = None, until: Any = None,
           tz: str | None = None) -> str:
    """The transcript of a memory directory as ``srt``, ``vtt`` or ``json`` text: ``vstream.session.recall.export``."""
    from vstream.session.recall import export as _export

    return _export(directory, fmt, since=since, until=until, tz=tz)


def transcript(directory: str | Path) -> list:
    """Timed speech (and commentary) lines of a memory directory: ``vstream.session.recall.transcript``."""
    from vstream.session.recall import transcript as _transcript

    return _transcript(directory)


def _open_long_term(adapter: ModelAdapter, mc: MemoryConfig, memory_dir: str | Path | None, load_existing: bool):
    """The long-term store of a session (None when it keeps none)."""
    if not (mc.long_term or memory_dir is not None):
        return None
    from vstream.engine.longterm import open_long_term

    return open_long_term(adapter, mc, memory_dir, load_existing=load_existing)


class Agent:
    """A loaded model plus its configuration; opens sessions on streams."""

    def __init__(self, adapter: ModelAdapter, config: AgentConfig) -> None:
        self.adapter = adapter
        self.config = config.validate()

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, config: AgentConfig | str | None = None, *,
                        device: str | None = None, dtype: str | None = None, seed: int = 0,
                        **overrides: Any) -> "Agent":
        """Load a preset (``tiny-smolvlm``...), a hub id or a local checkpoint directory.

        config: an AgentConfig, a preset name ("default", "streamingvlm", "rekv", "tiny") or None.
        overrides: dotted config fields, e.g. ``**{"memory.window_chunks": 8}``.
        """
        from vstream.models.registry import load_model

        if config is None:
            cfg = from_name("tiny" if (name_or_path or "").startswith("tiny-") else "default")
        elif isinstance(config, str):
            cfg = from_name(config)
        else:
            cfg = config
        changes = dict(overrides)
        if device is not None:
            changes["device"] = device
        if dtype is not None:
            changes["dtype"] = dtype
        cfg = (cfg.replace(**changes) if changes else cfg).validate()  # bad settings fail before the model loads
        adapter = load_model(name_or_path, device=cfg.device, dtype=cfg.dtype, seed=seed)
        cfg = cfg.replace(model=adapter.name)
        return cls(adapter, cfg)

    @property
    def model_name(self) -> str:
        return self.adapter.name

    def watch(self, source: Any, *, background: bool = True, realtime: bool | None = None, fps: float | None = None,
              chunk_seconds: float | None = None, memory_dir: str | Path | None = None, commentary: bool = False,
              previous_text: str = "", start_s: float = 0.0, end_s: float | None = None,
              commentary_replay: dict[int, str | list[int]] | None = None, progress: bool = False,
              memory_append: bool = False, asr: bool | None = None, audio: Any = None,
              start_at: Any = None, tz: str | None = None) -> "Session":
        """Open a session on ``source`` (path, URL, device, "synthetic:...", or a VideoSource).

        asr: recognise the audio track into memory (default: ``memory.asr``); ``audio``: AudioBlocks to use
        instead of the source's track (e.g. a ``vstream.sources.audio_push.AudioPush``; a PushSource gets one,
        ``session.audio_push``, when asr is on).

        ``memory_dir`` that already holds entries: resumed when it holds this source, else refused unless
        ``memory_append`` (then this stream's times start after the stored ones; ``vstream.session.memory_dir``).
        ``start_at`` (files): the wall-clock time the recording began (ISO 8601), so that entries carry clock
        time; ``tz``: the camera's time zone (IANA name; default this machine's).
        """
        from vstream.sources import open_source

        cfg = self.config
        changes: dict[str, Any] = {}
        if realtime is not None:
            changes["sampler.realtime"] = realtime
        if fps is not None:
            changes["sampler.fps"] = fps
        if chunk_seconds is not None:
            changes["sampler.chunk_seconds"] = chunk_seconds
        if asr is not None:
            changes["memory.asr"] = bool(asr)
        if changes:
            cfg = cfg.replace(**changes).validate()
        kw: dict[str, Any] = {"start_s": start_s, "end_s": end_s} if (start_s or end_s is not None) else {}
        if tz is not None:
            from vstream.clock import check_zone

            check_zone(tz)
        src = open_source(source, **kw)
        if start_at is not None:
            from vstream.sources.clocked import ClockedSource

            src = ClockedSource(src, start_at, tz)
        elif tz is not None and hasattr(src, "tz"):
            src.tz = tz
        return Session(self, cfg, src, background=background, memory_dir=memory_dir, commentary=commentary,
                       previous_text=previous_text, commentary_replay=commentary_replay, progress=progress,
                       memory_append=memory_append, audio=audio, window=(start_s, end_s))

    def load(self, directory: str | Path) -> "Session":
        """A session over memory saved earlier (no source): ``ask`` answers from the stored entries."""
        return Session(self, self.config, None, background=False, memory_dir=directory, load_existing=True)


class Session(Asking):
    """One stream being watched: perception in the background, answers on snapshots.

    A facade over its parts: the Pipeline (reader thread, backlog, end of stream), the Engine (model
    and memory), the Responder (questions and their answers), Alerts, and the long-term store.
    """

    def __init__(self, agent: Agent, config: AgentConfig, source: Any, *, background: bool,
                 memory_dir: str | Path | None = None, commentary: bool = False, previous_text: str = "",
                 commentary_replay: dict[int, str | list[int]] | None = None, progress: bool = False,
                 load_existing: bool = False, memory_append: bool = False, audio: Any = None,
                 window: tuple = (0.0, None)) -> None:
        self.agent = agent
        self.config = config
        self.adapter = agent.adapter
        self.background = background
        if memory_dir is not None and source is not None and not load_existing:
            self._check_memory_dir(memory_dir, source, memory_append)  # refused: the directory is not opened
        self.long_term = _open_long_term(self.adapter, config.memory, memory_dir, load_existing)
        #: seconds added to this source's times (a stream appended to a memory dir after its entries)
        self.time_offset_s = 0.0
        if memory_dir is not None and source is not None and not load_existing:
            source = self._claim_memory_dir(memory_dir, source, memory_append)
        self.source = source
        ocr = self.long_term.ocr if (self.long_term is not None and config.memory.ocr) else None
        self.engine = Engine(self.adapter, config, self.long_term, ocr=ocr)
        self.engine.start(previous_text)
        if load_existing and self.long_term is not None:
            self.engine.resume_at(self.long_term.latest_end_s())
        elif self.time_offset_s:
            self.engine.resume_at(self.time_offset_s)
        self.commentary_on = commentary
        self.commentary_replay = dict(commentary_replay or {})
        self.commentary_items: list[CommentaryItem] = []
        self._commentary_cbs: list[Callable[[CommentaryItem], None]] = []
        self.reports: collections.deque[ChunkReport] = collections.deque(maxlen=10_000)
        self._closed = False
        rc = config.responder
        self.responder = Responder.for_engine(self.engine, maxsize=rc.queue_size)
        self.alerts = Alerts(self.probe, self.responder.ask, threshold=rc.notify_threshold,
                             cooldown_s=rc.notify_cooldown_s)
        self.pipeline = Pipeline(self.engine, source, config.sampler, self._perceive, background=background,
                                 progress=progress)
        self.audio_push = None
        self.speech = self._open_speech(audio, window) if (config.memory.asr and source is not None) else None
        self.pipeline.start()

    def _open_speech(self, audio: Any, window: tuple):
        """The session's SpeechTrack (audio decoding + ASR threads), or None when there is no audio."""
        from vstream.sources import LiveSource, PushSource
        from vstream.speech.track import SpeechTrack

        src = getattr(self.source, "inner", self.source)  # a ShiftedSource (appended memory) wraps the source
        live = isinstance(src, (LiveSource, PushSource)) or audio is not None
        if audio is None and isinstance(src, PushSource):
            from vstream.sources.audio_push import AudioPush

            audio = self.audio_push = AudioPush(clock=src._clock, origin=src._t0)
        if audio is None:
            from vstream.sources.audio import audio_blocks

            audio = audio_blocks(src, window[0] or 0.0, window[1])
        if audio is None:
            return None  # audio_blocks said why (one info line): vision only
        if self.time_offset_s:  # the sound moves with the frames
            from vstream.speech.track import shifted

            audio = shifted(audio, self.time_offset_s)
        return SpeechTrack(self.engine, self.config.asr, audio, wait=not (live or self.config.sampler.realtime))
    @staticmethod
    def _check_memory_dir(memory_dir, source, append: bool) -> None:
        from vstream.session.memory_dir import check_memory_dir

        try:
            check_memory_dir(memory_dir, source, append=append)
        except BaseException:
            if hasattr(source, "close"):
                source.close()
            raise

    def _claim_memory_dir(self, memory_dir, source, append: bool):
        """Resume / append / refuse (``vstream.session.memory_dir``); the source shifted when appended."""
        from vstream.session.memory_dir import ShiftedSource, claim_memory_dir

        lt = self.long_term
        try:
            self.time_offset_s = claim_memory_dir(memory_dir, source, entries=len(lt), stored_end_s=lt.latest_end_s(),
                                                  append=append)
        except BaseException:
            lt.store.close()  # not lt.close(): nothing (the index) is written to a directory refused
            if hasattr(source, "close"):
                source.close()
            raise
        return ShiftedSource(source, self.time_offset_s) if self.time_offset_s else source

    def _perceive(self, chunk) -> None:
        """One chunk: ingest it, comment on it, then check the standing alerts."""
        with self.engine.write_lock:  # the commentary follows its chunk, nothing written in between
            self.reports.append(self.engine.ingest(chunk))
            if self.commentary_on:
                item = self.engine.commentary(chunk, self.config.responder.commentary_tokens,
                                              replay=self.commentary_replay.get(chunk.index))
                self.commentary_items.append(item)
                for cb in list(self._commentary_cbs):
                    cb(item)
        self.alerts.check(chunk.end_s, getattr(chunk, "wall_end_s", None))

    # ---- driving the stream -------------------------------------------------------------------
    @property
    def stream_time_s(self) -> float:
        return self.engine.stream_time_s

    @property
    def ended(self) -> bool:
        return self.pipeline.ended

    @property
    def error(self) -> str | None:
        """The one-line reason the stream stopped early (source or perception failure), else None."""
        return self.pipeline.error

    @property
    def last_answer(self) -> Answer | None:
        """The latest answer (after ``ask(..., stream=True)``: the streamed one, once its pieces are read)."""
        return self.responder.last_answer

    @property
    def notifier(self) -> Notifier:
        return self.alerts.notifier

    def advance_to(self, t_s: float) -> float:
        """Ingest until stream time >= ``t_s`` or the source ends; returns the stream time reached.

        With speech recognition on a file (not realtime), also waits until the speech up to then is heard.
        """
        reached = self.pipeline.advance_to(t_s)
        if self.speech is not None and self.speech.wait:
            self.speech.wait_until(reached)
        return reached

    def run_to_end(self) -> float:
        """Ingest the whole source (and recognise all of its speech); returns the final stream time."""
        t = self.advance_to(float("inf"))
        if self.speech is not None and not self.pipeline.error:
            self.speech.finish()
            self.engine.apply_inbox()
        return t

    @property
    def transcript(self) -> list:
        """Speech recognised so far (``vstream.speech.asr.SpeechSegment``s, stream times), oldest first."""
        return list(self.speech.segments) if self.speech is not None else []

    def wait_chunks(self, n: int, timeout: float | None = None) -> bool:
        """Wait until ``n`` chunks have been ingested (or the stream ended)."""
        return self.pipeline.wait_chunks(n, timeout)

    # ---- questions ----------------------------------------------------------------------------
    @property
    def tz(self) -> str:
        """The time zone of this stream's clock (the source's, else the stored entries', else this machine's)."""
        from vstream.clock import local_zone

        tz = getattr(self.source, "tz", None)
        if not tz and self.long_term is not None:
            tz = next((i.tz for i in reversed(self.long_term.store.infos()) if i.tz), None)
        return tz or local_zone()

    def probe(self, text: str) -> float:
        """P("Yes") that ``text`` happened in the latest chunk (one forward step)."""
        return self.engine.probe(text, self.engine.snapshot())

    def notify_when(self, condition: str, callback: Callable[[Alert], None], *, threshold: float | None = None,
                    cooldown_s: float | None = None) -> int:
        """Standing instruction: after each chunk, if P(condition) >= threshold, answer and call back."""
        return self.alerts.add(condition, callback, threshold=threshold, cooldown_s=cooldown_s)

    def on_commentary(self, callback: Callable[[CommentaryItem], None]) -> None:
        self._commentary_cbs.append(callback)

    def add_text(self, text: str) -> None:
        """Put text into the text window (e.g. earlier questions with their gold answers)."""
        if not text:
            raise ValueError("empty text")
        self.engine.post_text(text)

    # ---- state --------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Frames in / kept / dropped, latencies, tokens/s and memory bytes per tier."""
        return {
            **stream_stats(self.engine, self.pipeline, self.responder, self.long_term, self.reports),
            "process_rss_bytes": psutil.Process().memory_info().rss,
            "ended": self.pipeline.ended,
            "error": self.pipeline.error,
            "asr": self.speech.stats() if self.speech is not None else None,  # rtf, dropped_s, segments...
            # a live stream's outages: {"at_s", "duration_s", "reason"} each, and the reconnects that ended them
            "gaps": [{**g, "at_s": round(g["at_s"] + self.time_offset_s, 3)}
                     for g in list(getattr(self.source, "gap_records", None) or [])],
            "reconnects": int(getattr(self.source, "reconnects", 0) or 0),
        }

    def save(self, directory: str | Path) -> None:
        """Write the memory (long-term entries plus the chunks still in the window) to ``directory``."""
        if self.long_term is None:
            raise ValueError("this session keeps no long-term memory (memory.long_term=False); nothing to save")
        with self.engine.write_lock:
            self.long_term.save(directory, extra=self.engine.live_vision())
        if self.long_term.directory is not None:
            from vstream.session.memory_dir import copy_sources

            copy_sources(self.long_term.directory, directory)

    def close(self) -> None:
        """Stop perception and answering; waits at most responder.close_timeout_s."""
        if self._closed:
            return
        self._closed = True
        timeout = self.config.responder.close_timeout_s
        deadline = time.monotonic() + timeout
        self.pipeline.close(deadline)
        if self.speech is not None:  # recognise what is queued; the segments enter memory before it is flushed
            self.speech.close(max(0.0, deadline - time.monotonic()))
            self.engine.apply_inbox()
        if not self.responder.close(max(0.0, deadline - time.monotonic())):
            logger.warning("responder did not stop within %.1fs", timeout)
        if self.long_term is not None:
            with self.engine.write_lock:
                if self.long_term.persistent:
                    self.long_term.flush(self.engine.live_vision())
                self.long_term.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
