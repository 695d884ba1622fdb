"""One adapter per VLM family behind one protocol (``base.ModelAdapter``) and a registry of names and
presets (``registry``); ``qwen_vl`` is the base the two Qwen-VL families share; exact preprocessing (``resize``), chat templates and the offline tokenizer.
"""
from __future__ import annotations

from vstream import lazy_exports

_EXPORTS = {"ModelAdapter": "base", "Tokens": "base", "load_model": "registry", "check_model_name": "registry", "describe_models": "registry"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
