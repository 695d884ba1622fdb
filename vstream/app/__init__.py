"""The Gradio app's logic without Gradio: the controller every callback calls (``controller``) and each
browser's chat state and view helpers (``chat``). ``app.py`` at the top of the repository is the UI.
"""
from __future__ import annotations

from vstream import lazy_exports

_EXPORTS = {"AppController": "controller", "Chat": "chat"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
