"""The one ask path of a watched stream: ``Session`` and ``FleetStream`` both ask through ``Asking``.

A question goes to the stream's ``Responder`` (``self.responder``), which binds it to a snapshot of the
memory as of now. ``ask_async`` returns the Future[Answer]; ``ask`` waits for it or, with ``stream``,
returns the text pieces as they are decoded. The answer options reach the responder through one place
(``_options``): a new option is added to the two signatures and there.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Callable, Iterator

from vstream.session.responder import stream_answer

if TYPE_CHECKING:
    from vstream.session.responder import Responder
    from vstream.types import Answer


class Asking:
    """``ask`` / ``ask_async`` over ``self.responder`` (a mixin: the class sets ``responder``)."""

    responder: "Responder"

    @staticmethod
    def _options(max_new_tokens: int | None, history: bool) -> dict:
        """The answer options passed on to ``Responder.ask`` (the one place they are forwarded)."""
        return {"max_new_tokens": max_new_tokens, "history": history}

    def ask_async(self, question: str, *, max_new_tokens: int | None = None, history: bool = True,
                  on_piece: Callable[[str], None] | None = None, cancel: threading.Event | None = None) -> Future:
        """Queue a question on the memory as of now; returns a Future[Answer]. Raises ValueError when full."""
        return self.responder.ask(question, on_piece=on_piece, cancel=cancel,
                                  **self._options(max_new_tokens, history))

    def ask(self, question: str, *, stream: bool = False, max_new_tokens: int | None = None, history: bool = True,
            timeout: float | None = None) -> "Answer | Iterator[str]":
        """Answer a question about what has been seen so far (perception keeps running meanwhile).

        stream=True returns an iterator of text pieces; the final Answer is then ``last_answer``.
        """
        options = self._options(max_new_tokens, history)
        if not stream:
            return self.responder.ask(question, **options).result(timeout)
        _fut, pieces = stream_answer(self.responder.ask, question, **options)
        return pieces
