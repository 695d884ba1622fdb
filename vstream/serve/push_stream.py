"""The worker side of a realtime session (``WS /v1/realtime``): a fleet stream fed by its client.

A stream whose source is ``push:`` (created by ``vstream.serve.realtime``, never over ``POST /v1/streams``)
reads a ``PushSource`` (frames) and, when its config has ``memory.asr``, an ``AudioPush`` recognised by a
``SpeechTrack`` into the stream's memory. ``PushWorkerMixin`` gives ``FleetWorker`` the calls the HTTP
replica makes on the actor:

    push_frames(sid, [(image bytes, client t), ...])  -> counts, per-item errors, the clock origin
    push_audio(sid, pcm16 bytes, sample_rate, client t | None)
    push_events(sid, after)                           -> transcript / alert / gap / up / down events
    push_detach(sid)                                   the client went away: frames stop, memory stays

Clock: the client stamps every frame with its own capture time in seconds (any monotonic clock). The
stream's origin is the first stamp it ever received; stream time = stamp - origin. The origin is kept
in ``push.json`` beside the memory directory (temp file, fsync, rename), so a stream re-placed on
another worker after a crash maps the client's stamps to the same stream times and continues its memory.
Stamps must increase: an item at or before the last accepted stamp is refused with an error.
"""
from __future__ import annotations

import collections
import io
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

PUSH_SPEC = "push:"
MAX_PIXELS = 4096 * 4096  # decoded frames larger than this are refused (decompression bombs)


def is_push(spec: str) -> bool:
    """True for the source spec of a stream fed over the realtime WebSocket."""
    return isinstance(spec, str) and spec.startswith(PUSH_SPEC)


def decode_image(data: bytes, max_side: int | None = None) -> np.ndarray:
    """JPEG or PNG bytes -> [H, W, 3] uint8 RGB; ValueError (one line) for anything else."""
    from PIL import Image, UnidentifiedImageError

    if data[:3] != b"\xff\xd8\xff" and data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("the frame is not a JPEG or PNG image; send image/jpeg or image/png bytes, base64")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ValueError(f"the frame is {im.width}x{im.height} pixels, more than {MAX_PIXELS} allowed; "
                                 "scale it down")
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)  # [H, W, 3]
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"the frame image cannot be decoded ({str(e).splitlines()[0][:120]}); send a whole "
                         "JPEG or PNG") from None
    return rgb


def _write_json(path: Path, obj: dict) -> None:
    """Crash-safe: temp file, fsync, rename, fsync of the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PushFeed:
    """One pushed stream on a worker: its sources, clock and outgoing events (see the module docstring)."""

    def __init__(self, stream_id: str, memory_dir: str, resume_at: float, *, resume: bool = False,
                 max_frames: int = 64, max_events: int = 2000) -> None:
        from vstream.sources.audio_push import AudioPush
        from vstream.sources.push import PushSource

        self.id = stream_id
        self.state_path = Path(memory_dir).parent / "push.json"
        if not resume:  # a new stream of an old id: its clock starts afresh
            self.state_path.unlink(missing_ok=True)
        st = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.origin: float | None = st.get("origin")
        self.resume_at = float(resume_at)
        self.frames = PushSource(maxsize=max_frames, name=f"push-{stream_id}")
        self.audio = AudioPush(max_seconds=30.0, name=f"push-audio-{stream_id}")
        self.last_t = resume_at if self.origin is not None else None  # stream time of the last accepted frame
        self.last_audio_t: float | None = None
        self.speech = None
        self.attached = False
        self.counts = collections.Counter()
        self._lock = threading.Lock()
        self._events: collections.deque[dict] = collections.deque(maxlen=max_events)
        self._seq = 0

    # ---- clock ----------------------------------------------------------------------------------
    def stream_time(self, client_t: float) -> float:
        """Stream time of a client stamp; the first stamp ever fixes the origin (persisted)."""
        if self.origin is None:
            self.origin = float(client_t)
            _write_json(self.state_path, {"origin": self.origin})
        return float(client_t) - self.origin

    # ---- input ----------------------------------------------------------------------------------
    def push_frames(self, items: list[tuple[bytes, float]]) -> dict[str, Any]:
        """Decode and queue frames; an error per refused item (index, code, message)."""
        errors = []
        accepted = dropped = 0
        with self._lock:
            self.attached = True
            for i, (data, client_t) in enumerate(items):
                try:
                    rgb = decode_image(data)
                except ValueError as e:
                    self.counts["frames_invalid"] += 1
                    errors.append((i, "invalid_frame", str(e)))
                    continue
                t = self.stream_time(client_t)
                if self.last_t is not None and t <= self.last_t:
                    self.counts["frames_late"] += 1
                    errors.append((i, "timestamp_not_increasing",
                                   f"frame timestamp {client_t:.3f} is not after the stream's last one "
                                   f"({self.last_t + self.origin:.3f}); stamp frames with an increasing capture clock"))
                    continue
                if self.frames.push(rgb, t):
                    accepted += 1
                    self.last_t = t
                else:
                    dropped += 1
            self.counts["frames_accepted"] += accepted
            self.counts["frames_dropped"] += dropped
        return {"accepted": accepted, "dropped": dropped, "errors": errors, "origin": self.origin,
                "queued": self.frames.qsize()}

    def push_audio(self, pcm16: bytes, sample_rate: int, client_t: float | None) -> dict[str, Any]:
        """Queue PCM16 mono audio (``client_t`` None: right after the previous audio)."""
        x = np.frombuffer(pcm16, dtype="<i2")  # [N]
        with self._lock:
            self.attached = True
            if client_t is None:
                t = self.last_audio_t if self.last_audio_t is not None else (
                    self.last_t if self.last_t is not None else 0.0)
            else:
                t = self.stream_time(client_t)
                if self.last_audio_t is not None and t < self.last_audio_t - 0.05:
                    self.counts["audio_late"] += 1
                    return {"accepted": False, "error": (
                        "timestamp_not_increasing", f"audio timestamp {client_t:.3f} is before the end of the audio "
                        f"already received ({self.last_audio_t + self.origin:.3f}); send audio in order")}
            if self.speech is None:
                self.counts["audio_ignored_s"] += len(x) / sample_rate
                return {"accepted": False, "ignored": True, "origin": self.origin}
            ok = self.audio.push(x, int(sample_rate), t)
            self.last_audio_t = t + len(x) / sample_rate
            self.counts["audio_accepted_s" if ok else "audio_dropped_s"] += len(x) / sample_rate
        return {"accepted": ok, "origin": self.origin}

    # ---- output ---------------------------------------------------------------------------------
    def emit(self, ev: dict) -> None:
        with self._lock:
            self._seq += 1
            self._events.append({**ev, "n": self._seq})

    def events(self, after: int) -> list[dict]:
        with self._lock:
            return [e for e in self._events if e["n"] > after]

    @property
    def seq(self) -> int:
        """The number of the newest event."""
        with self._lock:
            return self._seq

    def on_segment(self, seg) -> None:
        self.emit({"type": "transcript", "text": seg.text, "start_s": seg.start_s, "end_s": seg.end_s})

    def stats(self) -> dict[str, Any]:
        with self._lock:
            st = dict(self.counts)
        st.update(queued_frames=self.frames.qsize(), frame_queue_size=self.frames.maxsize,
                  origin=self.origin, attached=self.attached, last_t=self.last_t)
        if self.speech is not None:
            sp = self.speech.stats()
            st["speech"] = {k: sp.get(k) for k in ("audio_s", "dropped_s", "segments", "words", "rtf", "error")}
        return st

    def detach(self) -> None:
        with self._lock:
            self.attached = False

    def close(self) -> None:
        self.frames.end()
        if self.speech is not None:
            self.speech.close(5.0)
        self.audio.close()


class PushWorkerMixin:
    """The realtime calls of a ``FleetWorker`` (see the module docstring)."""

    def _push_feeds(self) -> dict[str, PushFeed]:
        if not hasattr(self, "_feeds"):
            self._feeds: dict[str, PushFeed] = {}
            self.fleet.log.add_listener(self._push_on_event)  # one listener for every pushed stream
        return self._feeds

    def _push_on_event(self, ev: dict) -> None:
        feed = self._push_feeds().get(ev.get("stream"))
        if feed is not None:
            feed.emit({k: v for k, v in ev.items() if k != "id"})

    def _push_source(self, stream_id: str, memory_dir: str, resume_at: float, resume: bool = False):
        """The frames source of a new push stream (its feed is kept until the stream is removed)."""
        feed = PushFeed(stream_id, memory_dir, resume_at, resume=resume)
        self._push_feeds()[stream_id] = feed
        return feed.frames

    def _push_started(self, stream_id: str) -> None:
        """After ``fleet.add``: speech on when the stream's config asks for it; events of the stream."""
        feed = self._push_feeds().get(stream_id)
        if feed is None:
            return
        s = self.fleet.stream(stream_id)
        if s.config.memory.asr:
            from vstream.speech.track import SpeechTrack

            feed.speech = SpeechTrack(s.engine, s.config.asr, feed.audio, wait=False)
            feed.speech.on_segment(feed.on_segment)

    def _push_removed(self, stream_id: str) -> None:
        feed = self._push_feeds().pop(stream_id, None)
        if feed is not None:
            feed.close()

    def _push_stats_into(self, stream_id: str, stats: dict[str, Any]) -> None:
        """A pushed stream's feed counters (frames accepted / dropped / refused, audio) as ``stats["push"]``."""
        feed = self._push_feeds().get(stream_id)
        if feed is not None:
            stats["push"] = feed.stats()

    def _feed(self, stream_id: str) -> PushFeed:
        feed = self._push_feeds().get(stream_id)
        if feed is None:
            raise ValueError(f"stream {stream_id!r} is not fed by a client (its source is not push:); "
                             "open a realtime session on a new stream id")
        return feed

    def push_frames(self, stream_id: str, items: list[tuple[bytes, float]]) -> dict[str, Any]:
        """Frames (image bytes, client capture time) into a push stream."""
        return self._feed(stream_id).push_frames(items)

    def push_audio(self, stream_id: str, pcm16: bytes, sample_rate: int, client_t: float | None) -> dict[str, Any]:
        """PCM16 mono audio into a push stream."""
        return self._feed(stream_id).push_audio(pcm16, sample_rate, client_t)

    def push_events(self, stream_id: str, after: int = 0) -> dict[str, Any]:
        """Events of the stream numbered above ``after`` and the feed's counters."""
        feed = self._feed(stream_id)
        return {"events": feed.events(after), "feed": feed.stats(), "seq": feed.seq}

    def push_detach(self, stream_id: str) -> None:
        """The client went away: the stream stays (memory kept, a reconnect attaches again)."""
        feed = self._push_feeds().get(stream_id)
        if feed is not None:
            feed.detach()
