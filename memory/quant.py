"""Per-channel symmetric KV quantisation for the cold tiers (int8; int4 packed two per byte; 2-bit
ternary packed four per byte, VidKV's 1.58-bit values).

A tensor ``t`` of shape ``[..., S, D]`` (K/V: ``[1, H_kv, S, D]``) is quantised per channel: every
(head, d) channel gets one fp32 scale over its S tokens, ``scale = max_s |t[..., s, d]| / qmax`` with
``qmax = 127`` (int8), ``7`` (int4) or ``1`` (2-bit: the values -1, 0, 1), and ``q = round(t / scale)``. Keys have a few large channels
(outlier channels), so per-channel scales keep the error of the other channels small.

Error bound (stated and tested): for every element,
``|dequantize(quantize(t, bits), float32) - t| <= scale * (1/2 + qmax * 2**-20)`` (the second term
is fp32 rounding), i.e. about ``max|channel| / 254`` for int8, ``max|channel| / 14`` for int4 and
``max|channel| / 2`` for 2-bit (relative to the channel's largest magnitude: 0.39 %, 7.1 % and 50 %;
2-bit is meant for values, whose errors average out in attention, as in VidKV). Dequantising to a lower-precision
dtype adds that dtype's rounding on top (bfloat16: relative 2**-8). A channel that is all zeros comes
back exactly zero. 1-D tensors are treated as one channel.

The result is a plain ``dict[str, Tensor]`` (safetensors can store it as it is).
"""
from __future__ import annotations

import torch

_QMAX = {8: 127, 4: 7, 2: 1}


def _as_2d(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """View ``t`` as [rows, S, D] for per-channel statistics over S."""
    if t.dim() == 0:
        raise ValueError("cannot quantise a 0-d tensor")
    if t.dim() == 1:
        return t.reshape(1, -1, 1), 1
    return t.reshape(-1, t.shape[-2], t.shape[-1]), t.dim()


def quantize(t: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """Quantise ``t`` [..., S, D] per channel (over S) to ``bits`` (8, 4 or 2), symmetric.

    Returns ``{"q": int8 [..., S, D] | uint8 packed [ceil(N*bits/8)], "scale": fp32 [..., 1, D],
    "shape": int64 [ndim], "bits": int64 [1]}``. See the module docstring for the error bound.
    """
    if bits not in _QMAX:
        raise ValueError(f"bits must be 8, 4 or 2, got {bits}")
    if not t.is_floating_point():
        raise ValueError(f"quantize expects a floating-point tensor, got {t.dtype}")
    x = t.detach().to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("cannot quantise a tensor with inf/nan values; check the model's K/V")
    qmax = _QMAX[bits]
    x3, _ = _as_2d(x)  # [R, S, D]
    amax = x3.abs().amax(dim=1, keepdim=True)  # [R, 1, D]
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))  # [R, 1, D]
    q = torch.round(x3 / scale).clamp_(-qmax, qmax).to(torch.int8)  # [R, S, D]
    shape = torch.tensor(list(t.shape), dtype=torch.int64)
    scale_shape = list(t.shape[:-2]) + [1, t.shape[-1]] if t.dim() >= 2 else [1]
    out = {"scale": scale.reshape(scale_shape).contiguous(), "shape": shape,
           "bits": torch.tensor([bits], dtype=torch.int64)}
    if bits == 8:
        out["q"] = q.reshape(t.shape).contiguous()
    else:
        out["q"] = _pack(q.reshape(-1), bits)
    return out


def _pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed values in [-qmax, qmax] -> uint8, 8 // bits values per byte (offset by qmax + 1)."""
    per = 8 // bits
    flat = (q.to(torch.int16) + _QMAX[bits] + 1).to(torch.uint8)  # [N], all >= 1
    pad = (-flat.numel()) % per
    if pad:
        flat = torch.cat([flat, flat.new_full((pad,), _QMAX[bits] + 1)])
    flat = flat.reshape(-1, per)
    out = flat[:, 0].clone()
    for j in range(1, per):
        out |= flat[:, j] << (bits * j)
    return out.contiguous()


def _unpack(q: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    per, mask = 8 // bits, (1 << bits) - 1
    parts = [((q >> (bits * j)) & mask).to(torch.int16) for j in range(per)]
    return (torch.stack(parts, dim=-1).reshape(-1)[:n] - (_QMAX[bits] + 1)).to(torch.float32)


def dequantize(d: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`quantize`: a tensor of the original shape in ``dtype`` (on ``d["q"]``'s device)."""
    try:
        q, scale, shape, bits = d["q"], d["scale"], d["shape"], int(d["bits"].reshape(-1)[0])
    except KeyError as e:
        raise ValueError(f"not a quantised tensor dict: missing {e}") from None
    shape_l = [int(s) for s in shape.tolist()]
    n = 1
    for s in shape_l:
        n *= s
    if bits == 8:
        qi = q.to(torch.float32)
    elif bits in (4, 2):
        qi = _unpack(q, bits, n)
    else:
        raise ValueError(f"unsupported bits {bits} in quantised tensor dict")
    if len(shape_l) >= 2:
        x3 = qi.reshape(-1, shape_l[-2], shape_l[-1]) * scale.to(torch.float32).reshape(-1, 1, shape_l[-1])
    else:
        x3 = qi.reshape(-1) * scale.to(torch.float32).reshape(-1)
    return x3.reshape(shape_l).to(dtype)


def error_bound(d: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-element bound on the absolute error of ``dequantize(d, float32)``, broadcastable to the tensor."""
    qmax = _QMAX[int(d["bits"].reshape(-1)[0])]
    return d["scale"].to(torch.float32) * (0.5 + qmax * 2.0 ** -20)


def nbytes(d: dict[str, torch.Tensor]) -> int:
    """Bytes held by a quantised tensor dict."""
    return sum(v.numel() * v.element_size() for v in d.values())
