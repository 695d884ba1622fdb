"""The stream side of a session: source -> sampler -> chunker -> perception, and waiting on stream time.

In the background three stages run in their own threads with bounded queues between them: a decode
thread iterates the source into a frame queue (``stages.DecodeAhead``); a reader thread samples, converts
the kept frames, chunks and preprocesses them (``adapter.prepare_ahead``) into a chunk queue; a
perception thread takes chunks from it. ``stage_seconds`` says how long each stage was busy. Backlog policy: realtime drops the oldest queued chunk (counted) when perception
falls behind; otherwise the reader waits (back-pressure: no drops, no growing backlog). Without a
background thread, ``advance_to`` ingests in the caller's thread. A source that fails mid-stream ends
the stream with a one-line ``error``; ``ended`` is signalled to everyone waiting.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Iterator

import numpy as np

from vstream.config import SamplerConfig
from vstream.engine.core import Engine
from vstream.session.stages import DecodeAhead, StageClock

logger = logging.getLogger(__name__)


def clock_markers(time_marker: str, source: Any) -> bool:
    """Whether chunk markers take the clock form: ``"clock"``, or ``"auto"`` on a live source (a camera, a
    live URL, pushed frames; not a file, even one given ``start_at``)."""
    if time_marker != "auto":
        return time_marker == "clock"
    from vstream.sources import LiveSource, PushSource

    while hasattr(source, "inner"):  # ShiftedSource / ClockedSource wrappers
        if type(source).__name__ == "ClockedSource":
            return False
        source = source.inner
    return isinstance(source, PushSource) or (isinstance(source, LiveSource) and bool(getattr(source, "_live", False)))


def decode_device(setting: str, model_device: Any) -> str:
    """Where a PyAV source decodes for ``sampler.decode`` = ``setting``: "auto" follows a CUDA model onto its
    GPU (NVDEC), else the CPU; "cuda" asks for the model's GPU, or the first one when the model is elsewhere."""
    dev = str(model_device)
    if setting == "cpu" or (setting == "auto" and not dev.startswith("cuda")):
        return "cpu"
    return dev if dev.startswith("cuda") else "cuda"


class Pipeline:
    """Chunks of ``source`` handed to ``step(chunk)`` one at a time, in order; ``source=None``: ended at once.

    ``step`` ingests a chunk into ``engine`` (plus whatever follows a chunk: commentary, alerts).
    Call ``start()`` once everything ``step`` uses exists.
    """

    def __init__(self, engine: Engine, source: Any, sampler: SamplerConfig, step: Callable[[Any], None], *,
                 background: bool, progress: bool = False) -> None:
        self.engine = engine
        self.source = source
        self.background = background
        self.realtime = sampler.realtime
        self._step_fn = step
        self.ended = source is None
        self.error: str | None = None
        self.chunks_dropped = 0
        self.frames_dropped_backlog = 0
        self.sampler = None
        self.queue: queue.Queue | None = None
        self.reader: threading.Thread | None = None
        self.perception: threading.Thread | None = None
        self._chunk_iter: Iterator | None = None
        self.clock = StageClock()
        self.decoder: DecodeAhead | None = None
        self._stop = threading.Event()
        self._advanced = threading.Condition()
        if source is not None:
            self._open(sampler, progress)

    def _open(self, sc: SamplerConfig, progress: bool) -> None:
        from vstream.sources import Chunker, Sampler

        adapter = self.engine.adapter
        self.sampler = Sampler(sc.fps, realtime=sc.realtime)
        adapter.configure_sampling(sc.fps)
        if hasattr(self.source, "plan_sampling"):  # a file that knows its frame times: fetch only kept frames
            self.source.plan_sampling(sc.fps)
        if hasattr(self.source, "set_decode_device"):  # PyAV sources: NVDEC beside a CUDA model
            self.source.set_decode_device(decode_device(sc.decode, getattr(adapter, "device", "cpu")))
        fpc = adapter.frames_per_chunk(sc.fps, sc.chunk_seconds)
        clock = clock_markers(self.engine.config.memory.time_marker, self.source)
        frames = iter(self.source)
        if self.background:  # decoding in its own thread
            self.decoder = DecodeAhead(self.source, clock=self.clock)
            frames = iter(self.decoder)
        chunks = Chunker(sc.chunk_seconds, frames_per_chunk=fpc, tz=getattr(self.source, "tz", "") or "",
                         clock=clock)(self.sampler(frames))
        if progress and getattr(self.source, "duration", None):
            from tqdm import tqdm

            chunks = tqdm(chunks, total=int(np.ceil(self.source.duration / sc.chunk_seconds)), unit="chunk",
                          desc="watching", leave=False)
        if self.background:
            self.queue = queue.Queue(maxsize=sc.max_backlog_chunks)
            self.reader = threading.Thread(target=self._feed, args=(chunks,), name="vstream-reader", daemon=True)
            self.reader.start()
        else:
            self._chunk_iter = self._timed_chunks(chunks)

    def start(self) -> None:
        """Start the perception thread (background pipelines on a source); otherwise nothing to do."""
        if self.background and self.source is not None and self.perception is None:
            self.engine.set_perceiving(True)
            self.perception = threading.Thread(target=self._perceive_loop, name="vstream-perception", daemon=True)
            self.perception.start()

    # ---- the reader thread ---------------------------------------------------------------------------
    def _feed(self, chunks: Iterator) -> None:
        q = self.queue
        try:
            for ch in self._timed_chunks(chunks):
                if self._stop.is_set():
                    break
                self._prepare(ch)
                if self.realtime:
                    self._put_dropping_oldest(q, ch)
                else:
                    while not self._stop.is_set():
                        try:
                            q.put(ch, timeout=0.1)
                            break
                        except queue.Full:
                            continue
        except Exception as e:  # a source that fails mid-stream ends the session with a clear error
            self._source_failed(e)
        finally:
            self._put_end(q)

    def _timed_chunks(self, chunks: Iterator) -> Iterator:
        """``chunks`` with the reader's own time (sampling, conversion, chunking) counted as ``convert``."""
        it = iter(chunks)
        while True:
            t0 = time.perf_counter()
            waited0 = self.decoder.waited_s if self.decoder is not None else 0.0
            try:
                ch = next(it)
            except StopIteration:
                return
            finally:
                waited = (self.decoder.waited_s if self.decoder is not None else 0.0) - waited0
                self.clock.add("convert", time.perf_counter() - t0 - waited)
            yield ch

    def _prepare(self, ch) -> None:
        """The preprocess stage: the adapter preprocesses the chunk's frames ahead of perception."""
        prepare = getattr(self.engine.adapter, "prepare_ahead", None)
        if prepare is None:
            return
        t0 = time.perf_counter()
        try:
            prepare(ch.frames)
        except Exception as e:  # noqa: BLE001 - perception preprocesses again and reports the error there
            logger.debug("preprocessing ahead failed (%s); perception will preprocess", e)
        finally:
            self.clock.add("preprocess", time.perf_counter() - t0)

    def _put_dropping_oldest(self, q: queue.Queue, ch) -> None:
        while True:
            try:
                q.put_nowait(ch)
                return
            except queue.Full:
                try:
                    old = q.get_nowait()
                    self.chunks_dropped += 1
                    self.frames_dropped_backlog += len(old.frames)
                except queue.Empty:
                    pass

    def _source_failed(self, e: Exception) -> None:
        """Record a source failure as the stream's one-line error."""
        self.error = str(e).splitlines()[0] if str(e) else type(e).__name__
        logger.error("source failed: %s", self.error)

    def _put_end(self, q: queue.Queue) -> None:
        """Tell perception the source ended; never block once the pipeline is stopping."""
        while True:
            try:
                q.put(None, timeout=0.1)
                return
            except queue.Full:
                if self._stop.is_set():
                    return

    # ---- perception ----------------------------------------------------------------------------------
    def _next_chunk(self):
        if self.queue is not None:
            while not self._stop.is_set():
                try:
                    return self.queue.get(timeout=0.1)
                except queue.Empty:
                    continue
            return None
        try:
            return next(self._chunk_iter)
        except StopIteration:
            return None
        except Exception as e:
            self._source_failed(e)
            return None

    def _perceive_loop(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._step():
                    break
        except Exception as e:
            self.error = f"perception failed: {e}"
            logger.exception("perception failed")
        finally:
            self._mark_ended()

    def _mark_ended(self) -> None:
        with self._advanced:
            self.ended = True
            self._advanced.notify_all()
        self.engine.set_perceiving(False)  # text posted from now on enters the window at once

    def _step(self) -> bool:
        """Perceive one chunk. False when the source is exhausted."""
        chunk = self._next_chunk()
        if chunk is None:
            return False
        t0 = time.perf_counter()
        try:
            self._step_fn(chunk)
        finally:
            self.clock.add("model", time.perf_counter() - t0)
        with self._advanced:
            self._advanced.notify_all()
        return True

    # ---- waiting on the stream -----------------------------------------------------------------------
    def advance_to(self, t_s: float) -> float:
        """Ingest until stream time >= ``t_s`` or the source ends; returns the stream time reached."""
        eng = self.engine
        if self.background:
            with self._advanced:
                self._advanced.wait_for(lambda: self.ended or eng.stream_time_s >= t_s)
            return eng.stream_time_s
        while not self.ended and eng.stream_time_s < t_s:
            if not self._step():
                self._mark_ended()
        return eng.stream_time_s

    def wait_chunks(self, n: int, timeout: float | None = None) -> bool:
        """Wait until ``n`` chunks have been ingested (or the stream ended)."""
        with self._advanced:
            return self._advanced.wait_for(lambda: self.ended or self.engine.chunks_ingested >= n, timeout)

    def frame_counts(self) -> dict[str, int]:
        """frames_in / frames_kept / frames_dropped (sampler, backlog and a push source's own drops), and
        frames_decoded / frames_converted (the source's own counters; frames_in where it keeps none)."""
        s = self.sampler
        src = self.source
        frames_in = getattr(s, "frames_in", 0)
        return {"frames_in": frames_in,
                "frames_decoded": int(getattr(src, "frames_decoded", frames_in)),
                "frames_converted": int(getattr(src, "frames_converted", frames_in)),
                "frames_kept": getattr(s, "frames_kept", 0) - self.frames_dropped_backlog,
                "frames_dropped": getattr(s, "frames_dropped", 0) + self.frames_dropped_backlog
                + getattr(self.source, "dropped", 0)}  # a PushSource drops when its own queue is full

    def stage_seconds(self) -> dict[str, float]:
        """Busy seconds per stage: decode, convert (sample + convert + chunk), preprocess (ahead), model
        (perception: the engine plus what follows a chunk). Without background threads decoding counts in
        ``convert``, preprocessing in ``model``."""
        return {k: round(v, 4) for k, v in self.clock.seconds.items()}

    def close(self, deadline: float) -> None:
        """Stop reading and perceiving; close the source; join the threads by ``deadline`` (monotonic)."""
        self._stop.set()
        if self.decoder is not None:
            self.decoder.stop()
        if self.source is not None and hasattr(self.source, "close"):
            try:
                self.source.close()
            except Exception as e:
                logger.warning("closing the source failed: %s", e)
        for t in (self.perception, self.reader, self.decoder.thread if self.decoder is not None else None):
            if t is not None:
                t.join(max(0.0, deadline - time.monotonic()))
