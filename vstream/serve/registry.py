"""The controller's durable registry: which streams exist (source, options, memory directory), where each
runs (worker, placement epoch) and how many workers were asked for.

One JSON file, ``STORAGE/registry.json``, rewritten crash-safely (temp file, fsync, rename) on every
change. A controller that starts on a storage directory with a registry (a restarted ``vstream serve``,
or the same actor restarted by Ray) reloads it: every stream is registered again and resumed from its
memory directory as soon as a worker is live. Sources are kept as given (a URL's password is needed
to reconnect), so the file is readable by the server's user only.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from memory.journal import atomic_write

logger = logging.getLogger(__name__)

REGISTRY_NAME = "registry.json"
_FORMAT = "vstream-serve-registry"


class Registry:
    """Streams and wanted worker count of one controller, persisted to ``path``. Thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.streams: dict[str, dict[str, Any]] = {}
        self.workers_wanted = 0
        self._load()

    def _load(self) -> None:
        try:
            d = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:  # a damaged registry is kept aside, never silently overwritten
            aside = self.path.with_name(f"{self.path.name}.damaged")
            os.replace(self.path, aside)
            logger.error("registry %s unreadable (%s): moved to %s; starting with no streams", self.path, e, aside)
            return
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise RuntimeError(f"{self.path} is not a vstream serve registry; give another --storage directory")
        self.workers_wanted = int(d.get("workers_wanted", 0))
        self.streams = {sid: s for sid, s in (d.get("streams") or {}).items()
                        if isinstance(s, dict) and isinstance(s.get("source"), str) and isinstance(s.get("memory_dir"), str)}

    def _save(self) -> None:
        data = json.dumps({"format": _FORMAT, "workers_wanted": self.workers_wanted, "streams": self.streams},
                          indent=1, default=str).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, data, durable=True)
        try:
            os.chmod(self.path, 0o600)
        except OSError:
            pass

    def put(self, stream_id: str, *, source: str, options: dict[str, Any], memory_dir: str,
            worker: str | None = None, epoch: int = 0) -> None:
        """Register (or update) a stream and write the registry."""
        with self._lock:
            self.streams[stream_id] = {"source": source, "options": options, "memory_dir": memory_dir,
                                       "worker": worker, "epoch": int(epoch)}
            self._save()

    def place(self, stream_id: str, worker: str | None, epoch: int) -> None:
        """Record where a registered stream runs now (None: waiting for a worker)."""
        with self._lock:
            s = self.streams.get(stream_id)
            if s is None:
                return
            s["worker"], s["epoch"] = worker, int(epoch)
            self._save()

    def drop(self, stream_id: str) -> None:
        with self._lock:
            if self.streams.pop(stream_id, None) is not None:
                self._save()

    def set_workers(self, n: int) -> None:
        with self._lock:
            self.workers_wanted = max(0, int(n))
            self._save()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return json.loads(json.dumps(self.streams))
