"""What the server tests share: a free loopback port, waiting on a condition, and a local Ray cluster
(2 CPUs, offline, loopback) that is shut down with Serve and the test's fleet at the end of the module."""
from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred: Callable[[], Any], timeout: float = 60.0, every: float = 0.1) -> Any:
    """``pred()`` once it is truthy, polling every ``every`` s for at most ``timeout`` s (its last value)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(every)
    return pred()


def start_ray(request, extra_env: dict[str, str] | None = None, **init_kw: Any) -> dict[str, Any]:
    """``ray.init(num_cpus=2)`` for a test module (skipped, with the reason, when Ray cannot start here).

    Returns a holder: put the module's RayFleet under ``"fleet"``; at the end Serve is shut down, the fleet
    closed and Ray shut down, in that order."""
    ray = pytest.importorskip("ray")
    env_vars = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(extra_env or {})}
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="vstream",
                 runtime_env={"env_vars": env_vars}, **init_kw)
    except Exception as e:  # the only reason to skip
        pytest.skip(f"Ray cannot start here: {e}")
    held: dict[str, Any] = {"fleet": None}

    def finish() -> None:
        from ray import serve

        try:
            serve.shutdown()
        finally:
            if held["fleet"] is not None:
                held["fleet"].close()
            ray.shutdown()

    request.addfinalizer(finish)
    return held
