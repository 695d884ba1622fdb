"""SmolVLM / SmolVLM2 adapter (also Idefics3 checkpoints): SigLIP tower + pixel-shuffle connector + Llama LM.

A chunk is its time marker followed by every frame as one global image, the way SmolVLM2's video
prompt lays out frames (``"\\nFrame from 00:01:"`` + image tokens, never split into tiles)::

    "\\n" + marker + ":" + N x (<fake_token_around_image><global-img> + <image> * L + <fake_token_around_image>)

Frames are resized as SmolVLM's video processor does: longest edge to the checkpoint's
``video_sampling.video_size`` (aspect kept), then to a square of ``frame_size`` pixels (default: the
checkpoint's ``max_image_size``, i.e. the vision tower's image size: 512 for SmolVLM2-256M/500M, 384 for
2.2B), both with the checkpoint's filter (``resample`` 1 = LANCZOS), by Pillow itself on CPU (its exact
torch reproduction elsewhere), then normalised with the checkpoint's mean/std (0.5). Pixel values equal
HF's PIL processor's (tests/test_parity_processor.py). Deliberate prompt differences from HF's video prompt (no intro line,
one time marker per chunk instead of one timestamp per frame) are listed in tests/test_parity_prompt.py. The tower sees ``(frame_size // patch)^2`` patches and the connector's pixel
shuffle folds ``scale_factor^2`` of them into one LM token, so L = (frame_size // patch)^2 / scale_factor^2
(64 for 256M at 512, 81 for 2.2B at 384). The LM uses 1-D RoPE: a chunk's positions are 0..S-1.

Chat format (SmolVLM's template; the stream lives in the user turn and the question closes it)::

    <|im_start|>System: {system}<end_of_utterance>\\nUser:{chunks...}\\n\\n{question}<end_of_utterance>\\nAssistant:
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from vstream.models.base import (ModelAdapter, Tokens, default_side, one_line, placement_kwargs,
                                 read_preprocessor_config)
from vstream.models.resize import PIL_RESAMPLE, resize_frames
from vstream.models.tokenizer import build_offline_tokenizer

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
FAKE_TOKEN = "<fake_token_around_image>"
GLOBAL_TOKEN = "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"
#: Special tokens of the offline tokenizer, in SmolLM2's order where it has them.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", FAKE_TOKEN, GLOBAL_TOKEN, IMAGE_TOKEN,
                  END_OF_UTTERANCE]
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)
SUPPORTED_MODEL_TYPES = ("smolvlm", "idefics3")


@dataclass(frozen=True)
class _Size:
    """Text (Llama) and vision (SigLIP) shapes of one model size."""

    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    rope_theta: float
    max_positions: int
    vocab: int | None  # None: the offline tokenizer's size, rounded up
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    patch: int
    image: int
    scale_factor: int
    init_range: float = 0.02


#: Published configs of HuggingFaceTB/SmolVLM2-256M-Video-Instruct and SmolVLM2-2.2B-Instruct, plus a tiny one.
SIZES: dict[str, _Size] = {
    "tiny": _Size(text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=2, text_intermediate=128,
                  rope_theta=100_000.0, max_positions=8192, vocab=None, vision_hidden=32, vision_intermediate=64,
                  vision_layers=2, vision_heads=2, patch=4, image=32, scale_factor=2, init_range=0.1),
    "256m": _Size(text_hidden=576, text_layers=30, text_heads=9, text_kv_heads=3, text_intermediate=1536,
                  rope_theta=100_000.0, max_positions=8192, vocab=49280, vision_hidden=768, vision_intermediate=3072,
                  vision_layers=12, vision_heads=12, patch=16, image=512, scale_factor=4),
    "2.2b": _Size(text_hidden=2048, text_layers=24, text_heads=32, text_kv_heads=32, text_intermediate=8192,
                  rope_theta=273_768.0, max_positions=16384, vocab=49280, vision_hidden=1152, vision_intermediate=4304,
                  vision_layers=27, vision_heads=16, patch=14, image=384, scale_factor=3),
}


def _model_classes(model_type: str) -> tuple[type, type, type]:
    """(ForConditionalGeneration, Config, VisionConfig) classes for a model_type."""
    if model_type == "smolvlm":
        from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMVisionConfig

        return SmolVLMForConditionalGeneration, SmolVLMConfig, SmolVLMVisionConfig
    if model_type == "idefics3":
        from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3VisionConfig

        return Idefics3ForConditionalGeneration, Idefics3Config, Idefics3VisionConfig
    raise ValueError(f"model_type {model_type!r} is not a SmolVLM family type; use one of {SUPPORTED_MODEL_TYPES}")


def _token_id(tokenizer: Any, token: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(tid, int) or (tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id):
        raise ValueError(f"tokenizer has no {token!r} token; use the checkpoint's own SmolVLM tokenizer")
    return tid


class SmolVLMAdapter(ModelAdapter):
    """SmolVLM2 / SmolVLM / Idefics3 behind the vstream adapter protocol (1-D RoPE, Llama LM)."""

    family = "smolvlm"
    pos_dims = 1

    def __init__(self, model: nn.Module, tokenizer: Any, *, name: str, frame_size: int | None = None,
                 image_mean: Sequence[float] = DEFAULT_MEAN, image_std: Sequence[float] = DEFAULT_STD,
                 resample: str = "lanczos", video_longest_edge: int | None = None) -> None:
        super().__init__(model, tokenizer, name=name, frame_size=frame_size)
        cfg = model.config
        self.patch_size = int(cfg.vision_config.patch_size)
        self.scale_factor = int(cfg.scale_factor)
        side = int(frame_size if frame_size is not None else cfg.vision_config.image_size)
        per_side = side // self.patch_size
        if per_side < self.scale_factor or per_side % self.scale_factor:
            raise ValueError(f"frame_size {side} gives {per_side} patches of {self.patch_size}px per side, which must "
                             f"be a positive multiple of scale_factor {self.scale_factor}; use e.g. "
                             f"{self.patch_size * self.scale_factor * max(1, per_side // self.scale_factor)}")
        self.frame_size = side  # effective square side every frame is resized to
        self.resample = resample  # PIL filter of the checkpoint's processor ("resample": 1 = LANCZOS)
        # first resize: longest edge to the video size (aspect kept), as SmolVLM's video processor does
        self.video_longest_edge = int(video_longest_edge) if video_longest_edge else side
        self.image_seq_len = per_side * per_side // (self.scale_factor ** 2)  # LM tokens per frame
        if len(image_mean) != 3 or len(image_std) != 3 or min(abs(float(s)) for s in image_std) == 0:
            raise ValueError("image_mean and image_std must be 3 numbers each, std non-zero")
        self.image_mean = torch.tensor([float(m) for m in image_mean]).view(1, 3, 1, 1)
        self.image_std = torch.tensor([float(s) for s in image_std]).view(1, 3, 1, 1)
        self.image_token = getattr(tokenizer, "image_token", None) or IMAGE_TOKEN
        self.fake_token = getattr(tokenizer, "fake_image_token", None) or FAKE_TOKEN
        self.global_token = getattr(tokenizer, "global_image_token", None) or GLOBAL_TOKEN
        self.image_token_id = _token_id(tokenizer, self.image_token)
        self.fake_token_id = _token_id(tokenizer, self.fake_token)
        self.global_token_id = _token_id(tokenizer, self.global_token)
        if self.image_token_id != int(cfg.image_token_id):
            raise ValueError(f"tokenizer's {self.image_token} id {self.image_token_id} differs from the config's "
                             f"image_token_id {cfg.image_token_id}; load the tokenizer that ships with the checkpoint")

    # ---- family hooks -------------------------------------------------------------------------
    def language_model(self) -> nn.Module:
        return self.model.model.text_model

    def lm_head(self) -> nn.Module:
        return self.model.lm_head

    def stop_tokens(self) -> list[str]:
        return [END_OF_UTTERANCE]

    def system_text(self, system_prompt: str) -> str:
        return f"<|im_start|>System: {system_prompt}{END_OF_UTTERANCE}\nUser:"

    def question_text(self, question: str) -> str:
        return f"\n\n{question}{END_OF_UTTERANCE}\nAssistant:"

    def answer_close_text(self) -> str:
        return f"{END_OF_UTTERANCE}\nUser:"

    def commentary_open_text(self) -> str:
        return f"{END_OF_UTTERANCE}\nAssistant:"

    # ---- chunks -------------------------------------------------------------------------------
    def vision_tokens(self, n_frames: int) -> int:
        """LM image tokens for a chunk of n_frames frames (L per frame)."""
        return int(n_frames) * self.image_seq_len

    @staticmethod
    def marker_text(marker: str) -> str:
        """Text in front of a chunk's frames (SmolVLM2 writes "\\nFrame from MM:SS:" before a frame)."""
        return f"\n{marker}:"

    def frame_text(self) -> str:
        """One frame as a global image: fake, global tag, L image tokens, fake."""
        return self.fake_token + self.global_token + self.image_token * self.image_seq_len + self.fake_token

    def _chunk_ids(self, marker: str, n_frames: int) -> list[int]:
        self._check_marker(marker)
        frame = [self.fake_token_id, self.global_token_id] + [self.image_token_id] * self.image_seq_len \
            + [self.fake_token_id]
        return self.tokenize(self.marker_text(marker)) + frame * n_frames

    def _check_marker(self, marker: Any) -> None:
        if not isinstance(marker, str):
            raise ValueError(f"a chunk marker must be a str such as 'Time=0.0-1.0s', got {type(marker).__name__}")
        for t in (self.image_token, self.fake_token, self.global_token):
            if t in marker:
                raise ValueError(f"chunk marker {marker!r} contains the image token {t!r}; use plain text")

    @staticmethod
    def _check_frames(frames: Any) -> None:
        if not isinstance(frames, np.ndarray):
            raise ValueError(f"frames must be a numpy array [N, H, W, 3] uint8, got {type(frames).__name__}")
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be [N, H, W, 3] uint8, got shape {frames.shape} dtype {frames.dtype}")
        if frames.shape[0] < 1 or frames.shape[1] < 1 or frames.shape[2] < 1:
            raise ValueError(f"frames must hold at least one non-empty frame, got shape {frames.shape}")

    def first_resize_hw(self, height: int, width: int) -> tuple[int, int]:
        """SmolVLM's first resize: longest edge to ``video_longest_edge``, the other side by the aspect ratio
        (truncated, then made even; HF's ``_resize_output_size_rescale_to_max_len``)."""
        side = self.video_longest_edge
        if width >= height:
            h = int(side / (width / height))
            return h + (h % 2), side
        w = int(side * (width / height))
        return side, w + (w % 2)

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """frames [N, H, W, 3] uint8 -> pixel values [N, 3, side, side] fp32, normalised, on the model's device.

        The two resizes of SmolVLM's video processor (longest edge to the video size, then the square
        ``frame_size``), each PIL's (``resize_frames``: Pillow on CPU, its torch reproduction elsewhere).
        """
        self._check_frames(frames)
        side = self.frame_size
        first = self.first_resize_hw(frames.shape[1], frames.shape[2])
        x = resize_frames(frames, [first, (side, side)], self.resample, self.device)  # [N, 3, side, side] 0..1
        mean = self.image_mean.to(x.device)
        std = self.image_std.to(x.device)
        return (x - mean) / std  # [N, 3, side, side]

    def encode_frames(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel values [N, 3, side, side] -> LM-space features [N, L, D] (vision tower + pixel-shuffle connector)."""
        inner = self.model.model
        out = inner.vision_model(pixel_values=pixel_values.to(self.dtype))  # [N, P, Dv]
        return inner.connector(out.last_hidden_state)  # [N, L, D]

    @torch.inference_mode()
    def embed_chunk(self, marker: str, frames: np.ndarray) -> Tokens:
        """Chunk = marker text + every frame as one global image; positions 0..S-1."""
        pixels = self.preprocessed(frames)  # [N, 3, side, side]
        n = int(pixels.shape[0])
        ids = torch.tensor(self._chunk_ids(marker, n), dtype=torch.long, device=self.device).unsqueeze(0)  # [1, S]
        emb = self.language_model().embed_tokens(ids)  # [1, S, D]
        feats = self.encode_frames(pixels)  # [N, L, D]
        mask = (ids == self.image_token_id).unsqueeze(-1)  # [1, S, 1]
        if int(mask.sum()) != feats.shape[0] * feats.shape[1]:
            raise RuntimeError(f"{feats.shape[0] * feats.shape[1]} image features for {int(mask.sum())} image tokens; "
                               "the marker text must not contain the image token")
        emb = emb.masked_scatter(mask, feats.reshape(-1, feats.shape[-1]).to(emb.dtype))  # [1, S, D]
        rel = torch.arange(ids.shape[1], device=self.device).unsqueeze(0)  # [1, S]
        return Tokens(input_ids=ids, inputs_embeds=emb, rel_pos=rel, n_vision=n * self.image_seq_len)

    def visual_cells(self, tokens: Tokens) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Frame i's image token j is cell j of frame i; the fake / global tags are never dropped."""
        vis = torch.nonzero(tokens.input_ids[0] == self.image_token_id).squeeze(1)  # [N*L]
        frame = torch.full((tokens.n_tokens,), -1, dtype=torch.long, device=tokens.input_ids.device)
        cell = frame.clone()
        k = torch.arange(vis.numel(), device=frame.device)
        frame[vis], cell[vis] = k // self.image_seq_len, k % self.image_seq_len
        return frame, cell, self.image_seq_len

    @torch.inference_mode()
    def embed_chunks(self, chunks: Sequence[tuple[str, np.ndarray]]) -> list[Tokens]:
        """Several chunks with one vision-tower + connector pass over all their frames (frames are encoded
        independently, so each result is that of ``embed_chunk``)."""
        if not chunks:
            return []
        pixels = [self.preprocessed(frames) for _, frames in chunks]  # each [N_i, 3, side, side]
        feats = self.encode_frames(torch.cat(pixels))  # [sum N_i, L, D]
        out, at = [], 0
        for (marker, _), px in zip(chunks, pixels):
            n = int(px.shape[0])
            ids = torch.tensor(self._chunk_ids(marker, n), dtype=torch.long, device=self.device).unsqueeze(0)  # [1, S]
            emb = self.language_model().embed_tokens(ids)  # [1, S, D]
            mask = (ids == self.image_token_id).unsqueeze(-1)  # [1, S, 1]
            f = feats[at:at + n]  # [N_i, L, D]
            emb = emb.masked_scatter(mask, f.reshape(-1, f.shape[-1]).to(emb.dtype))
            rel = torch.arange(ids.shape[1], device=self.device).unsqueeze(0)  # [1, S]
            out.append(Tokens(input_ids=ids, inputs_embeds=emb, rel_pos=rel, n_vision=n * self.image_seq_len))
            at += n
        return out

    @torch.inference_mode()
    def reference_logits(self, pieces: Sequence[Any]) -> torch.Tensor:
        """HF forward over the whole sequence (no cache, HF positions) -> last logits [V] fp32."""
        ids: list[int] = []
        pixels: list[torch.Tensor] = []
        for piece in pieces:
            if isinstance(piece, str):
                ids += self.tokenize(piece)
            elif isinstance(piece, tuple) and len(piece) == 2:
                marker, frames = piece
                self._check_marker(marker)
                self._check_frames(frames)
                text = self.marker_text(marker) + self.frame_text() * frames.shape[0]
                ids += self.tokenizer(text, add_special_tokens=False)["input_ids"]
                pixels.append(self.preprocess(frames))
            else:
                raise ValueError(f"a piece must be a str or a (marker, frames) tuple, got {type(piece).__name__}")
        if not ids:
            raise ValueError("reference_logits needs at least one token")
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device).unsqueeze(0)  # [1, T]
        kwargs: dict[str, Any] = {}
        if pixels:
            pv = torch.cat(pixels).unsqueeze(0)  # [1, N, 3, side, side]
            kwargs["pixel_values"] = pv.to(self.dtype)
            kwargs["pixel_attention_mask"] = torch.ones(pv.shape[0], pv.shape[1], pv.shape[3], pv.shape[4],
                                                        dtype=torch.bool, device=self.device)  # [1, N, side, side]
        out = self.model(input_ids=input_ids, use_cache=False, **kwargs)
        return out.logits[0, -1].float()  # [V]

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def random(cls, size: str = "tiny", device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               seed: int = 0, name: str | None = None, frame_size: int | None = None,
               model_type: str = "smolvlm") -> "SmolVLMAdapter":
        """Random weights in a real architecture: "tiny" (tests) or the published "256m" / "2.2b" configs.

        model_type "idefics3" builds the same shapes as an Idefics3 model (SmolVLM v1 checkpoints).
        """
        if size not in SIZES:
            raise ValueError(f"unknown SmolVLM size {size!r}; choose one of {', '.join(SIZES)}")
        spec = SIZES[size]
        t0 = time.perf_counter()
        tokenizer = build_offline_tokenizer(SPECIAL_TOKENS, eos_token=END_OF_UTTERANCE, pad_token="<|im_end|>",
                                            bos_token="<|im_start|>")
        config = _build_config(spec, tokenizer, model_type)
        model_cls = _model_classes(model_type)[0]
        torch.manual_seed(seed)
        with torch.device(device):
            model = model_cls._from_config(config, dtype=dtype)
        model.eval()
        logger.info("built random SmolVLM %s (%s) on %s in %.2fs", size, model_type, device, time.perf_counter() - t0)
        return cls(model, tokenizer, name=name or f"smolvlm-{size}-random", frame_size=frame_size)

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, frame_size: int | None = None, device_map: Any = None,
                        max_memory: dict | None = None, offload_folder: str | None = None) -> "SmolVLMAdapter":
        """Load a real SmolVLM2 / SmolVLM / Idefics3 checkpoint (hub id or local directory).

        ``device_map`` / ``max_memory`` / ``offload_folder``: accelerate's placement; else the model goes to ``device``.
        """
        name_or_path = str(name_or_path)
        local = os.path.isdir(name_or_path)
        if not local and (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1):
            raise ValueError(f"SmolVLM checkpoint directory {name_or_path!r} does not exist; give a hub id or a "
                             "local checkpoint directory")
        from transformers import AutoConfig, AutoTokenizer

        try:
            config = AutoConfig.from_pretrained(name_or_path)
        except Exception as e:  # missing files, network, bad json
            raise ValueError(f"cannot read the config of {name_or_path!r} ({one_line(e)}); give a hub id or a local "
                             "SmolVLM checkpoint directory") from None
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"{name_or_path!r} has model_type {model_type!r}, not a SmolVLM checkpoint "
                             f"({', '.join(SUPPORTED_MODEL_TYPES)})")
        model_cls = _model_classes(model_type)[0]
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            model = model_cls.from_pretrained(name_or_path, dtype=dtype,
                                              **placement_kwargs(device_map, max_memory, offload_folder))
        except Exception as e:
            raise ValueError(f"cannot load SmolVLM weights or tokenizer from {name_or_path!r} ({one_line(e)}); "
                             "check the checkpoint files") from None
        model = (model if device_map is not None else model.to(device)).eval()
        pre = read_preprocessor_config(name_or_path)
        mean = pre.get("image_mean") or DEFAULT_MEAN
        std = pre.get("image_std") or DEFAULT_STD
        side = frame_size if frame_size is not None else default_side(pre, int(config.vision_config.image_size))
        video = (pre.get("video_sampling") or {}).get("video_size") or {}
        return cls(model, tokenizer, name=name_or_path, frame_size=side, image_mean=mean, image_std=std,
                   resample=PIL_RESAMPLE.get(pre.get("resample"), "lanczos"),
                   video_longest_edge=video.get("longest_edge") if frame_size is None else None)


def _build_config(spec: _Size, tokenizer: Any, model_type: str) -> Any:
    """Model config for a size, with special token ids taken from the tokenizer."""
    from transformers import LlamaConfig

    _, config_cls, vision_cls = _model_classes(model_type)
    n_tok = len(tokenizer)
    vocab = spec.vocab if spec.vocab is not None else -(-n_tok // 64) * 64
    if vocab < n_tok:
        raise RuntimeError(f"vocab_size {vocab} is smaller than the tokenizer ({n_tok} tokens)")
    text = LlamaConfig(
        vocab_size=vocab, hidden_size=spec.text_hidden, intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads, head_dim=spec.text_hidden // spec.text_heads,
        max_position_embeddings=spec.max_positions, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        initializer_range=spec.init_range, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    vision = vision_cls(
        hidden_size=spec.vision_hidden, intermediate_size=spec.vision_intermediate,
        num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
        patch_size=spec.patch, image_size=spec.image, initializer_range=spec.init_range,
    )
    return config_cls(text_config=text, vision_config=vision, scale_factor=spec.scale_factor,
                      image_token_id=_token_id(tokenizer, IMAGE_TOKEN), tie_word_embeddings=False)
