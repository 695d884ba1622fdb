"""The ``vstream`` command: ``main`` (watch, ask, search, export, models and the sub-commands), ``args``
(CLI arguments to config, shared with ``vstream eval``), ``fleet`` (``vstream fleet``), ``serve``
(``vstream serve``) and ``doctor`` (``vstream doctor``: verify a checkpoint).
"""
from __future__ import annotations

from vstream import lazy_exports

_EXPORTS = {"main": "main"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
