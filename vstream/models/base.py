"""The model-adapter protocol: what the engine needs from a vision-language model family.

An adapter turns text and video chunks into LLM inputs (embeddings + position ids relative to the
segment start), runs the language model against a KV cache at explicit positions, and knows how to
re-rotate cached keys when the context is re-indexed (contiguous RoPE, DESIGN §1.5).

Conventions
- Positions are explicit everywhere. A segment's ``rel_pos`` is ``[P, S]`` (P = 3 for M-RoPE, 1 for
  1-D RoPE) counted from the segment's first position; the engine adds the segment's start.
- Keys in a ``DynamicCache`` are post-RoPE. Shifting a segment by ``delta`` positions is one rotation
  by ``delta`` on every frequency (RoPE is a rotation, R(p+d) = R(d)R(p); for M-RoPE the t, h and w ids
  all move by the same delta, so one 1-D rotation works on every section).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache

from vstream.models.ahead import PreprocessAhead

logger = logging.getLogger(__name__)


@dataclass
class Tokens:
    """LLM inputs for one segment (a text span or a video chunk)."""

    input_ids: torch.Tensor  # [1, S] int64; vision placeholders included
    inputs_embeds: torch.Tensor  # [1, S, D] model dtype, on the model's device
    rel_pos: torch.Tensor  # [P, S] int64, relative to the segment's first position
    n_vision: int = 0  # vision tokens among the S
    n_dropped: int = 0  # vision tokens removed by token drop (``select``)
    #: Extra keyword inputs of the language model for exactly these S tokens, passed to every forward that
    #: prefills them (Qwen3-VL: ``visual_pos_masks`` [1, S] bool and ``deepstack_visual_embeds``, a list of
    #: [n_vision, D] per injected layer). Empty for text and for families without such inputs.
    lm_inputs: dict = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def span(self) -> int:
        """Positions the segment occupies (for M-RoPE this can differ from the token count)."""
        if self.rel_pos.numel() == 0:
            return 0
        return int(self.rel_pos.max().item()) + 1

    def select(self, keep: torch.Tensor) -> "Tokens":
        """The tokens where ``keep`` [S] bool is True, at their original positions (token drop).

        The span must not change (the last position is never a dropped token), so whatever follows
        the segment is placed exactly where it would be without dropping.
        """
        if keep.shape != (self.n_tokens,) or keep.dtype != torch.bool:
            raise ValueError(f"keep must be a bool tensor [{self.n_tokens}], got {keep.dtype} {tuple(keep.shape)}")
        if self.lm_inputs:
            raise ValueError("token drop cannot select tokens that carry extra language-model inputs (Qwen3-VL's "
                             "deepstack features); leave memory.token_drop unset for this family")
        keep = keep.to(self.input_ids.device)
        out = Tokens(input_ids=self.input_ids[:, keep], inputs_embeds=self.inputs_embeds[:, keep],
                     rel_pos=self.rel_pos[:, keep], n_vision=self.n_vision - int((~keep).sum().item()),
                     n_dropped=self.n_dropped + int((~keep).sum().item()))
        if out.span != self.span:
            raise RuntimeError(f"token drop changed the chunk's span from {self.span} to {out.span}; "
                               f"the token at the last position must be kept")
        return out


#: A piece of a reference sequence: plain text, or (time marker, frames [N, H, W, 3] uint8).
RefPiece = "str | tuple[str, np.ndarray]"


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_delta_rotate(keys: torch.Tensor, delta: int | torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate post-RoPE keys by ``delta`` positions (rotate_half convention).

    keys: [B, H, S, D]; delta: int or [S] int tensor (per-token delta); inv_freq: [D/2].
    Computed in fp32, returned in the keys' dtype.
    """
    if isinstance(delta, int) and delta == 0:
        return keys
    d = torch.as_tensor(delta, device=keys.device, dtype=torch.float32)
    freqs = d.reshape(-1, 1) * inv_freq.to(device=keys.device, dtype=torch.float32).reshape(1, -1)  # [S|1, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [S|1, D]
    cos, sin = emb.cos(), emb.sin()
    k = keys.float()
    return (k * cos + rotate_half(k) * sin).to(keys.dtype)


class StopForward(Exception):
    """Raised from a projection hook to end a forward pass early (capture_projection_means(stop_after=...))."""


class ModelAdapter(PreprocessAhead, ABC):
    """One VLM family behind one protocol. Subclasses fill in the abstract methods."""

    family: ClassVar[str] = ""
    #: P in ``rel_pos`` [P, S]: 3 for M-RoPE (Qwen2.5-VL), 1 for 1-D RoPE.
    pos_dims: ClassVar[int] = 1

    def __init__(self, model: nn.Module, tokenizer: Any, *, name: str, frame_size: int | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.frame_size = frame_size  # target side for frames (family-specific meaning), None = family default
        text_cfg = model.config.get_text_config(decoder=True)
        self.text_config = text_cfg
        self.num_layers: int = text_cfg.num_hidden_layers
        self.num_heads: int = text_cfg.num_attention_heads
        self.num_kv_heads: int = getattr(text_cfg, "num_key_value_heads", None) or self.num_heads
        self.head_dim: int = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // self.num_heads
        self.hidden_size: int = text_cfg.hidden_size
        self._check_rope()

    # ---- properties -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embeddings' execution device (accelerate placement) or the weights'."""
        hook = getattr(self.language_model().embed_tokens, "_hf_hook", None)
        dev = getattr(hook, "execution_device", None)
        if dev is not None:
            return torch.device(dev) if not isinstance(dev, int) else torch.device("cuda", dev)
        return next(self.model.parameters()).device

    def layer_devices(self) -> list[torch.device]:
        """Device each decoder layer runs on (its cache layer lives there); one device unless placed by accelerate.

        Code that moves K/V into a cache (retrieved long-term entries) should put layer i on ``layer_devices()[i]``.
        """
        out = []
        for layer in self.decoder_layers():
            dev = getattr(getattr(layer, "_hf_hook", None), "execution_device", None)
            if dev is None:
                dev = next(layer.parameters()).device
            out.append(torch.device("cuda", dev) if isinstance(dev, int) else torch.device(dev))
        return out

    @property
    def placed(self) -> bool:
        """True when accelerate spread the model over several devices or offloaded part of it."""
        return bool(getattr(self.model, "hf_device_map", None)) and len(set(self.model.hf_device_map.values())) > 1

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def eos_token_ids(self) -> list[int]:
        """Token ids that end an answer."""
        ids = {self.tokenizer.eos_token_id}
        for t in self.stop_tokens():
            tid = self.tokenizer.convert_tokens_to_ids(t)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                ids.add(tid)
        return sorted(i for i in ids if i is not None)

    def kv_bytes_per_token(self, dtype: torch.dtype | None = None) -> int:
        """Bytes of K+V for one token over all layers."""
        elt = torch.finfo(dtype or self.dtype).bits // 8
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * elt

    # ---- family hooks -------------------------------------------------------------------------
    def language_model(self) -> nn.Module:
        """The decoder stack (takes inputs_embeds, position_ids, cache)."""
        return self.model.model.language_model

    def lm_head(self) -> nn.Module:
        """Hidden states -> vocabulary logits."""
        return self.model.lm_head

    @abstractmethod
    def embed_chunk(self, marker: str, frames: np.ndarray) -> Tokens:
        """Turn a chunk (time marker text + frames [N, H, W, 3] uint8 RGB) into LLM inputs.

        Preprocessing (resize, normalise, patchify): ``preprocessed(frames)``, i.e. the result of an earlier
        ``prepare_ahead`` of the same array when there is one, else ``preprocess`` now.
        """

    @abstractmethod
    def reference_logits(self, pieces: Sequence[Any]) -> torch.Tensor:
        """Slow reference for tests: the HF model's own forward over the whole sequence, no cache.

        pieces: text strings and (marker, frames) chunks, in order, exactly as the engine would feed
        them. Returns the last position's logits [V] (fp32).
        """

    def supports_token_drop(self) -> bool:
        """Whether ``visual_cells`` gives this family's frame grid and its chunks can be prefilled in part."""
        return type(self).visual_cells is not ModelAdapter.visual_cells

    def visual_cells(self, tokens: Tokens) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Frame-grid layout of a chunk's tokens, for token drop.

        Returns (frame [S], cell [S], n_cells): the frame index within the chunk and the grid cell
        (0..n_cells-1) of every visual token that sits on a frame's grid, -1 for all other tokens.
        """
        raise ValueError(f"token drop is not supported for the {self.family or type(self).__name__} family; "
                         f"turn memory.token_drop off")

    def configure_sampling(self, fps: float) -> None:
        """Tell the adapter the stream's sampling rate (families with temporal positions use it)."""

    def frames_per_chunk(self, fps: float, chunk_seconds: float) -> int | None:
        """Frames every chunk should have (the chunker pads or subsamples), or None to keep what comes."""
        return None

    def stop_tokens(self) -> list[str]:
        """Special tokens that end an answer besides eos (defaults: Qwen's chat format)."""
        return ["<|im_end|>", "<|endoftext|>"]

    def system_text(self, system_prompt: str) -> str:
        """The sink text: chat header with the system prompt and the start of the stream turn."""
        return f"<|im_start|>system\n{system_prompt}<|im_end|>\n<|im_start|>user\n"

    def question_text(self, question: str) -> str:
        """Text that closes the stream, asks the question and opens the assistant's turn."""
        return f"<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"

    def commentary_open_text(self) -> str:
        """Text that ends the stream part of the turn and opens live commentary after a chunk."""
        return "<|im_end|>\n<|im_start|>assistant\n"

    def answer_close_text(self) -> str:
        """Text appended after an answer when it is kept in the text window."""
        return "<|im_end|>\n<|im_start|>user\n"

    # ---- shared machinery ---------------------------------------------------------------------
    def _check_rope(self) -> None:
        rot = self.rotary()
        scaling = float(getattr(rot, "attention_scaling", 1.0))
        if abs(scaling - 1.0) > 1e-6:
            raise ValueError(f"{self.family}: RoPE attention_scaling={scaling} is not supported by delta rotation")

    def rotary(self) -> nn.Module:
        return self.language_model().rotary_emb

    def inv_freq(self) -> torch.Tensor:
        """[head_dim / 2] RoPE inverse frequencies of the language model."""
        return self.rotary().inv_freq

    def decoder_layers(self) -> Sequence[nn.Module]:
        return self.language_model().layers

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def embed_ids(self, ids: Sequence[int] | torch.Tensor) -> Tokens:
        """Text token ids -> Tokens with positions 0..S-1 on every rope dim."""
        t = torch.as_tensor(ids, dtype=torch.long, device=self.device).reshape(1, -1)  # [1, S]
        emb = self.language_model().embed_tokens(t)  # [1, S, D]
        return Tokens(input_ids=t, inputs_embeds=emb, rel_pos=self.text_positions(t.shape[1]))

    def text_positions(self, n: int) -> torch.Tensor:
        """[P, n] positions 0..n-1 on every rope dim (text occupies one position per token)."""
        return torch.arange(n, device=self.device).unsqueeze(0).expand(self.pos_dims, -1).contiguous()

    def embed_text(self, text: str) -> Tokens:
        return self.embed_ids(self.tokenize(text))

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config)

    def position_ids(self, rel_pos: torch.Tensor, start: int) -> torch.Tensor:
        """Absolute position ids in the layout the language model takes: [P, 1, S] or [1, S]."""
        pos = rel_pos + start  # [P, S]
        return pos.unsqueeze(1) if self.pos_dims > 1 else pos  # [3, 1, S] or [1, S]

    @torch.inference_mode()
    def forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, cache: DynamicCache,
                logits: str = "last", **lm_inputs: Any) -> torch.Tensor | None:
        """Run the LM over inputs_embeds [1, S, D] at position_ids, appending to cache.

        logits: "last" -> [1, V] fp32, "all" -> [1, S, V] fp32, "none" -> None. ``lm_inputs`` are the
        segment's extra language-model inputs (``Tokens.lm_inputs``; DeepStack features for Qwen3-VL).
        """
        out = self.language_model()(inputs_embeds=inputs_embeds, position_ids=position_ids,
                                    cache=cache, use_cache=True, **lm_inputs)
        h = out.last_hidden_state  # [1, S, D]
        if logits == "none":
            return None
        if logits == "last":
            h = h[:, -1]
        return self.lm_head()(h).float()  # with accelerate placement, the head's hook moves h to its device

    def rotate_keys(self, keys: torch.Tensor, delta: int) -> torch.Tensor:
        """Move keys [B, H, S, D] computed at positions p to positions p + delta."""
        return rope_delta_rotate(keys, delta, self.inv_freq())

    @contextlib.contextmanager
    def capture_projection_means(self, which: str = "k", stop_after: int | None = None) -> Iterator[list]:
        """Record, per layer, the mean over tokens of the pre-RoPE q or k projection.

        Yields a list filled on exit with one tensor per layer: [H_kv * head_dim] fp32 (query heads are
        averaged within their key-value group so queries and keys live in the same space). Only forward
        passes of the calling thread are recorded: the model is shared between perception and answering.
        ``stop_after=m`` raises StopForward once layer m-1 is recorded (layers >= m stay None); the
        caller catches it: a cheap partial pass when only the first layers are wanted.
        """
        if which not in ("q", "k"):
            raise ValueError("which must be 'q' or 'k'")
        self._install_projection_hooks()
        acc: list[torch.Tensor | None] = [None] * self.num_layers
        captures = self._captures.__dict__.setdefault("active", {})
        captures[which] = acc
        captures[f"{which}_stop"] = stop_after
        result: list = []
        try:
            yield result
        finally:
            captures.pop(which, None)
            captures.pop(f"{which}_stop", None)
            result.extend(acc)

    @contextlib.contextmanager
    def capture_projection_rows(self, which: str, rows: torch.Tensor) -> Iterator[list]:
        """Batched ``capture_projection_means``: per layer a [B, H_kv * head_dim] fp32 mean over the tokens
        where ``rows`` [B, S] is True (padding excluded), one row per sequence of the batch."""
        if rows.dim() != 2 or rows.dtype != torch.bool:
            raise ValueError(f"rows must be a [B, S] bool mask, got {tuple(rows.shape)} {rows.dtype}")
        with self.capture_projection_means(which) as acc:
            self._captures.active[f"{which}_rows"] = rows
            try:
                yield acc
            finally:
                self._captures.active.pop(f"{which}_rows", None)

    def batch_lm_inputs(self, tokens: Sequence[Tokens], rows: torch.Tensor) -> dict:
        """The segments' ``lm_inputs`` merged for a right-padded batch (rows [B, S] True = real token).

        Default: none (families without per-token LM inputs). Qwen3-VL merges its DeepStack features.
        """
        return {}

    def chunk_marker(self, chunk: Any) -> str:
        """The marker text this family is fed for ``chunk`` (a ``vstream.sources.Chunk``): its own marker, in
        clock form (``Time=14:05:03-14:05:04``) when the session asks for clock markers."""
        return chunk.marker

    def embed_chunks(self, chunks: Sequence[tuple[str, np.ndarray]]) -> list[Tokens]:
        """Several chunks (marker, frames [N, H, W, 3]) at once; families batch the vision encoder here.

        Each result equals ``embed_chunk(marker, frames)``. The default encodes them one by one.
        """
        return [self.embed_chunk(marker, frames) for marker, frames in chunks]

    @torch.inference_mode()
    def forward_batch(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, cache: DynamicCache,
                      attention_mask: torch.Tensor, **lm_inputs: Any) -> None:
        """Run the LM over a padded batch, appending to ``cache`` (no logits).

        inputs_embeds [B, S, D]; position_ids [B, S] (1-D RoPE) or [P, B, S]; attention_mask [B, 1, S, N + S]
        bool (True = attend), N the cache length. Rows are independent sequences.
        """
        impl = getattr(self.language_model().config, "_attn_implementation", "sdpa")
        mask = attention_mask
        if impl == "eager":  # eager attention adds the mask to the scores
            mask = torch.zeros(attention_mask.shape, dtype=inputs_embeds.dtype, device=attention_mask.device)
            mask.masked_fill_(~attention_mask, torch.finfo(inputs_embeds.dtype).min)
        self.language_model()(inputs_embeds=inputs_embeds, position_ids=position_ids, attention_mask=mask,
                              cache=cache, use_cache=True, **lm_inputs)

    def _install_projection_hooks(self) -> None:
        """Permanent forward hooks on every layer's q_proj / k_proj (installed once, before any thread
        starts using the model, so hook dictionaries are never changed while another thread runs)."""
        if getattr(self, "_hooks_installed", False):
            return
        self._captures = threading.local()
        group = self.num_heads // self.num_kv_heads

        def make_hook(i: int, which: str):
            def hook(_mod, _inp, out):  # out: [B, S, H * D]
                active = getattr(self._captures, "active", {})
                acc = active.get(which)
                if acc is None:
                    return
                rows = active.get(f"{which}_rows")  # [B, S] bool: batched capture (one mean per row)
                if rows is None:
                    m = out[0].float().mean(dim=0)  # [H * D]
                else:
                    w = rows.to(out.device, torch.float32).unsqueeze(-1)  # [B, S, 1]
                    m = (out.float() * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)  # [B, H * D]
                if which == "q" and group > 1:
                    m = m.view(*m.shape[:-1], self.num_kv_heads, group, self.head_dim).mean(dim=-2).flatten(-2)
                acc[i] = m.detach()
                if active.get(f"{which}_stop") == i + 1:
                    raise StopForward
            return hook

        for i, layer in enumerate(self.decoder_layers()):
            layer.self_attn.q_proj.register_forward_hook(make_hook(i, "q"))
            layer.self_attn.k_proj.register_forward_hook(make_hook(i, "k"))
        self._hooks_installed = True


# ---- helpers shared by the adapters -------------------------------------------------------------
def placement_kwargs(device_map: Any = None, max_memory: dict | None = None,
                     offload_folder: str | None = None) -> dict:
    """``from_pretrained`` keyword arguments for accelerate's placement; {} = load on one device."""
    if device_map is None:
        return {}
    out: dict[str, Any] = {"device_map": device_map}
    if max_memory is not None:
        out["max_memory"] = max_memory
    if offload_folder is not None:
        out["offload_folder"] = str(offload_folder)
    return out


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type name."""
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else type(e).__name__


def read_checkpoint_json(name_or_path: str, filename: str) -> dict | None:
    """A JSON file of a local checkpoint directory or hub repo; None when the checkpoint has no such file.

    Raises ValueError when the file exists but cannot be read or parsed (the user must fix it).
    """
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, filename)
        if not os.path.isfile(path):
            return None
    else:
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(name_or_path, filename)
        except Exception as e:  # absent file, no network, offline mode: treated as absent
            logger.debug("no %s for %s (%s)", filename, name_or_path, one_line(e))
            return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {one_line(e)}; fix or remove the file") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds {type(data).__name__}, not a JSON object; fix or remove the file")
    return data


def read_preprocessor_config(name_or_path: str, filename: str = "preprocessor_config.json") -> dict:
    """The checkpoint's (pre)processor config as a dict; {} (family defaults, with a warning) when absent."""
    data = read_checkpoint_json(name_or_path, filename)
    if data is None:
        logger.warning("no %s for %s; using the family's default preprocessing", filename, name_or_path)
        return {}
    return data


def default_side(pp: dict, fallback: int, *, factor: int = 1, cap: int | None = None) -> int:
    """Default frame side from a preprocessor config, rounded down to a multiple of ``factor``.

    A side budget (``max_image_size``: SmolVLM) is used as is; a pixel budget (``max_pixels`` or
    ``size.longest_edge`` with ``size.shortest_edge``: Qwen) becomes the side of the square with that
    area. The result is capped at ``cap`` (when given); ``fallback`` when the config names no budget.
    """
    side: int | None = None
    mx = pp.get("max_image_size")
    if isinstance(mx, dict) and isinstance(mx.get("longest_edge"), int):
        side = int(mx["longest_edge"])
    elif isinstance(mx, int):
        side = mx
    else:
        size = pp.get("size") if isinstance(pp.get("size"), dict) else {}
        area = pp.get("max_pixels") or size.get("max_pixels") or (
            size.get("longest_edge") if "shortest_edge" in size else None)
        if area:
            side = int(math.isqrt(int(area)))
    if side is None:
        side = fallback
    if cap is not None:
        side = min(side, cap)
    return max(factor, side // factor * factor)
