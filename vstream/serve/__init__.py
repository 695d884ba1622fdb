"""Scale-out on Ray: workers as Ray actors (``worker``), placement and recovery (``controller``, with its
durable journal in ``journal``), the Fleet API over actors (``client.RayFleet``), the HTTP API on Ray Serve
(``http``) and Prometheus metrics (``metrics``). ``vstream serve`` is ``vstream.cli.serve``."""
from __future__ import annotations

from vstream import lazy_exports

_EXPORTS = {"RayFleet": "client", "RealtimeClient": "realtime_client"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)  # lazy: importing vstream.serve does not import ray
