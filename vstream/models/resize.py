"""Frame resizing the way the HF processors do it, on the model's device.

``fit_to_grid``: the Qwen-VL size rule. ``resize_frames``: the adapters' entry point. On CPU it resizes
with Pillow itself (the HF processors' own reference, in C); on other devices with ``resize_like_pil``,
PIL's 8-bit resampling (bicubic, Lanczos, bilinear) reproduced exactly in torch. Both give PIL's pixels
to the level. ``torch_resize()`` (or ``VSTREAM_RESIZE=torch``) forces the torch path on CPU too.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import Callable, Iterator, Sequence

import numpy as np
import torch


def fit_to_grid(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen-VL's resize rule: both sides multiples of ``factor``, area within [min_pixels, max_pixels].

    The rule of HF's Qwen2-VL ``smart_resize``: round each side to the nearest multiple (Python's
    round, ties to even); if the area is above the budget scale both sides down by the same factor and
    floor them, if below scale up and ceil them. The aspect ratio is kept as closely as the grid allows.
    """
    if height < 1 or width < 1:
        raise ValueError(f"frames must have a positive size, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"frame aspect ratio {height}x{width} is above 200; crop the video")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


#: PIL's resample codes as written in preprocessor configs ("resample": 1 = LANCZOS, 3 = BICUBIC).
PIL_RESAMPLE = {1: "lanczos", 2: "bilinear", 3: "bicubic"}


def _kernel(name: str) -> tuple[Callable[[np.ndarray], np.ndarray], float]:
    """(filter, support) of PIL's resampling filters."""
    if name == "bicubic":  # Keys cubic, a = -0.5
        def f(x):
            x = np.abs(x)
            a = -0.5
            return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                            np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))
        return f, 2.0
    if name == "lanczos":  # sinc(x) sinc(x / 3) on |x| < 3
        def f(x):
            return np.where(np.abs(x) < 3, np.sinc(x) * np.sinc(x / 3), 0.0)
        return f, 3.0
    if name == "bilinear":
        def f(x):
            return np.clip(1 - np.abs(x), 0, None)
        return f, 1.0
    raise ValueError(f"unknown resample filter {name!r}; use bicubic, lanczos or bilinear")


#: PIL's fixed-point precision for 8-bit resampling (Resample.c: PRECISION_BITS = 32 - 8 - 2).
_PRECISION_BITS = 22


@functools.lru_cache(maxsize=64)
def _resample_matrix(n_in: int, n_out: int, name: str) -> torch.Tensor:
    """[n_out, n_in] float64 fixed-point weights (integers, scale 2**22) of one 8-bit resampling pass.

    PIL's coefficient rule: the filter is centred on each output pixel's centre in input coordinates,
    stretched by the downscale factor (antialiasing), cut to the image, normalised to sum 1, then
    rounded half away from zero to 22-bit fixed point.
    """
    f, support = _kernel(name)
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support *= fscale
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        w = f((np.arange(lo, hi) - center + 0.5) / fscale)
        total = w.sum()
        if total != 0:
            w = w / total
        m[o, lo:hi] = np.trunc(w * (1 << _PRECISION_BITS) + np.where(w < 0, -0.5, 0.5))
    return torch.from_numpy(m)


def _pass(levels: torch.Tensor, m: torch.Tensor, dim: int) -> torch.Tensor:
    """One fixed-point pass over ``dim`` (-1 or -2) of integer levels held in float64 (exact: < 2**53)."""
    if dim == -1:
        acc = levels @ m.T  # [..., H, W] @ [W, w]
    else:
        acc = m @ levels  # [h, H] @ [..., H, w]
    return torch.floor((acc + (1 << (_PRECISION_BITS - 1))) / (1 << _PRECISION_BITS)).clamp_(0, 255)


def resize_like_pil(x: torch.Tensor, size: tuple[int, int], resample: str = "bicubic") -> torch.Tensor:
    """Resize [N, 3, H, W] floats on 8-bit levels (k / 255) exactly the way PIL resizes a uint8 RGB image.

    PIL resamples separably, horizontal pass first, each pass in 22-bit fixed point rounded and clipped
    to 8 bits. This repeats that arithmetic on the tensor's device in float64 (every intermediate is an
    integer below 2**53, so the sums are exact): the result equals PIL's to the level. A side that keeps
    its size is not resampled (PIL copies it). Returns float32 levels / 255.
    """
    h, w = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) == (h, w):
        return x
    y = (x.double() * 255.0).round_()
    if y.shape[-1] != w:
        y = _pass(y, _resample_matrix(int(y.shape[-1]), w, resample).to(y.device), -1)
    if y.shape[-2] != h:
        y = _pass(y, _resample_matrix(int(y.shape[-2]), h, resample).to(y.device), -2)
    return (y / 255.0).to(x.dtype)


_PIL_FILTERS = {"bicubic": "BICUBIC", "lanczos": "LANCZOS", "bilinear": "BILINEAR"}
_force_torch = os.environ.get("VSTREAM_RESIZE", "").strip().lower() == "torch"


@contextlib.contextmanager
def torch_resize(on: bool = True) -> Iterator[None]:
    """Within the block, resize with the torch reproduction on CPU as well (``on=False``: Pillow on CPU)."""
    global _force_torch
    before, _force_torch = _force_torch, on
    try:
        yield
    finally:
        _force_torch = before


def uses_pillow(device: torch.device | str) -> bool:
    """True when ``resize_frames`` resizes with Pillow on ``device`` (CPU, not forced to torch)."""
    return torch.device(device).type == "cpu" and not _force_torch


def _pil_chain(frame: np.ndarray, sizes: Sequence[tuple[int, int]], resample: str) -> np.ndarray:
    """One [H, W, 3] uint8 frame through Pillow's resize to each (h, w) in turn (HF's PIL processors' call)."""
    from PIL import Image

    flt = getattr(Image.Resampling, _PIL_FILTERS[resample])
    img = Image.fromarray(np.ascontiguousarray(frame), mode="RGB")
    for h, w in sizes:
        if img.size != (w, h):
            img = img.resize((w, h), resample=flt, reducing_gap=None)
    return np.asarray(img)


def resize_frames(frames: np.ndarray, sizes: Sequence[tuple[int, int]], resample: str,
                  device: torch.device | str) -> torch.Tensor:
    """[N, H, W, 3] uint8 frames -> [N, 3, h, w] float32 levels / 255 on ``device``, resized as PIL does.

    ``sizes`` are (h, w) targets applied in turn (SmolVLM resizes twice). CPU: Pillow's own resize;
    otherwise (or under ``torch_resize()``): ``resize_like_pil`` on the device. Same levels either way.
    """
    if resample not in _PIL_FILTERS:
        raise ValueError(f"unknown resample filter {resample!r}; use bicubic, lanczos or bilinear")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [N, H, W, 3] uint8, got shape {frames.shape} dtype {frames.dtype}")
    if uses_pillow(device):
        out = np.stack([_pil_chain(f, sizes, resample) for f in frames])  # [N, h, w, 3] uint8
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)  # [N, 3, h, w]
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    for size in sizes:
        x = resize_like_pil(x, size, resample)
    return x  # [N, 3, h, w]
