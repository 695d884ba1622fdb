"""Test helpers for the eval harness: a spy around a real Agent and its sessions."""
from __future__ import annotations

from typing import Any


class Interrupted(Exception):
    """Raised by a SpyAgent to simulate a run killed midway."""


class SpySession:
    """Wraps a real Session: records advance_to targets and questions; may raise after N asks."""

    def __init__(self, inner: Any, owner: "SpyAgent") -> None:
        self._inner = inner
        self._owner = owner
        self.advances: list[float] = []
        self.asked: list[tuple[float, str]] = []

    def advance_to(self, t: float) -> float:
        self.advances.append(t)
        return self._inner.advance_to(t)

    def ask(self, question: str, **kw: Any) -> Any:
        o = self._owner
        if o.fail_after_asks is not None and o.asks >= o.fail_after_asks:
            raise Interrupted(f"simulated crash after {o.asks} questions")
        o.asks += 1
        self.asked.append((self._inner.stream_time_s, question))
        return self._inner.ask(question, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> "SpySession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._inner.close()


class SpyAgent:
    """Wraps a real Agent: records every watch() call and the sessions it opened."""

    def __init__(self, agent: Any, fail_after_asks: int | None = None, _shared: dict | None = None) -> None:
        self._agent = agent
        self.config = agent.config
        self.model_name = agent.model_name
        self.fail_after_asks = fail_after_asks
        # counters and records shared with the spies ``with_config`` makes
        self._shared = _shared if _shared is not None else {"asks": 0, "watch_calls": [], "sessions": []}
        self.watch_calls: list[tuple[Any, dict]] = self._shared["watch_calls"]
        self.sessions: list[SpySession] = self._shared["sessions"]

    @property
    def asks(self) -> int:
        return self._shared["asks"]

    @asks.setter
    def asks(self, value: int) -> None:
        self._shared["asks"] = value

    def with_config(self, changes: dict) -> "SpyAgent":
        """A spy over an Agent with config fields changed (shares the model and this spy's records)."""
        from vstream.api import Agent

        inner = Agent(self._agent.adapter, self._agent.config.replace(**changes).validate())
        return SpyAgent(inner, self.fail_after_asks, self._shared)

    def watch(self, source: Any, **kw: Any) -> SpySession:
        self.watch_calls.append((source, kw))
        s = SpySession(self._agent.watch(source, **kw), self)
        self.sessions.append(s)
        return s
