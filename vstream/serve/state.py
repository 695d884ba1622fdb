"""The HTTP app's per-process state (fleet, token, allow_dir, limits, followers), set by
``vstream.serve.http.configure`` in each Serve replica and read by every route, the realtime WebSocket's too.

A module of its own so that the routes defined outside ``http`` (``realtime``) read it without importing
``http``; routes look it up when they run, because Serve runs a pickled copy of the app in its replica.
"""
from __future__ import annotations

from typing import Any

STATE: dict[str, Any] = {}
