"""A session's ears: the audio track decoded and recognised on its own threads, into the engine's memory.

``SpeechTrack(engine, config, blocks, wait=...)`` runs two daemon threads beside the video reader:

- ``vstream-audio`` iterates ``blocks`` (``vstream.sources.audio.audio_blocks`` of a file or URL, or an
  ``AudioPush`` for pushed audio) and feeds ``StreamingASR``. ``wait=True`` (a file watched as fast as
  it decodes) waits for the recogniser; ``wait=False`` (realtime, live, pushed audio) never waits and
  the seconds it cannot take are counted (``stats()["dropped_s"]``).
- ``vstream-asr`` (``StreamingASR``) recognises windows of speech; each segment is posted to the engine's
  text inbox as ``"Time=a-bs speech: ..."`` with ``source="speech"``, so the perception thread adds it
  to the text window before its next chunk. Neither thread ever holds up perception.

A broken or undecodable audio track stops only the speech, with one warning; the video goes on.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable

from vstream.speech.asr import SpeechSegment, StreamingASR
from vstream.clock import time_marker
from vstream.config import ASRConfig

logger = logging.getLogger(__name__)


class shifted:  # noqa: N801 - reads as a function at the call site
    """``blocks`` with every block's time moved by ``offset_s`` (a stream appended to a memory directory)."""

    def __init__(self, blocks: Iterable, offset_s: float) -> None:
        self.blocks, self.offset_s = blocks, float(offset_s)

    def __iter__(self):
        from vstream.sources.audio import AudioBlock

        for b in self.blocks:
            yield AudioBlock(b.t_start_s + self.offset_s, b.samples)

    def __getattr__(self, name: str) -> Any:  # end(), close(), dropped_s of the wrapped blocks
        return getattr(self.blocks, name)


def speech_text(seg: SpeechSegment) -> str:
    """The text-window form of a recognised segment: ``Time=a-bs speech: words``."""
    return f"{time_marker(seg.start_s, seg.end_s)} speech: {seg.text}"


class SpeechTrack:
    """Audio decoding + streaming ASR for one session; segments go to ``engine.post_text``."""

    def __init__(self, engine: Any, config: ASRConfig, blocks: Iterable, *, wait: bool,
                 recognizer: Any = None) -> None:
        self.engine = engine
        self.wait = wait
        self.blocks = blocks
        self.segments: list[SpeechSegment] = []
        self._cbs: list[Callable[[SpeechSegment], None]] = []
        self._fed_until = 0.0  # stream time right after the last block handed to the recogniser
        self._decoded_s = 0.0
        self._first_t: float | None = None  # stream time of the first audio block
        self._audio_done = threading.Event()
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self.error: str | None = None
        self.asr = StreamingASR(config, recognizer=recognizer).start(self._on_segment)  # loads the model now
        self._thread = threading.Thread(target=self._read, name="vstream-audio", daemon=True)
        self._thread.start()

    def on_segment(self, callback: Callable[[SpeechSegment], None]) -> None:
        """Call ``callback(segment)`` for every segment recognised from now on (on the ASR thread)."""
        self._cbs.append(callback)

    def _on_segment(self, seg: SpeechSegment) -> None:
        with self._cond:
            self.segments.append(seg)
            self._cond.notify_all()
        self.engine.post_text(speech_text(seg), seg.start_s, end_s=seg.end_s, source="speech")
        for cb in list(self._cbs):
            cb(seg)

    def _read(self) -> None:
        try:
            for block in self.blocks:
                if self._stop.is_set():
                    break
                self._decoded_s += block.duration_s
                if self._first_t is None:
                    self._first_t = block.t_start_s
                self.asr.feed(block, wait=self.wait)  # False (dropped and counted) when it cannot keep up
                with self._cond:
                    self._fed_until = block.t_end_s
                    self._cond.notify_all()
        except Exception as e:  # noqa: BLE001 - a broken audio track never stops the video
            self.error = str(e).splitlines()[0] if str(e) else type(e).__name__
            logger.warning("audio stopped (%s); the video goes on without speech", self.error)
        finally:
            self._audio_done.set()
            with self._cond:
                self._cond.notify_all()

    def wait_until(self, t_s: float, timeout: float | None = None) -> bool:
        """Wait until the recogniser has consumed the audio up to stream time ``t_s``, or all the audio
        there is (the last partial window is recognised by ``finish``/``close``). False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.asr.stats()
            if st["error"] or (self._audio_done.is_set() and st["queue_s"] < 1e-3) \
                    or (self._first_t is not None and self._first_t + st["processed_s"] >= t_s):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            with self._cond:
                self._cond.wait(0.05)

    def finish(self, timeout: float | None = None) -> dict:
        """Recognise the rest of the audio (read to its end; pushed audio ends with the video) and stop."""
        if hasattr(self.blocks, "end"):  # an AudioPush: the stream it belongs to has ended
            self.blocks.end()
        self._thread.join(timeout)
        return self.asr.close(timeout)

    def close(self, timeout: float | None = None, *, flush: bool = True) -> dict:
        """Stop reading audio, recognise what is queued (``flush``), stop the threads; returns ``stats()``."""
        self._stop.set()
        if hasattr(self.blocks, "end"):  # an AudioPush: let its iterator finish
            self.blocks.end()
        elif hasattr(self.blocks, "close"):
            try:
                self.blocks.close()
            except Exception as e:  # noqa: BLE001
                logger.debug("closing the audio track failed: %s", e)
        self._thread.join(timeout)
        self.asr.close(timeout, flush=flush)
        return self.stats()

    def stats(self) -> dict:
        """The recogniser's counters (``rtf``, ``audio_s``, ``dropped_s``, ``segments``...) plus the audio's."""
        st = self.asr.stats()
        st["dropped_s"] += float(getattr(self.blocks, "dropped_s", 0.0))  # an AudioPush's own drops
        st["decoded_s"] = self._decoded_s
        st["audio_error"] = self.error
        return st
