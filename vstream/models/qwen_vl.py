"""What the Qwen-VL adapters share: special tokens, preprocessing, HF's full forward, construction.

``QwenVLAdapter`` is the base of ``Qwen25VLAdapter`` (vstream.models.qwen2_5_vl) and ``Qwen3VLAdapter``
(vstream.models.qwen3_vl). Both families take video chunks, resize frames with the Qwen-VL rule under a
per-frame pixel budget (``resize.fit_to_grid``; PIL's bicubic: Pillow on CPU, its exact torch reproduction
elsewhere), patchify them the way the HF video processors do, and place tokens with 3-D M-RoPE from HF's own ``get_rope_index``. A family
subclass gives its chunk layout (``chunk_ids``, ``embed_chunk``, ``_chunk_positions``), its configs
(``tiny_text``, ``published``, ...) and its defaults as class attributes.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from vstream.models.base import (ModelAdapter, default_side, one_line, placement_kwargs,
                                 read_checkpoint_json, read_preprocessor_config)
from vstream.models.resize import fit_to_grid, resize_frames
from vstream.models.tokenizer import build_offline_tokenizer

logger = logging.getLogger(__name__)

#: Qwen2.5 / Qwen3 special tokens and their ids in the real tokenizer (in id order, starting at 151643).
QWEN_SPECIAL_TOKENS: list[str] = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]
QWEN_FIRST_SPECIAL_ID = 151643


def real_id_tokenizer():
    """Offline byte-level tokenizer whose Qwen special tokens sit at their real ids (151643...).

    Ids 0..255 are bytes, 256..151642 are unused fillers (never produced by encoding), then the
    specials in the real order, so a published-size random model sees the real special ids.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({f"<|unused_{i}|>": i for i in range(len(alphabet), QWEN_FIRST_SPECIAL_ID)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    for i, t in enumerate(QWEN_SPECIAL_TOKENS):
        if fast.convert_tokens_to_ids(t) != QWEN_FIRST_SPECIAL_ID + i:
            raise RuntimeError(f"offline tokenizer put {t} at the wrong id; rebuild it from QWEN_SPECIAL_TOKENS")
    return fast


def special_ids(tok: Any = None) -> dict[str, int]:
    """Each Qwen special token's id: in tokenizer ``tok``, or the real ids when ``tok`` is None."""
    if tok is None:
        return {t: QWEN_FIRST_SPECIAL_ID + i for i, t in enumerate(QWEN_SPECIAL_TOKENS)}
    return {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}


def padded_vocab(tok: Any) -> int:
    """A tiny config's vocabulary size: the tokenizer's, rounded up to a multiple of 64."""
    return ((len(tok) + 63) // 64) * 64


def vision_token_config(ids: dict[str, int]) -> dict[str, int]:
    """The four vision token ids of a Qwen-VL config (image pad, video pad, vision start and end)."""
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def checkpoint_min_pixels(pp: dict, default: int) -> int:
    """The checkpoint's smallest frame area: ``min_pixels`` or ``size.shortest_edge`` (an area for Qwen)."""
    size = pp.get("size") if isinstance(pp.get("size"), dict) else {}
    value = pp.get("min_pixels") or size.get("min_pixels") or size.get("shortest_edge")
    return int(value) if value else default


class QwenVLAdapter(ModelAdapter):
    """Base of the Qwen-VL adapters: video chunks with 3-D M-RoPE positions (see the module docstring)."""

    pos_dims = 3
    label = "Qwen-VL"  # the family's name in messages
    hf_class: Any = None  # the transformers *ForConditionalGeneration class
    image_mean_default: Sequence[float] = (0.5, 0.5, 0.5)
    image_std_default: Sequence[float] = (0.5, 0.5, 0.5)
    published_frame_size = 448  # default frame side of the published configs and real checkpoints
    tiny_frame_size = 56
    min_pixels_default = 56 * 56  # smallest frame area when the checkpoint does not say
    config_class: Any = None  # the transformers config class
    #: tiny config: text tower (ids and vocabulary added), vision tower, top-level extras
    tiny_text: dict = {}
    tiny_vision: dict = {}
    tiny_extra: dict = {}
    #: published configs: size -> {"text": ..., "vision": ..., "tie_word_embeddings": ...} over the shared values
    published: dict[str, dict] = {}
    published_text: dict = {}
    published_vision: dict = {}
    #: the checkpoint's preprocessing files, first found wins (the last one warns when absent)
    preprocessor_files: tuple[str, ...] = ("preprocessor_config.json",)

    def __init__(self, model: nn.Module, tokenizer: Any, *, name: str, frame_size: int | None = None,
                 default_frame_size: int | None = None, image_mean: Sequence[float] | None = None,
                 image_std: Sequence[float] | None = None, fps: float = 2.0, min_pixels: int | None = None) -> None:
        """Wrap an HF Qwen-VL model; None arguments take the family's defaults (class attributes)."""
        super().__init__(model, tokenizer, name=name, frame_size=frame_size)
        cfg = model.config
        vc = cfg.vision_config
        self.patch_size: int = int(vc.patch_size)
        self.merge_size: int = int(vc.spatial_merge_size)
        self.temporal_patch_size: int = int(vc.temporal_patch_size)
        self.default_frame_size = int(default_frame_size or self.published_frame_size)
        self.image_mean = torch.tensor(list(image_mean or self.image_mean_default), dtype=torch.float32)
        self.image_std = torch.tensor(list(image_std or self.image_std_default), dtype=torch.float32)
        if self.image_mean.numel() != 3 or self.image_std.numel() != 3 or bool((self.image_std <= 0).any()):
            raise ValueError("image_mean and image_std must have 3 values each (std > 0)")
        self.fps = float(fps)  # frames per second of the sampled stream; the engine sets it
        self.min_pixels = int(min_pixels or self.min_pixels_default)
        self.video_token_id: int = int(cfg.video_token_id)
        self.vision_start_id: int = int(cfg.vision_start_token_id)
        self.vision_end_id: int = int(cfg.vision_end_token_id)
        self._check_token_ids()

    def _check_token_ids(self) -> None:
        expect = {"<|video_pad|>": self.video_token_id, "<|vision_start|>": self.vision_start_id,
                  "<|vision_end|>": self.vision_end_id}
        for tok, cid in expect.items():
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if tid != cid:
                raise ValueError(f"tokenizer maps {tok} to {tid} but the model config expects {cid}; "
                                 f"use the checkpoint's own tokenizer")
        if len(self.tokenizer) > self.text_config.vocab_size:
            logger.warning("tokenizer has %d tokens but vocab_size is %d", len(self.tokenizer),
                           self.text_config.vocab_size)

    # ---- protocol hooks (language_model, lm_head, stop tokens: the base defaults fit) ----------
    def configure_sampling(self, fps: float) -> None:
        """Temporal positions depend on the sampling rate (seconds per temporal patch = 2 / fps)."""
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = float(fps)

    def frames_per_chunk(self, fps: float, chunk_seconds: float) -> int | None:
        """A whole number of temporal patches (even frame count) so every chunk has the same token count."""
        if not fps > 0 or not chunk_seconds > 0:
            raise ValueError(f"fps and chunk_seconds must be > 0, got {fps} and {chunk_seconds}")
        tp = self.temporal_patch_size
        n = max(1, round(fps * chunk_seconds))
        return -(-n // tp) * tp

    # ---- preprocessing ------------------------------------------------------------------------
    @property
    def target_side(self) -> int:
        """Side of the square whose area is the per-frame pixel budget (``frame_size`` or the default)."""
        side = int(self.frame_size or self.default_frame_size)
        factor = self.patch_size * self.merge_size
        if side < factor:
            raise ValueError(f"frame_size {side} is below {self.label}'s minimum {factor}; use a multiple of {factor}")
        return side

    def resized_hw(self, height: int, width: int) -> tuple[int, int]:
        """Size a [height, width] frame is resized to: HF's rule with max_pixels = target_side ** 2."""
        side = self.target_side
        return fit_to_grid(height, width, self.patch_size * self.merge_size, min(self.min_pixels, side * side),
                           side * side)

    def preprocess(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [N, H, W, 3] uint8 -> (pixel patches [T*gh*gw, 3*tp*p*p] fp32, grid_thw [3] int64).

        Resize as PIL does (``resize_frames``: Pillow on CPU, torch on the device), normalise, pad the frame
        count to a multiple of the temporal patch size by repeating the last frame, patchify in the
        layout of Qwen2-VL's video processor.
        """
        dev = self.device
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be [N, H, W, 3] uint8, got shape {frames.shape} dtype {frames.dtype}")
        n = frames.shape[0]
        if n == 0:
            raise ValueError("a chunk needs at least one frame, got 0")
        h, w = self.resized_hw(frames.shape[1], frames.shape[2])
        x = resize_frames(frames, [(h, w)], "bicubic", dev)  # [N, 3, h, w] in 0..1
        x = (x - self.image_mean.to(dev).view(1, 3, 1, 1)) / self.image_std.to(dev).view(1, 3, 1, 1)
        tp, p, m = self.temporal_patch_size, self.patch_size, self.merge_size
        if pad := -n % tp:
            x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)], dim=0)  # [N', 3, h, w]
        gt, gh, gw = x.shape[0] // tp, h // p, w // p
        x = x.reshape(gt, tp, 3, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # [gt, gh/m, gw/m, m, m, C, tp, p, p]
        pixels = x.reshape(gt * gh * gw, 3 * tp * p * p)  # [T*gh*gw, C*tp*p*p]
        grid = torch.tensor([gt, gh, gw], dtype=torch.long, device=dev)  # [3]
        return pixels.contiguous(), grid

    def chunk_ids(self, marker: str, grid_thw: torch.Tensor, n_frames: int | None = None) -> list[int]:
        """Token ids of a chunk of ``n_frames`` frames with video grid ``grid_thw`` [3] (the family's layout)."""
        raise NotImplementedError

    def video_kwargs(self, n_videos: int) -> dict:
        """Extra keyword arguments of HF's forward for ``n_videos`` videos (none by default)."""
        return {}

    # ---- reference ----------------------------------------------------------------------------
    @torch.inference_mode()
    def reference_logits(self, pieces: Sequence[Any]) -> torch.Tensor:
        """HF's own forward over the whole sequence (HF computes the positions) -> last logits [V] fp32."""
        ids: list[int] = []
        pixels, grids = [], []
        for piece in pieces:
            if isinstance(piece, str):
                ids += self.tokenize(piece)
            elif isinstance(piece, tuple) and len(piece) == 2:
                marker, frames = piece
                pix, grid = self.preprocess(frames)
                ids += self.chunk_ids(marker, grid, len(frames))
                pixels.append(pix)
                grids.append(grid)
            else:
                raise ValueError(f"pieces must be strings or (marker, frames) tuples, got {type(piece).__name__}")
        if not ids:
            raise ValueError("reference_logits needs at least one token")
        dev = self.device
        input_ids = torch.tensor(ids, dtype=torch.long, device=dev).unsqueeze(0)  # [1, S]
        mm_types = (input_ids == self.video_token_id).to(torch.int) * 2  # [1, S]
        kwargs: dict[str, Any] = {}
        if pixels:
            kwargs = dict(pixel_values_videos=torch.cat(pixels, dim=0), video_grid_thw=torch.stack(grids),
                          **self.video_kwargs(len(pixels)))
        self.model.model.rope_deltas = None  # no stale state from an earlier call
        try:
            out = self.model(input_ids=input_ids, mm_token_type_ids=mm_types, use_cache=False, logits_to_keep=1,
                             **kwargs)
        finally:
            self.model.model.rope_deltas = None
        return out.logits[0, -1].float()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def tiny_config(cls, tok: Any) -> Any:
        """A tiny config of the family (``tiny_text``, ``tiny_vision``) with the offline tokenizer ``tok``'s ids."""
        ids = special_ids(tok)
        text = dict(vocab_size=padded_vocab(tok), bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                    pad_token_id=ids["<|endoftext|>"], **cls.tiny_text)
        return cls.config_class(text_config=text, vision_config=dict(cls.tiny_vision), **vision_token_config(ids),
                                **cls.tiny_extra)

    @classmethod
    def published_config(cls, size: str) -> Any:
        """The published architecture of ``size`` (a key of ``published``) with the real special token ids."""
        if size not in cls.published:
            raise ValueError(f"unknown {cls.label} size {size!r}; choose one of {', '.join(cls.published)}")
        spec = cls.published[size]
        text = {**cls.published_text, **spec["text"],
                "rope_parameters": dict(cls.published_text["rope_parameters"])}
        vision = {**cls.published_vision, **spec["vision"]}
        return cls.config_class(text_config=text, vision_config=vision, **vision_token_config(special_ids()),
                                tie_word_embeddings=spec["tie_word_embeddings"])

    @classmethod
    def random(cls, size: str, device: torch.device | str, dtype: torch.dtype, seed: int = 0,
               name: str | None = None, frame_size: int | None = None) -> "QwenVLAdapter":
        """Random weights: "tiny" (tests, offline tokenizer) or a published size (timing, real token ids)."""
        device = torch.device(device)
        if size == "tiny":
            tok = build_offline_tokenizer(QWEN_SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
            config, side, min_pixels = cls.tiny_config(tok), cls.tiny_frame_size, cls.tiny_frame_size ** 2
        elif size in cls.published:
            tok = real_id_tokenizer()
            config, side, min_pixels = cls.published_config(size), cls.published_frame_size, cls.min_pixels_default
        else:
            raise ValueError(f"unknown {cls.label} size {size!r}; choose tiny, {', '.join(cls.published)}")
        torch.manual_seed(seed)
        with torch.device(device):
            model = cls.hf_class._from_config(config, dtype=dtype)
        model.to(device=device, dtype=dtype)
        logger.info("built random %s %s on %s (%s)", cls.label, size, device, dtype)
        return cls(model, tok, name=name or f"{cls.family}-{size}-random", frame_size=frame_size,
                   default_frame_size=side, min_pixels=min_pixels)

    @classmethod
    def read_preprocessing(cls, name_or_path: str) -> dict:
        """The checkpoint's preprocessing config: the first of ``preprocessor_files`` it has ({} if none)."""
        for filename in cls.preprocessor_files[:-1]:
            pp = read_checkpoint_json(name_or_path, filename)
            if pp is not None:
                return pp
        return read_preprocessor_config(name_or_path, cls.preprocessor_files[-1])

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: torch.device | str, dtype: torch.dtype,
                        frame_size: int | None = None, device_map: Any = None, max_memory: dict | None = None,
                        offload_folder: str | None = None) -> "QwenVLAdapter":
        """Load a real checkpoint (hub id or local directory); preprocessing values from its config files.

        ``device_map`` / ``max_memory`` / ``offload_folder``: accelerate's placement (several GPUs, CPU or
        disk offload); without them the model goes to ``device``.
        """
        from transformers import AutoTokenizer

        placement = placement_kwargs(device_map, max_memory, offload_folder)
        try:
            tok = AutoTokenizer.from_pretrained(name_or_path)
            model = cls.hf_class.from_pretrained(name_or_path, dtype=dtype, **placement)
        except Exception as e:  # missing dir, no network, bad files: one line for the user
            raise ValueError(f"cannot load {cls.label} checkpoint {name_or_path!r}: {one_line(e)}; give a hub id "
                             f"or a local checkpoint directory, or use the tiny-{cls.family} preset") from None
        if not placement:
            model.to(torch.device(device))
        pp = cls.read_preprocessing(name_or_path)
        vc = model.config.vision_config
        for key, have in (("patch_size", vc.patch_size), ("merge_size", vc.spatial_merge_size),
                          ("temporal_patch_size", vc.temporal_patch_size)):
            if key in pp and int(pp[key]) != int(have):
                logger.warning("preprocessor config %s=%s differs from the model's %s; using the model's",
                               key, pp[key], have)
        factor = int(vc.patch_size) * int(vc.spatial_merge_size)
        return cls(model, tok, name=str(name_or_path), frame_size=frame_size,
                   default_frame_size=default_side(pp, cls.published_frame_size, factor=factor,
                                                   cap=cls.published_frame_size),
                   image_mean=pp.get("image_mean", cls.image_mean_default),
                   image_std=pp.get("image_std", cls.image_std_default),
                   min_pixels=checkpoint_min_pixels(pp, cls.min_pixels_default))
