"""Video files: ``FileSource`` decodes with PyAV (decord in batches on request).

PyAV is the default since it measured cheaper: decoding every frame of a 1080p30 H.264 clip took
14.7 CPU-seconds with PyAV, 19.1 with decord and 16.4 with the ffmpeg CLI (docs/benchmarks.md).

Timestamps come from the container (variable frame rate is safe); a truncated or damaged file
yields what is readable, then logs a warning naming where decoding stopped.
"""
from __future__ import annotations

import logging
import os
from typing import Iterator

import numpy as np

from vstream.sources.frames import ConversionCounter, Frame, check_max_side, resize_max_side
from vstream.sources.errors import _check_file, _container_error, _exc_text, _file_error
from vstream.sources.pyav import DeviceDecoding, _open_container, _pyav_frames, _stream_facts, plan_file_skips

logger = logging.getLogger(__name__)


class FileSource(ConversionCounter, DeviceDecoding):
    """A video file decoded with PyAV, or decord in batches; timestamps from the container (VFR-safe).

    Only what is kept is converted to RGB: after ``plan_sampling(fps)`` (the pipeline calls it) decord
    fetches only the frames a ``Sampler`` at that fps keeps (indices chosen by timestamp first) and
    yields the others as lazy frames; PyAV converts a frame only when its ``rgb`` is read and, after
    ``plan_sampling``, does not even decode the non-reference pictures the sampler will drop
    (``vstream.sources.skipping``; ``skip_undecoded=False`` decodes every picture). Either way every
    frame is yielded, at its time. ``frames_decoded`` / ``frames_converted`` count, per iteration, the
    pictures that went through the decoder (decord: the frames of the range it read) and those turned
    into RGB arrays.

    Frames with ``start_s <= t < end_s`` are yielded. ``backend="auto"`` (or ``"pyav"``) decodes with PyAV,
    its frame threads on; ``"decord"`` uses decord (a SourceError when decord cannot open the file).
    A truncated file yields what is readable, logs a warning with the time where decoding stopped,
    then ends. Re-iterating starts again at ``start_s``. ``set_decode_device("cuda")`` decodes with NVDEC
    where PyAV and the machine have it (``DeviceDecoding``; decord always decodes on the CPU).
    """

    def __init__(self, path: str | os.PathLike, *, start_s: float = 0.0, end_s: float | None = None,
                 max_side: int | None = None, batch: int = 16, backend: str = "auto", threads: int = 0,
                 skip_undecoded: bool = True):
        check_max_side(max_side)
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if start_s < 0 or (end_s is not None and end_s <= start_s):
            raise ValueError(f"need 0 <= start_s < end_s, got start_s={start_s}, end_s={end_s}")
        if backend not in ("auto", "decord", "pyav"):
            raise ValueError(f"backend must be auto, decord or pyav, got {backend!r}")
        self.path = _check_file(path)
        self.name = str(path)
        self.start_s, self.end_s, self.max_side, self.batch = float(start_s), end_s, max_side, batch
        self._vr = None
        self._ts: np.ndarray | None = None  # [N] frame start times (decord)
        self._plan_fps: float | None = None
        self.skip_undecoded = bool(skip_undecoded)
        self.skip_plan = None  # PyAV: the SkipPlan of the current iteration (None: every picture decoded)
        self._closed = False
        self.backend = backend
        if backend == "decord":
            try:
                self._open_decord(threads)
            except Exception as exc:  # noqa: BLE001 - decord raises RuntimeError/DECORDError
                raise _container_error(self.name, exc, is_file=True) from exc
        else:
            self.backend = "pyav"
        if self.backend == "pyav":
            self._open_pyav()
        if self.duration is not None and self.start_s >= self.duration:
            raise _file_error(self.name, f"start_s={self.start_s:g} is past its end ({self.duration:.2f} s)",
                              "give a start time inside the video")

    # -- opening ----------------------------------------------------------------------------

    def _open_decord(self, threads: int) -> None:
        import decord

        vr = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=threads)
        n = len(vr)
        if n == 0:
            raise RuntimeError("no frames")
        ts = np.asarray(vr.get_frame_timestamp(list(range(n))), dtype=np.float64)  # [N, 2] start, end
        vr.get_batch([0])  # decord indexes some containers it cannot decode (plain MPEG-TS): fall back now
        vr.seek(0)
        self._vr, self._ts = vr, ts[:, 0]
        self.fps = float(vr.get_avg_fps()) or None
        self.duration = float(ts[-1, 1]) if ts[-1, 1] > 0 else None
        self.n_frames = n
        if np.any(np.diff(self._ts) <= 0):
            logger.warning("video %r has non-increasing timestamps; frames are sorted by time", self.name)

    def _open_pyav(self) -> None:
        try:
            container = _open_container(str(self.path))
        except Exception as exc:  # noqa: BLE001
            raise _container_error(self.name, exc, is_file=True) from exc
        try:
            if not container.streams.video:
                raise _file_error(self.name, "it has no video stream", "give a file with a video track")
            facts = _stream_facts(container)
            first = next(_pyav_frames(container, path=self.name), None)
        finally:
            container.close()
        if first is None:
            raise _file_error(self.name, "no frame could be decoded (corrupt or truncated)")
        self.fps, self.duration = facts["fps"], facts["duration"]
        self.n_frames = facts["frames"]

    # -- iteration ---------------------------------------------------------------------------

    def plan_sampling(self, fps: float | None) -> None:
        """Frames will be sampled at ``fps`` (None: all are read): decord then fetches only those kept."""
        if fps is not None and not fps > 0:
            raise ValueError(f"plan_sampling fps must be > 0 or None, got {fps}")
        self._plan_fps = fps

    def __iter__(self) -> Iterator[Frame]:
        if self._closed:
            raise RuntimeError(f"FileSource {self.name!r} is closed; open a new one")
        self.frames_decoded = self.frames_converted = 0
        if self.backend == "pyav":
            yield from self._iter_pyav()
        else:
            yield from self._iter_decord()

    def _iter_pyav(self) -> Iterator[Frame]:
        for seek in ((True, False) if self.start_s > 0 else (True,)):
            self.skip_plan = None
            if self._plan_fps is not None and self.skip_undecoded:
                self.skip_plan = self._plan_skips(seek)
            container = self._open_on_device(_open_container, str(self.path))
            n = 0
            try:
                for frame in _pyav_frames(container, path=self.name, start_s=self.start_s, end_s=self.end_s,
                                          max_side=self.max_side, seek=seek, counter=self, skip=self.skip_plan):
                    n += 1
                    yield frame
                    if self._closed:  # closed while iterating
                        return
            finally:
                container.close()
                if self.skip_plan is not None:
                    self.skip_plan.close()
            if n:
                return
            logger.info("seeking in %r gave no frame; decoding from the start", self.name)  # e.g. MPEG-TS

    def _plan_skips(self, seek: bool):
        """The plan of what not to decode at the planned fps (None, decoding everything, when not exact)."""
        try:
            plan = plan_file_skips(str(self.path), self._plan_fps, start_s=self.start_s, end_s=self.end_s, seek=seek)
        except Exception as exc:  # noqa: BLE001 - a demux error: the decode pass reports damage itself
            logger.debug("no skip plan for %r (%s); decoding every frame", self.name, _exc_text(exc))
            return None
        if plan is None:
            logger.debug("no skip plan for %r (no time base); decoding every frame", self.name)
        return plan

    def _iter_decord(self) -> Iterator[Frame]:
        if self._vr is None:
            raise RuntimeError(f"FileSource {self.name!r} is closed; open a new one")
        vr, ts = self._vr, self._ts
        keep = ts >= self.start_s - 1e-6
        if self.end_s is not None:
            keep &= ts < self.end_s
        order = np.flatnonzero(keep)
        order = order[np.argsort(ts[order], kind="stable")]  # frame indices in time order
        if self._plan_fps is None:
            wanted = order
        else:  # indices first, by the sampler's own rule: nothing else is fetched in batches
            from vstream.sources.chunking import Sampler

            wanted = order[Sampler(self._plan_fps).plan(ts[order])]
        pos = {int(i): k for k, i in enumerate(wanted)}  # frame index -> place in ``wanted``
        fetched: dict[int, np.ndarray] = {}
        for i in order:
            i = int(i)
            if self._vr is None:  # closed while iterating
                return
            if i not in pos:  # the sampler drops it: a lazy frame, fetched alone if ever read
                self.frames_decoded += 1
                yield self.lazy_frame(float(ts[i]), self._decord_fetch_one(i))
                continue
            if i not in fetched:
                fetched.clear()  # frames fetched earlier and not yielded (none in order) are released
                idx = [int(j) for j in wanted[pos[i]:pos[i] + self.batch]]
                try:
                    batch = vr.get_batch(idx).asnumpy()  # [B, H, W, 3] uint8
                except Exception as exc:  # noqa: BLE001 - decode error inside the file
                    yield from self._decord_one_by_one(vr, idx, exc)
                    return
                self.frames_converted += len(idx)
                fetched = {j: resize_max_side(rgb, self.max_side) for j, rgb in zip(idx, batch)}
            self.frames_decoded += 1
            yield Frame(float(ts[i]), fetched.pop(i))

    def _decord_fetch_one(self, i: int):
        def fetch() -> np.ndarray:
            if self._vr is None:
                raise RuntimeError(f"FileSource {self.name!r} is closed; open a new one")
            return resize_max_side(self._vr.get_batch([i]).asnumpy()[0], self.max_side)
        return fetch

    def _decord_one_by_one(self, vr, idx: list[int], exc: BaseException) -> Iterator[Frame]:
        """A batch failed: decode its frames singly up to the broken one, warn, and end."""
        last = None
        for i in idx:
            try:
                rgb = vr.get_batch([i]).asnumpy()[0]
            except Exception as exc2:  # noqa: BLE001
                exc = exc2
                break
            last = float(self._ts[i])
            self.frames_decoded += 1
            self.frames_converted += 1
            yield Frame(last, resize_max_side(rgb, self.max_side))
        where = f"after t={last:.2f}s" if last is not None else f"at t={float(self._ts[idx[0]]):.2f}s"
        logger.warning("video %r is truncated or damaged: decoding stopped %s (%s)", self.name, where, _exc_text(exc))

    def close(self) -> None:
        """Release the decoder; iterating afterwards raises RuntimeError."""
        self._closed = True
        self._vr = None

    def __enter__(self) -> "FileSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FileSource({self.name!r}, backend={self.backend!r}, fps={self.fps}, duration={self.duration})"
