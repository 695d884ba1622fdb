"""Preprocessing ahead of perception: ``PreprocessAhead``, a mixin of every model adapter.

The pipeline's reader thread calls ``prepare_ahead(frames)`` on each chunk while the perception thread
runs the model on the previous one; the adapter's ``embed_chunk`` then takes the result through
``preprocessed(frames)`` instead of preprocessing again. Results are matched to the very array object
(held until used, so its id cannot be reused) and at most ``AHEAD_MAX`` are kept.
"""
from __future__ import annotations

from typing import Any

import numpy as np


class PreprocessAhead:
    """``prepare_ahead`` / ``preprocessed`` over the adapter's own ``preprocess``."""

    #: chunks preprocessed ahead and not yet embedded, at most this many are held
    AHEAD_MAX = 8

    def prepare_ahead(self, frames: np.ndarray) -> None:
        """Preprocess ``frames`` now (the pipeline's preprocess stage, in its own thread); the next
        ``preprocessed`` of this same array object returns the result instead of preprocessing again."""
        out = self.preprocess(frames)
        ahead = self.__dict__.setdefault("_ahead", {})  # id(frames) -> (frames, result); dict ops are atomic
        ahead[id(frames)] = (frames, out)
        while len(ahead) > self.AHEAD_MAX:  # chunks dropped before perception (realtime backlog)
            ahead.pop(next(iter(ahead)), None)

    def preprocess(self, frames: np.ndarray) -> Any:  # the adapter's own
        raise NotImplementedError

    def preprocessed(self, frames: np.ndarray) -> Any:
        """``preprocess(frames)``, taken from ``prepare_ahead`` when that already ran on this array."""
        hit = self.__dict__.get("_ahead", {}).pop(id(frames), None)
        if hit is not None and hit[0] is frames:
            return hit[1]
        return self.preprocess(frames)
