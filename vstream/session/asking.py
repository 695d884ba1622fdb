"""The one ask path of a watched stream: ``Session`` and ``FleetStream`` both ask through ``Asking``.

A question goes to the stream's ``Responder`` (``self.responder``), which binds it to a snapshot of the
memory as of now. ``ask_async`` returns the Future[Answer]; ``ask`` waits for it or, with ``stream``,
returns the text pieces as they are decoded. The answer options reach the responder through one place
(``_options``): a new option is added to the two signatures and there. ``since``/``until`` (and
``parse_time``) limit the answer to a wall-clock range in the stream's zone (``self.tz``; ``vstream.clock``).
"""
from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Iterator

from vstream.session.responder import stream_answer

if TYPE_CHECKING:
    from vstream.session.responder import Responder
    from vstream.types import Answer


class Asking:
    """``ask`` / ``ask_async`` over ``self.responder`` (a mixin: the class sets ``responder`` and ``tz``)."""

    responder: "Responder"
    tz: str  # the zone of the stream's clock (IANA name)

    def time_range(self, since: Any = None, until: Any = None, question: str | None = None
                   ) -> tuple[float, float] | None:
        """``since``/``until`` as a wall-clock range in this stream's zone (None when neither is given); without
        them, the range ``question`` names (when given: ``vstream.clock.question_range``)."""
        from vstream.clock import parse_range, question_range

        rng = parse_range(since, until, tz=self.tz)
        if rng is None and question is not None:
            rng = question_range(question, tz=self.tz)
        return rng

    def _options(self, question: str, max_new_tokens: int | None, history: bool, since: Any = None,
                 until: Any = None, parse_time: bool = False) -> dict:
        """The answer options passed on to ``Responder.ask`` (the one place they are forwarded)."""
        rng = self.time_range(since, until, question if parse_time else None)
        return {"max_new_tokens": max_new_tokens, "history": history,
                **({"wall_range": rng} if rng is not None else {})}

    def ask_async(self, question: str, *, max_new_tokens: int | None = None, history: bool = True,
                  on_piece: Callable[[str], None] | None = None, cancel: threading.Event | None = None,
                  since: Any = None, until: Any = None, parse_time: bool = False) -> Future:
        """Queue a question on the memory as of now; returns a Future[Answer]. Raises ValueError when full."""
        return self.responder.ask(question, on_piece=on_piece, cancel=cancel,
                                  **self._options(question, max_new_tokens, history, since, until, parse_time))

    def ask(self, question: str, *, stream: bool = False, max_new_tokens: int | None = None, history: bool = True,
            timeout: float | None = None, since: Any = None, until: Any = None,
            parse_time: bool = False) -> "Answer | Iterator[str]":
        """Answer a question about what has been seen so far (perception keeps running meanwhile).

        stream=True returns an iterator of text pieces; the final Answer is then ``last_answer``.
        ``since``/``until`` (datetimes, ISO strings, "10m", "yesterday 08:00"; ``vstream.clock.parse_when``):
        answer only from what was recorded in that wall-clock range ("Nothing recorded in that period."
        without calling the model when nothing was). ``parse_time=True``: without since/until, a time the
        question names ("around 14:05", "in the last ten minutes") sets the range.
        """
        options = self._options(question, max_new_tokens, history, since, until, parse_time)
        if not stream:
            return self.responder.ask(question, **options).result(timeout)
        _fut, pieces = stream_answer(self.responder.ask, question, **options)
        return pieces
