"""vstream: a streaming video-LLM agent with a bounded KV memory that answers while it watches."""
from __future__ import annotations

import logging

__version__ = "0.1.0"
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["Agent", "Session", "Fleet", "RayFleet", "Answer", "Evidence", "CommentaryItem", "Alert", "AgentConfig",
           "search", "export", "transcript", "__version__"]


def __getattr__(name: str):  # lazy: `import vstream` stays cheap (no torch import until needed)
    if name in ("Agent", "Session", "search", "export", "transcript"):
        from vstream import api

        return getattr(api, name)
    if name == "Fleet":
        from vstream.fleet import Fleet

        return Fleet
    if name == "RayFleet":
        from vstream.serve.client import RayFleet

        return RayFleet
    if name in ("Answer", "Evidence", "CommentaryItem", "Alert"):
        from vstream import types

        return getattr(types, name)
    if name == "AgentConfig":
        from vstream.config import AgentConfig

        return AgentConfig
    raise AttributeError(name)
