"""vstream: a streaming video-LLM agent with a bounded KV memory that answers while it watches.

The public surface is re-exported here (``from vstream import Agent, Fleet, RayFleet``); each concern is a
sub-package with its own ``__init__`` naming its public pieces (docs/architecture.md draws them):
``sources`` (bytes to timed frames and audio), ``models`` (one adapter per VLM family), ``engine``
(perception and answering), ``session`` (one stream's life), ``speech`` (ASR into memory), ``fleet`` (many
streams, one model), ``serve`` (Ray actors and the HTTP API), ``app`` (the Gradio app's logic), ``bench``
and ``cli``; ``api`` is the facade the CLI, the app, the eval harness and the servers call.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any, Callable

__version__ = "0.1.0"
logging.getLogger(__name__).addHandler(logging.NullHandler())


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``package.<exports[name]>`` on first use of ``name``, so that
    importing a package stays cheap (no torch, ray or gradio until a name that needs them is used)."""
    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__


_EXPORTS = {"Agent": "api", "Session": "api", "search": "api", "export": "api", "transcript": "api",
            "Fleet": "fleet.core", "RayFleet": "serve.client", "Answer": "types", "Evidence": "types",
            "CommentaryItem": "types", "Alert": "types", "AgentConfig": "config"}
__all__ = sorted(_EXPORTS) + ["__version__"]
__getattr__ = lazy_exports(__name__, _EXPORTS)
