"""One stream's life around the engine: the reader pipeline (decode, sample, chunk, back-pressure,
failures; ``pipeline``), a question's whole life on a snapshot (``responder``; ``asking``: the one
``ask`` / ``ask_async`` of Session and FleetStream; ``stats``: the statistics both report), standing alerts
(``alerts``), which source a memory directory holds (``memory_dir``) and what it recalls without a
VLM: search, transcript, export (``recall``); the stored moments per clock minute (``minutes.timeline``).
"""
from __future__ import annotations

from vstream import lazy_exports

_EXPORTS = {"Asking": "asking", "stream_stats": "stats", "Pipeline": "pipeline", "Responder": "responder", "Query": "responder", "QueueFull": "responder", "stream_answer": "responder", "check_question": "responder", "Alerts": "alerts", "Notifier": "alerts", "check_memory_dir": "memory_dir", "claim_memory_dir": "memory_dir", "ShiftedSource": "memory_dir", "search": "recall", "transcript": "recall", "export": "recall", "Moment": "recall", "Line": "recall", "timeline": "minutes", "Minute": "minutes", "TimelineItem": "minutes"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
