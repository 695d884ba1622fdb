"""Sound into memory: streaming speech recognition with faster-whisper and the shipped Whisper tiny.en
(``asr``), and the speech track that runs beside perception and feeds recognised segments into the
engine's text window and the long-term store (``track``).
"""
from __future__ import annotations

from vstream import lazy_exports

_EXPORTS = {"StreamingASR": "asr", "WhisperRecognizer": "asr", "SpeechSegment": "asr", "Word": "asr", "transcribe": "asr", "load_whisper": "asr", "SpeechTrack": "track"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
