"""The limits a ``vstream serve`` holds against careless and hostile clients, in one dataclass.

Every limit has a default that a single-machine server can live with; ``vstream serve`` takes them from
its command line (``--max-streams`` ...). Routes (the HTTP app here and any other route on the same
app, e.g. a WebSocket) read the one ``ServeLimits`` the app was configured with.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: URL schemes an HTTP client may name as a source: pull-only protocols (nothing here listens on a port).
CLIENT_SCHEMES = ("http", "https", "rtsp", "rtsps", "rtmp", "rtmps", "srt")


@dataclass
class ServeLimits:
    """Bounds on what clients may ask of a server (see docs/serve.md, "Limits and security")."""

    max_streams: int = 64  # registered streams per server; more: 429
    max_followers_per_token: int = 16  # open /v1/events followers per client token; more: 429
    max_followers: int = 256  # open /v1/events followers in all (their own budget, apart from short requests)
    max_body_bytes: int = 1 << 20  # request body; more: 413
    max_question_chars: int = 8000  # question text at the edge; more: 413
    max_question_tokens: int = 2048  # question tokens counted by the worker's tokenizer; more: 413
    max_new_tokens: int = 1024  # cap on max_new_tokens / max_tokens; more: 400
    max_conditions: int = 16  # notify conditions per stream
    max_id_chars: int = 200  # stream id length
    schemes: tuple[str, ...] = CLIENT_SCHEMES  # URL schemes clients may open
    short_requests: int = 64  # ongoing short requests (everything but followers) per replica

    def validate(self) -> "ServeLimits":
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "schemes":
                if not v or not all(isinstance(s, str) and s for s in v):
                    raise ValueError("ServeLimits.schemes must be a non-empty list of URL schemes, e.g. ('https',)")
            elif not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ServeLimits.{f.name} must be a whole number >= 1, got {v!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "ServeLimits":
        """Limits from a dict (unknown keys: ValueError naming them)."""
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise ValueError(f"unknown serve limit(s) {', '.join(bad)}; known: {', '.join(sorted(names))}")
        if "schemes" in d:
            d["schemes"] = tuple(d["schemes"])
        return cls(**d).validate()


class LimitExceeded(ValueError):
    """A request over one of the server's limits (HTTP ``status``: 413 or 429)."""

    def __init__(self, message: str, status: int = 429, code: str = "limit_exceeded") -> None:
        super().__init__(message)
        self.status, self.code = status, code

    def __reduce__(self):  # crosses Ray's process boundary intact
        return (LimitExceeded, (str(self), self.status, self.code))
