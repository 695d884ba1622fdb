"""Short lecture clips for the audio and ASR tests: espeak-ng speech at known times, muxed by ffmpeg."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from conftest import REPO

_MOD = None


def lecture_module():
    """data/make_lecture.py as a module (it is a script, not part of the package)."""
    global _MOD
    if _MOD is None:
        sys.path.insert(0, str(REPO / "data"))
        spec = importlib.util.spec_from_file_location("make_lecture", REPO / "data" / "make_lecture.py")
        _MOD = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_MOD)
    return _MOD


def need_tools() -> None:
    """Skip (with the reason printed) when espeak-ng or ffmpeg is missing."""
    why = lecture_module().have_tools()
    if why:
        print(f"SKIP: {why}")
        pytest.skip(why)


def reference_16k(samples_int16: np.ndarray, rate: int) -> np.ndarray:
    """An independent 16 kHz version of int16 samples (scipy's polyphase resampler), float32 in [-1, 1]."""
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(16000, rate)
    return resample_poly(samples_int16.astype(np.float64) / 32768.0, 16000 // g, rate // g).astype(np.float32)


def words(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z0-9']+", text.lower().replace("-", " "))


def edit_distance(a: list[str], b: list[str]) -> int:
    """Word-level Levenshtein distance (written out here, independent of vstream.bench_asr)."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[len(a)][len(b)]
