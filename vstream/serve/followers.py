"""Open ``/v1/events`` followers per client token: their own budget, apart from short requests.

A follower holds its HTTP request open for as long as the client reads. ``FollowerBudget`` counts them
per client key (a hash of the token) and in all, and refuses one over ``ServeLimits.max_followers_per_token``
or ``max_followers`` with a 429, so followers can never take the slots health checks and questions need.
"""
from __future__ import annotations

import threading

from vstream.serve.limits import ServeLimits
from vstream.serve.validation import APIError


class FollowerBudget:
    """Thread-safe counts of open followers per client key."""

    def __init__(self, limits: ServeLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}

    def claim(self, key: str) -> None:
        """Count one more follower of ``key``, or APIError 429 when it is over a limit."""
        lim = self.limits
        with self._lock:
            mine = self._open.get(key, 0)
            if mine >= lim.max_followers_per_token:
                raise APIError(429, f"{mine} event followers are open with this token, the server's limit of "
                                    f"{lim.max_followers_per_token}; close one first (or read with follow=false)",
                               "too_many_followers")
            if sum(self._open.values()) >= lim.max_followers:
                raise APIError(429, "the server follows as many event streams as it may; try again later",
                               "too_many_followers")
            self._open[key] = mine + 1

    def release(self, key: str) -> None:
        """A follower of ``key`` ended (client gone or feed finished)."""
        with self._lock:
            n = self._open.get(key, 0) - 1
            if n > 0:
                self._open[key] = n
            else:
                self._open.pop(key, None)

    def open(self) -> int:
        """Followers open now, all keys together."""
        with self._lock:
            return sum(self._open.values())
