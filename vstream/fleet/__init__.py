"""Many streams on one model: ``core.Fleet`` (one perception loop batching the ready chunks of all
streams), each stream's reader, responder, alerts and retention (``stream``), search across streams
(``search``), and the crash-safe event log with its webhook (``events``).
"""
from __future__ import annotations

from vstream import lazy_exports

_EXPORTS = {"Fleet": "core", "StreamHit": "core", "FleetStream": "stream", "EventLog": "events", "Webhook": "events", "stream_evidence": "search"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
