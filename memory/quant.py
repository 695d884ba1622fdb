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

The ~1.5-bit cold tier ("k2v1.58", VidKV-like) uses two more codes (``bits`` = 21 and 158):

- keys, code 21 (:func:`quantize_keys_2_1`): asymmetric per channel over the entry's S tokens, each
  (head, d) channel with its own ``lo`` (fp16, rounded down) and ``step`` (fp16, rounded up); a value
  becomes ``floor((t - lo) / step)`` clamped to its channel's levels and comes back as the middle of its
  bin, ``lo + (code + 1/2) * step``. In every head the half of the channels with the smallest range
  ``r = max - min`` over the entry get 1 bit (2 levels, ``step = r / 2``), the others 2 bits (4 levels,
  ``step = r / 4``); a bit mask says which. Why the smallest ranges: a channel's worst error is half its
  step, so moving a channel from 2 bits to 1 adds ``r / 8`` to it; the channels of smallest range add the
  least to the attention logits ``q . k`` (``vstream bench tokens`` measures the alternatives).
  Keys: 1.5 bits per element plus 1 mask bit and 4 bytes (lo, step) per channel per entry.
- values, code 158 (:func:`quantize_ternary5`): symmetric ternary per channel (``scale = max|t|``, fp16
  rounded up; ``q = round(t / scale)`` in {-1, 0, 1}), five values packed per byte (3**5 = 243 <= 256):
  1.6 bits per element plus 2 bytes per channel per entry.

Error bound of these two (stated and tested): ``|dequantize(d, float32) - t| <= error_bound(d)`` with
``error_bound = step * (1/2 + 2**-18) + 2**-20 * |lo|`` (keys) and ``scale * (1/2 + 2**-20)`` (values);
in terms of the original channel (fp16 rounding of lo/step/scale included): keys ``<= r / 8`` for 2-bit
channels and ``<= r / 4`` for 1-bit channels, values ``<= max|t| / 2``, each times ``(1 + 2**-9)`` plus
``2**-9 * |min|`` (keys) -- see :func:`channel_bound`. A constant channel comes back within ``2**-24``.

The result is a plain ``dict[str, Tensor]`` (safetensors can store it as it is).
"""
from __future__ import annotations

import torch

_QMAX = {8: 127, 4: 7, 2: 1}
KEYS_2_1 = 21  # ``bits`` code: keys at 2 bits per channel, the least-ranged half of each head's channels at 1 bit
TERNARY5 = 158  # ``bits`` code: ternary values packed five per byte (1.6 bits per value)
ONE_BIT_FRACTION = 0.5  # share of each head's key channels stored at 1 bit by KEYS_2_1


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
    if bits == KEYS_2_1:
        return quantize_keys_2_1(t)
    if bits == TERNARY5:
        return quantize_ternary5(t)
    if bits not in _QMAX:
        raise ValueError(f"bits must be 8, 4, 2, {KEYS_2_1} or {TERNARY5}, got {bits}")
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
    """Signed values in [-qmax, qmax] -> uint8, 8 // bits values per byte (offset by qmax + 1; a padded
    tail holds the code of 0)."""
    offset = _QMAX[bits] + 1
    return _pack_unsigned(q.to(torch.int16) + offset, bits, pad_code=offset)  # codes all >= 1


def _unpack(q: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of ``_pack``: the first ``n`` signed values, fp32."""
    return (_unpack_unsigned(q, bits, n).to(torch.int16) - (_QMAX[bits] + 1)).to(torch.float32)


def dequantize(d: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`quantize`: a tensor of the original shape in ``dtype`` (on ``d["q"]``'s device)."""
    code = int(d["bits"].reshape(-1)[0]) if "bits" in d else None
    if code == KEYS_2_1:
        return _dequantize_keys_2_1(d, dtype)
    if code == TERNARY5:
        return _dequantize_ternary5(d, dtype)
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
    code = int(d["bits"].reshape(-1)[0])
    if code == KEYS_2_1:
        lo, step = d["lo"].to(torch.float32), d["step"].to(torch.float32)
        return _scale_shape(d, step * (0.5 + 2.0 ** -18) + 2.0 ** -20 * lo.abs())
    if code == TERNARY5:
        return d["scale"].to(torch.float32) * (0.5 + 2.0 ** -20)
    qmax = _QMAX[code]
    return d["scale"].to(torch.float32) * (0.5 + qmax * 2.0 ** -20)


def nbytes(d: dict[str, torch.Tensor]) -> int:
    """Bytes held by a quantised tensor dict."""
    return sum(v.numel() * v.element_size() for v in d.values())


# ---- the ~1.5-bit tier: mixed 2/1-bit keys, ternary values packed five per byte -------------------------

def _rounded(x: torch.Tensor, down: bool) -> torch.Tensor:
    """``x`` fp32 rounded to fp16 towards -inf (down) or +inf; fp32 unchanged when fp16 cannot hold it."""
    h = x.to(torch.float16)
    if not bool(torch.isfinite(h).all()):
        return x.clone()
    toward = torch.full_like(h, float("-inf") if down else float("inf"))
    wrong = h.to(torch.float32) > x if down else h.to(torch.float32) < x
    return torch.where(wrong, torch.nextafter(h, toward), h)


def _pack_unsigned(codes: torch.Tensor, bits: int, pad_code: int = 0) -> torch.Tensor:
    """Codes in [0, 2**bits) -> uint8, 8 // bits per byte (first code in the low bits; a last byte that is
    not full is padded with ``pad_code``)."""
    per = 8 // bits
    flat = codes.reshape(-1).to(torch.uint8)
    if pad := (-flat.numel()) % per:
        flat = torch.cat([flat, flat.new_full((pad,), pad_code)])
    flat = flat.reshape(-1, per)
    out = flat[:, 0].clone()
    for j in range(1, per):
        out |= flat[:, j] << (bits * j)
    return out.contiguous()


def _unpack_unsigned(q: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of ``_pack_unsigned``: the first ``n`` codes (uint8)."""
    mask = (1 << bits) - 1
    parts = [(q >> (bits * j)) & mask for j in range(8 // bits)]
    return torch.stack(parts, dim=-1).reshape(-1)[:n]


def _scale_shape(d: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """[R, D] per-channel values -> the broadcastable shape [..., 1, D] of the original tensor."""
    shape = [int(v) for v in d["shape"].tolist()]
    return x.reshape(shape[:-2] + [1, shape[-1]] if len(shape) >= 2 else [1])


def one_bit_channels(t: torch.Tensor, fraction: float = ONE_BIT_FRACTION, choose: str = "smallest") -> torch.Tensor:
    """[R, D] bool: the key channels stored at 1 bit (per row = per head: ``round(fraction * D)`` of them).

    choose: "smallest" range (what the cold tier uses), or "largest" / "random" (for the benchmark that
    shows the choice).
    """
    x3, _ = _as_2d(t.detach().to(torch.float32))  # [R, S, D]
    rng = x3.amax(dim=1) - x3.amin(dim=1)  # [R, D]
    k = int(round(fraction * rng.shape[1]))
    if choose == "smallest":
        order = torch.argsort(rng, dim=1, stable=True)
    elif choose == "largest":
        order = torch.argsort(-rng, dim=1, stable=True)
    elif choose == "random":
        order = torch.argsort(torch.rand(rng.shape, generator=torch.Generator().manual_seed(0)), dim=1)
    else:
        raise ValueError(f"choose must be smallest, largest or random, got {choose!r}")
    out = torch.zeros_like(rng, dtype=torch.bool)
    out.scatter_(1, order[:, :k].to(rng.device), True)
    return out


def quantize_keys_2_1(t: torch.Tensor, one_bit: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Keys [..., S, D] -> 2-bit per channel, 1 bit for ``one_bit`` [R, D] (default :func:`one_bit_channels`).

    Returns ``{"q2": uint8 (2-bit codes, channel-major), "q1": uint8 (1-bit codes), "mask": uint8 (1 bit per
    channel), "lo": fp16 [R, D], "step": fp16 [R, D], "shape", "bits": [21]}``.
    """
    x = _checked(t)
    x3, _ = _as_2d(x)  # [R, S, D]
    one = one_bit_channels(x) if one_bit is None else one_bit.to(device=x3.device, dtype=torch.bool)
    if one.shape != (x3.shape[0], x3.shape[2]):
        raise ValueError(f"one_bit must be [{x3.shape[0]}, {x3.shape[2]}], got {tuple(one.shape)}")
    levels = torch.where(one, 2.0, 4.0)  # [R, D]
    lo = _rounded(x3.amin(dim=1), down=True)  # [R, D]
    hi = x3.amax(dim=1)
    step = _rounded((hi - lo.to(torch.float32)) / levels * (1 + 2.0 ** -20), down=False)
    step = torch.clamp(step, min=2.0 ** -24)
    code = torch.floor((x3 - lo.float().unsqueeze(1)) / step.float().unsqueeze(1))  # [R, S, D]
    code = torch.minimum(code.clamp_(min=0), (levels - 1).unsqueeze(1)).to(torch.uint8)
    code_t = code.transpose(1, 2)  # [R, D, S]
    return {"q2": _pack_unsigned(code_t[~one], 2), "q1": _pack_unsigned(code_t[one], 1),
            "mask": _pack_unsigned(one.reshape(-1), 1), "lo": lo.contiguous(), "step": step.contiguous(),
            "shape": torch.tensor(list(t.shape), dtype=torch.int64),
            "bits": torch.tensor([KEYS_2_1], dtype=torch.int64)}


def _dequantize_keys_2_1(d: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    shape = [int(v) for v in d["shape"].tolist()]
    lo, step = d["lo"].to(torch.float32), d["step"].to(torch.float32)  # [R, D]
    r, dim = lo.shape
    s = shape[-2] if len(shape) >= 2 else shape[0]
    one = _unpack_unsigned(d["mask"], 1, r * dim).reshape(r, dim).bool()
    code_t = torch.empty(r, dim, s, dtype=torch.float32, device=lo.device)  # [R, D, S]
    n1 = int(one.sum().item())
    code_t[~one] = _unpack_unsigned(d["q2"], 2, (r * dim - n1) * s).reshape(-1, s).to(torch.float32)
    code_t[one] = _unpack_unsigned(d["q1"], 1, n1 * s).reshape(-1, s).to(torch.float32)
    x3 = lo.unsqueeze(1) + (code_t.transpose(1, 2) + 0.5) * step.unsqueeze(1)  # [R, S, D]
    return x3.reshape(shape).to(dtype)


def quantize_ternary5(t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Values [..., S, D] -> ternary per channel, five per byte: ``{"q": uint8, "scale": fp16 [..., 1, D], ...}``."""
    x = _checked(t)
    x3, _ = _as_2d(x)  # [R, S, D]
    amax = x3.abs().amax(dim=1, keepdim=True)  # [R, 1, D]
    scale = _rounded(amax, down=False)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    c = (torch.round(x3 / scale.float()).clamp_(-1, 1) + 1).to(torch.uint8).reshape(-1)  # [N] in {0, 1, 2}
    if pad := (-c.numel()) % 5:
        c = torch.cat([c, c.new_ones(pad)])
    c = c.reshape(-1, 5).to(torch.int32)
    packed = (c * torch.tensor([1, 3, 9, 27, 81], dtype=torch.int32, device=c.device)).sum(dim=1)
    scale_shape = list(t.shape[:-2]) + [1, t.shape[-1]] if t.dim() >= 2 else [1]
    return {"q": packed.to(torch.uint8).contiguous(), "scale": scale.reshape(scale_shape).contiguous(),
            "shape": torch.tensor(list(t.shape), dtype=torch.int64),
            "bits": torch.tensor([TERNARY5], dtype=torch.int64)}


def _dequantize_ternary5(d: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    shape = [int(v) for v in d["shape"].tolist()]
    n = 1
    for v in shape:
        n *= v
    b = d["q"].to(torch.int32)
    digits = torch.stack([(b // p) % 3 for p in (1, 3, 9, 27, 81)], dim=-1).reshape(-1)[:n]  # [N]
    x = (digits.to(torch.float32) - 1.0)
    if len(shape) >= 2:
        x3 = x.reshape(-1, shape[-2], shape[-1]) * d["scale"].to(torch.float32).reshape(-1, 1, shape[-1])
    else:
        x3 = x * d["scale"].to(torch.float32).reshape(-1)
    return x3.reshape(shape).to(dtype)


def channel_bound(t: torch.Tensor, d: dict[str, torch.Tensor]) -> torch.Tensor:
    """The stated bound from the original channel statistics alone, broadcastable to ``t`` (see module doc)."""
    x3, _ = _as_2d(t.detach().to(torch.float32))  # [R, S, D]
    code = int(d["bits"].reshape(-1)[0])
    if code == KEYS_2_1:
        lo, hi = x3.amin(dim=1), x3.amax(dim=1)  # [R, D]
        one = _unpack_unsigned(d["mask"], 1, lo.numel()).reshape(lo.shape).bool()
        b = (hi - lo) / torch.where(one, 4.0, 8.0) * (1 + 2.0 ** -9) + 2.0 ** -9 * lo.abs() + 2.0 ** -24
        return _scale_shape(d, b)
    if code == TERNARY5:
        return x3.abs().amax(dim=1, keepdim=True).reshape(d["scale"].shape) * 0.5 * (1 + 2.0 ** -9)
    raise ValueError(f"channel_bound covers codes {KEYS_2_1} and {TERNARY5}, got {code}")


def _checked(t: torch.Tensor) -> torch.Tensor:
    if not t.is_floating_point():
        raise ValueError(f"quantize expects a floating-point tensor, got {t.dtype}")
    x = t.detach().to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("cannot quantise a tensor with inf/nan values; check the model's K/V")
    if x.dim() < 2:
        raise ValueError(f"the 1.5-bit codes quantise [..., S, D] tensors, got shape {tuple(t.shape)}")
    return x
