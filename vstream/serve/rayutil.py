"""Small Ray helpers shared by the controller and its clients."""
from __future__ import annotations

import ray


def unwrap(e: BaseException) -> BaseException:
    """The caller's error inside a Ray task error (a worker's ValueError stays a ValueError)."""
    while isinstance(e, ray.exceptions.RayTaskError) and isinstance(getattr(e, "cause", None), BaseException):
        e = e.cause
    return e


def gather(refs: list, timeout: float | None = 60) -> list:
    out = []
    for r in refs:
        try:
            out.append(ray.get(r, timeout=timeout))
        except Exception as e:  # a dead worker: reported, not raised
            out.append(e)
    return out
