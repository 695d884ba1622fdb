"""`vstream push SOURCE --to URL --stream ID`: read a local file, webcam or device and push it to a served stream.

Frames (JPEG, sampled at --fps) and the audio track (PCM16, 16 kHz) go over ``WS /v1/realtime`` at real
time: a file is paced to the wall clock, a camera is sent as it comes. Stamps are this machine's monotonic
clock. When the connection drops (the server's worker died, the network went away) the push reconnects
to the same stream and goes on; the stream resumes from its memory. ``--ask`` asks a question at
``--ask-at`` seconds and prints the answer as it arrives.
"""
from __future__ import annotations

import io
import itertools
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("push", help="push a local file / webcam / device to a served stream over WebSocket")
    p.add_argument("source", help="a video file, a camera device (/dev/video0) or a URL this machine can open")
    p.add_argument("--to", required=True, help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--stream", required=True, help="the stream id to create or continue")
    p.add_argument("--token-file", default=None, help="file with the server's bearer token (or $VSTREAM_TOKEN)")
    p.add_argument("--fps", type=float, default=2.0, help="frames sent per second (default 2)")
    p.add_argument("--start", type=float, default=0.0, help="start at this second of a file")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--max-side", type=int, default=640, help="scale frames down to this longest side (pixels)")
    p.add_argument("--quality", type=int, default=85, help="JPEG quality 1-95")
    p.add_argument("--no-audio", action="store_true", help="send no audio (and no transcription)")
    p.add_argument("--ask", default=None, help="a question to ask while pushing")
    p.add_argument("--ask-at", type=float, default=None, help="seconds into the push to ask (default: halfway)")
    p.add_argument("--linger", type=float, default=2.0, help="seconds to wait for events after the end")
    p.add_argument("--reconnects", type=int, default=5, help="reconnect this many times after a drop")
    p.add_argument("--json", action="store_true", help="print events and the summary as JSON lines")
    p.set_defaults(func=cmd_push)


def _token(args) -> str | None:
    if args.token_file:
        from vstream.cli.serve import read_token

        return read_token(args.token_file)
    return os.environ.get("VSTREAM_TOKEN") or None


def jpeg(rgb: np.ndarray, max_side: int, quality: int) -> bytes:
    """[H, W, 3] uint8 -> JPEG bytes, the longest side at most ``max_side``."""
    from PIL import Image

    im = Image.fromarray(rgb)
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


class Pusher:
    """Pushes one source through a ``RealtimeClient`` that it reconnects when the session drops."""

    def __init__(self, args, out=sys.stdout) -> None:
        from vstream.serve.client import RealtimeClient

        self.args, self.out = args, out
        self.client = RealtimeClient(args.to, args.stream, token=_token(args), on_event=self._on_event)
        self.lock = threading.Lock()  # output lines
        self.conn_lock = threading.Lock()  # one reconnect at a time
        self.generation = 0  # connections made
        self.sent = {"frames": 0, "audio_s": 0.0, "errors": 0, "reconnects": 0, "transcript": [], "answers": []}
        self.stop = threading.Event()
        self._answer: list[str] = []

    # ---- events -------------------------------------------------------------------------------
    def _print(self, obj) -> None:
        with self.lock:
            self.out.write((json.dumps(obj) if self.args.json else str(obj)) + "\n")
            self.out.flush()

    def _on_event(self, ev: dict) -> None:
        t = ev.get("type")
        if t == "error":
            self.sent["errors"] += 1
            self._print(ev if self.args.json else f"error {ev['error']['code']}: {ev['error']['message']}")
        elif t == "transcript.delta":
            self.sent["transcript"].append(ev["delta"])
            self._print(ev if self.args.json else f"[speech {ev['start_s']:.1f}-{ev['end_s']:.1f}s] {ev['delta']}")
        elif t in ("alert.fired", "gap") and not self.args.json:
            self._print(f"{t}: {ev.get('condition') or ev.get('silent_s')}")
        elif t in ("alert.fired", "gap", "response.done") and self.args.json:
            self._print(ev)

    # ---- connection ---------------------------------------------------------------------------
    def connect(self) -> None:
        last = None
        for attempt in range(self.args.reconnects + 1):
            try:
                self.client.connect()
                if not self.client.session.get("vstream", {}).get("started"):
                    cfg = {"fps": self.args.fps}
                    if self.has_audio:
                        cfg.update(input_audio_sample_rate=16000, input_audio_transcription={"model": "default"})
                    self.client.update_session(**cfg)
                return
            except Exception as e:  # noqa: BLE001 - the server is restarting its worker: try again
                last = e
                time.sleep(min(5.0, 0.5 * 2 ** attempt))
        raise RuntimeError(f"cannot connect to {self.client.url}: {last}")

    def send(self, fn, *a) -> None:
        """Send with reconnects (the stream and its clock go on)."""
        for _ in range(self.args.reconnects + 1):
            gen = self.generation
            try:
                fn(*a)
                return
            except Exception as e:  # noqa: BLE001 - websockets.ConnectionClosed and friends
                with self.conn_lock:
                    if gen == self.generation:  # nobody reconnected meanwhile
                        logger.warning("push: connection lost (%s); reconnecting", e)
                        self.sent["reconnects"] += 1
                        self.client.close()
                        self.connect()
                        self.generation += 1
        raise RuntimeError("the connection keeps dropping; giving up")

    # ---- the push -----------------------------------------------------------------------------
    def run(self) -> dict:
        from vstream.sources import open_source
        from vstream.sources.audio import audio_blocks

        a = self.args
        end_s = a.start + a.duration if a.duration else None
        kw = {"start_s": a.start, "end_s": end_s} if (a.start or end_s) else {}
        src = open_source(a.source, **kw)
        live = getattr(src, "duration", None) is None
        blocks = None if a.no_audio else audio_blocks(src, a.start, end_s)
        self.has_audio = blocks is not None
        self.connect()
        frames = iter(src)
        first = next(frames, None)
        if first is None:
            raise ValueError(f"source {a.source!r} has no frames")
        self.base, primed = self._prime(first)  # the client clock at clip time a.start
        threads = []
        if blocks is not None:
            threads.append(threading.Thread(target=self._audio, args=(blocks, live), daemon=True))
        if a.ask:
            threads.append(threading.Thread(target=self._ask, args=(src,), daemon=True))
        for t in threads:
            t.start()
        try:
            self._frames(frames if primed else itertools.chain([first], frames), live, end_s)
        finally:
            self.stop.set()
            for t in threads:
                t.join(a.linger + 120 if t.name.startswith("ask") else 10)
            time.sleep(a.linger)
            stats = (self.client.session.get("vstream") or {}).get("stats", {})
            self.client.close()
            if hasattr(src, "close"):
                src.close()
        return {**self.sent, "session_stats": stats}

    def _prime(self, first) -> tuple[float, bool]:
        """Send the first frame and wait until the server has created (or attached) the stream: loading the
        stream's models takes seconds. Returns (the client clock at the first frame, whether it was sent): the
        frames and audio of those seconds then go at once, and the stream's times are the clip's."""
        if self.client.session.get("vstream", {}).get("started"):
            return time.monotonic(), False
        ts = time.monotonic()
        self.send(self.client.append_frame, jpeg(first.rgb, self.args.max_side, self.args.quality), ts)
        self.sent["frames"] += 1
        end = ts + 300
        while not self.client.session.get("vstream", {}).get("started"):
            if time.monotonic() > end:
                raise RuntimeError("the server did not start the stream within 300 s")
            time.sleep(0.05)
        return ts - (first.t - self.args.start), True

    def _wait_until(self, t: float) -> None:
        dt = self.base + (t - self.args.start) - time.monotonic()
        if dt > 0:
            time.sleep(dt)

    def _frames(self, src, live: bool, end_s: float | None) -> None:
        a = self.args
        period, next_t, last = 1.0 / a.fps, None, -1.0
        for fr in src:
            if end_s is not None and fr.t >= end_s:
                break
            if next_t is not None and fr.t < next_t - 1e-6:
                continue
            next_t = (fr.t if next_t is None else next_t) + period
            if not live:
                self._wait_until(fr.t)
            ts = self.base + (fr.t - a.start) if not live else time.monotonic()
            if ts <= last:
                continue
            last = ts
            self.send(self.client.append_frame, jpeg(fr.rgb, a.max_side, a.quality), ts)
            self.sent["frames"] += 1

    def _audio(self, blocks, live: bool) -> None:
        for b in blocks:
            if self.stop.is_set():
                break
            if not live:
                self._wait_until(b.t_start_s)
            pcm = (np.clip(b.samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()  # [N] float32 -> PCM16
            self.send(self.client.append_audio, pcm, self.base + (b.t_start_s - self.args.start))
            self.sent["audio_s"] += b.duration_s

    def _ask(self, src) -> None:
        a = self.args
        at = a.ask_at if a.ask_at is not None else (a.duration or getattr(src, "duration", None) or 20.0) / 2
        end = time.monotonic() + at
        while time.monotonic() < end and not self.stop.wait(0.1):
            pass
        try:
            res = self.client.ask(a.ask, timeout=120.0)
        except Exception as e:  # noqa: BLE001 - reported, the push goes on
            self._print(f"ask failed: {e}")
            return
        self.sent["answers"].append(res["text"])
        vs = res["response"].get("vstream") or {}
        if not a.json:
            ev = ", ".join(f"{e['client_start']:.2f}-{e['client_end']:.2f}" for e in vs.get("evidence", [])
                           if e.get("client_start") is not None)
            self._print(f"Q: {a.ask}\nA: {res['text'].strip()}\n   (evidence at client times {ev or 'none'})")


def cmd_push(args) -> int:
    if not args.fps > 0:
        raise ValueError(f"--fps must be > 0, got {args.fps}")
    if args.duration is not None and not args.duration > 0:
        raise ValueError(f"--duration must be > 0 seconds, got {args.duration}")
    if not 1 <= args.quality <= 95:
        raise ValueError(f"--quality must be 1..95, got {args.quality}")
    if not Path(args.source).exists() and "://" not in args.source and not args.source.startswith("/dev/"):
        raise ValueError(f"source {args.source!r} does not exist; give a video file, a camera device or a URL")
    summary = Pusher(args).run()
    summary = {k: v for k, v in summary.items() if k != "transcript"} | {"transcript": " ".join(summary["transcript"])}
    print(json.dumps(summary) if args.json else f"pushed {summary['frames']} frames and {summary['audio_s']:.1f} s "
          f"of audio to {args.stream} ({summary['errors']} errors, {summary['reconnects']} reconnects)")
    return 0
