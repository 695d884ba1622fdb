"""Audio pushed by a caller (the app's microphone or webcam path) as ``AudioBlock``s on the frames' clock.

The push counterpart of ``vstream.sources.audio.audio_blocks`` (as ``PushSource`` is for frames)::

    push = AudioPush(max_seconds=30)
    push.push(samples, sample_rate, t=None)   # [N] or [N, C] int16/float; never blocks; False when dropped
    for block in push: ...                    # 16 kHz mono float32 AudioBlocks; ends after push.end()
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import numpy as np

from vstream.sources.audio import GAP_TOLERANCE_S, SAMPLE_RATE, AudioBlock, to_mono_float
from vstream.sources.push_queue import PushQueue


class AudioPush:
    """Audio pushed by a caller (microphone, webcam); thread-safe, bounded, never blocks.

    ``push(samples, sample_rate, t=None)`` converts ``[N]``/``[N, C]`` int or float samples to 16 kHz
    mono float32 (stateful resampling, so chunk edges leave no clicks) and queues them as one
    ``AudioBlock``. ``t`` is the stream time of the first sample on the frames' clock; None continues
    right after the previous push (the first push at ``clock() - origin``, ``origin`` defaulting to
    the first push's time). When ``max_seconds`` of audio are waiting the new audio is dropped,
    counted in ``dropped_s``, and ``push`` returns False. Iterating yields the blocks and ends after
    ``end()`` once the queue is empty.
    """

    def __init__(self, *, max_seconds: float = 30.0, name: str = "push-audio",
                 clock: Callable[[], float] = time.monotonic, origin: float | None = None):
        if not max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
        self.name, self.max_seconds, self._clock, self._origin = name, float(max_seconds), clock, origin
        self.pushed_s = 0.0
        self.dropped_s = 0.0
        self._queue: PushQueue[AudioBlock] = PushQueue(self.max_seconds)  # cost: seconds of audio
        self._rate: int | None = None
        self._resampler: Any = None
        self._next_t: float | None = None  # stream time right after the last pushed sample

    def push(self, samples: np.ndarray, sample_rate: int, t: float | None = None) -> bool:
        """Queue audio; False when it was dropped (queue full, or after end())."""
        import av

        if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive int (Hz), got {sample_rate!r}")
        x = to_mono_float(samples)
        with self._queue.lock:
            if self._queue.ended:
                return False
            now = self._clock()
            if self._origin is None:
                self._origin = now
            if t is None:
                t = self._next_t if self._next_t is not None else now - self._origin
            t = float(t)
            dur_in = len(x) / sample_rate
            if not self._queue.fits(dur_in):
                self.dropped_s += dur_in
                self._next_t = t + dur_in
                self._resampler = None  # the next push starts a fresh stretch
                return False
            if self._next_t is None or abs(t - self._next_t) > GAP_TOLERANCE_S or sample_rate != self._rate:
                self._resampler, self._rate = None, int(sample_rate)
            if self._resampler is None:
                self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
                self._res_t = t  # stream time of the first sample into this resampler
                self._res_out = 0  # samples that came out of it
            if sample_rate == SAMPLE_RATE:
                y = x
            else:
                frame = av.AudioFrame.from_ndarray(x[None, :], format="flt", layout="mono")
                frame.sample_rate = int(sample_rate)
                parts = [o.to_ndarray().reshape(-1) for o in self._resampler.resample(frame)]
                y = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
            bt = self._res_t + self._res_out / SAMPLE_RATE if sample_rate != SAMPLE_RATE else t
            self._res_out += len(y)
            self._next_t = t + dur_in
            self.pushed_s += dur_in
            if len(y):  # admitted on dur_in above; it costs what came out of the resampler
                self._queue.add(AudioBlock(bt, np.ascontiguousarray(y)), len(y) / SAMPLE_RATE)
            return True

    def end(self) -> None:
        """No more audio: iteration ends once the queue is empty."""
        self._queue.end()

    def queued_s(self) -> float:
        """Seconds of audio waiting."""
        return self._queue.queued()

    def get(self, timeout: float | None = None) -> AudioBlock | None:
        """The next block (waits up to ``timeout``); None on timeout or at the end."""
        return self._queue.get(timeout)

    def __iter__(self) -> Iterator[AudioBlock]:
        return iter(self._queue)

    def close(self) -> None:
        """End and discard what is queued."""
        self._queue.close()

    def __repr__(self) -> str:
        return f"AudioPush({self.name!r}, pushed_s={self.pushed_s:.1f}, dropped_s={self.dropped_s:.1f})"


__all__ = ["AudioPush"]
