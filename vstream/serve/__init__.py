"""Scale-out on Ray: workers as Ray actors (worker), placement and recovery (controller), the Fleet API
(client.RayFleet), the HTTP API on Ray Serve (http), Prometheus metrics (metrics) and `vstream serve` (cli)."""
from __future__ import annotations

__all__ = ["RayFleet"]


def __getattr__(name: str):  # lazy: importing vstream.serve does not import ray
    if name == "RayFleet":
        from vstream.serve.client import RayFleet

        return RayFleet
    raise AttributeError(name)
