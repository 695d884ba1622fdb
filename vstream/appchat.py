"""One browser's chat in the app (``Chat``) and what the UI says about sharing (``SHARING_NOTE``).

The app's stream is shared by every browser; each browser gets its own ``Chat`` from
``AppController.new_chat()`` and keeps it in Gradio's per-session state.
"""
from __future__ import annotations

import threading
from typing import Any

__all__ = ["Chat", "SHARING_NOTE"]

#: What the UI says about sharing (one stream for everyone, one chat per browser).
SHARING_NOTE = ("The video source, its memory, the alerts and the commentary are shared by everyone using this "
                "app; your chat and its evidence are yours alone (one per browser tab; earlier questions from any "
                "chat are part of the model's context).")


class Chat:
    """One browser's chat over the shared stream: messages and the evidence of its latest answer."""

    def __init__(self, limit: int = 200) -> None:
        self._lock = threading.Lock()
        self._messages: list[dict] = []
        self._limit = int(limit)
        self.version = 0
        self._evidence: list[tuple[Any, str]] = []
        self.evidence_version = 0

    def post(self, role: str, content: str) -> dict:
        msg = {"role": role, "content": content}
        with self._lock:
            self._messages.append(msg)
            del self._messages[:-self._limit]
            self.version += 1
        return msg

    def edit(self, msg: dict, content: str) -> None:
        with self._lock:
            msg["content"] = content
            self.version += 1

    def messages(self) -> list[dict]:
        """The chat as Gradio messages (copies)."""
        with self._lock:
            return [dict(m) for m in self._messages]

    def set_evidence(self, items: list[tuple[Any, str]]) -> None:
        with self._lock:
            self._evidence = list(items)
            self.evidence_version += 1

    def evidence(self) -> list[tuple[Any, str]]:
        with self._lock:
            return list(self._evidence)
