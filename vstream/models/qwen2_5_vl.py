"""Qwen2.5-VL adapter: video chunks, M-RoPE (3-D positions: temporal, height, width).

A chunk is the time-marker text followed by one video:
``marker <|vision_start|> <|video_pad|> * n <|vision_end|>``. Frames are resized so both sides are
multiples of ``patch_size * spatial_merge_size`` (28), normalised with the checkpoint's mean/std and
patchified the way Qwen2-VL's video processor does; an odd frame count repeats the last frame
(temporal patch size 2). Positions come from the HF model's own ``get_rope_index`` on the chunk's ids
alone, so a chunk placed at ``start`` gets exactly the positions HF gives it in the whole sequence.

Frames are resized with the Qwen-VL rule (HF's ``smart_resize``, see ``resize.fit_to_grid``) under a
per-frame pixel budget of ``frame_size ** 2`` and the checkpoint's ``min_pixels``: a frame that the
HF processor would give grid (t, h, w) under that budget gets exactly that grid here (tests/
test_parity_processor.py). ``frame_size`` (constructor / ``random`` / ``from_pretrained`` argument) is
the side of the square with that area. Default: 448 for the published configs and real checkpoints
(16 x 16 = 256 merged tokens per 2 frames of a square video; less when a checkpoint's ``max_pixels`` is
smaller), 56 for the tiny preset. The resize is PIL's bicubic (``resize.resize_frames``: Pillow on CPU,
its exact torch reproduction elsewhere): pixel values equal HF's PIL processor's (measured difference 0).
``fps`` (attribute, default 2.0) is the sampling rate of the frames; it sets the temporal position
spacing (``second_per_grid_ts = temporal_patch_size / fps``).
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from vstream.models.base import (ModelAdapter, Tokens, default_side, one_line, placement_kwargs,
                                 read_preprocessor_config)
from vstream.models.resize import fit_to_grid, resize_frames
from vstream.models.tokenizer import build_offline_tokenizer

logger = logging.getLogger(__name__)

#: Qwen2.5 special tokens and their ids in the real tokenizer (in id order, starting at 151643).
QWEN_SPECIAL_TOKENS: list[str] = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]
QWEN_FIRST_SPECIAL_ID = 151643

#: OpenAI CLIP normalisation, Qwen2-VL's processor default.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

DEFAULT_FRAME_SIZE = 448
TINY_FRAME_SIZE = 56
#: Smallest frame area (pixels) of the published Qwen2.5-VL preprocessor_config.json (``min_pixels``).
DEFAULT_MIN_PIXELS = 56 * 56

#: Vision tower shared by the published 3B and 7B checkpoints (Qwen2.5-VL-*-Instruct config.json).
_PUBLISHED_VISION = dict(
    depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420, hidden_act="silu", in_channels=3,
    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2,
)
#: Per-size values of the published configs (text tower, vision output width, tied embeddings).
_PUBLISHED = {
    "3b": dict(
        text=dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                  intermediate_size=11008, vocab_size=151936, max_window_layers=70),
        out_hidden_size=2048, tie_word_embeddings=True),
    "7b": dict(
        text=dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                  intermediate_size=18944, vocab_size=152064, max_window_layers=28),
        out_hidden_size=3584, tie_word_embeddings=False),
}
_PUBLISHED_TEXT = dict(
    hidden_act="silu", max_position_embeddings=128000, rms_norm_eps=1e-6, sliding_window=32768,
    use_sliding_window=False, bos_token_id=151643, eos_token_id=151645,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
)


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


class Qwen25VLAdapter(ModelAdapter):
    """Qwen2.5-VL behind the adapter protocol (chunks are videos, positions are 3-D M-RoPE)."""

    family = "qwen2.5-vl"
    pos_dims = 3

    def __init__(self, model: nn.Module, tokenizer: Any, *, name: str, frame_size: int | None = None,
                 default_frame_size: int = DEFAULT_FRAME_SIZE, image_mean: Sequence[float] = CLIP_MEAN,
                 image_std: Sequence[float] = CLIP_STD, fps: float = 2.0,
                 min_pixels: int = DEFAULT_MIN_PIXELS) -> None:
        super().__init__(model, tokenizer, name=name, frame_size=frame_size)
        cfg = model.config
        vc = cfg.vision_config
        self.patch_size: int = int(vc.patch_size)
        self.merge_size: int = int(vc.spatial_merge_size)
        self.temporal_patch_size: int = int(vc.temporal_patch_size)
        self.default_frame_size = int(default_frame_size)
        self.image_mean = torch.tensor(list(image_mean), dtype=torch.float32)
        self.image_std = torch.tensor(list(image_std), dtype=torch.float32)
        if self.image_mean.numel() != 3 or self.image_std.numel() != 3 or bool((self.image_std <= 0).any()):
            raise ValueError("image_mean and image_std must have 3 values each (std > 0)")
        self.fps = float(fps)  # frames per second of the sampled stream; the engine sets it
        self.min_pixels = int(min_pixels)
        self.video_token_id: int = int(cfg.video_token_id)
        self.vision_start_id: int = int(cfg.vision_start_token_id)
        self.vision_end_id: int = int(cfg.vision_end_token_id)
        self._check_token_ids()
        self._warned_span = False

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
        """Temporal M-RoPE ids depend on the sampling rate: seconds per temporal patch = 2 / fps."""
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
            raise ValueError(f"frame_size {side} is below Qwen2.5-VL's minimum {factor}; use a multiple of {factor}")
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

    def chunk_ids(self, marker: str, grid_thw: torch.Tensor) -> list[int]:
        """Token ids of a chunk: marker text, then vision start, one video pad per merged patch, vision end."""
        n_vis = int(grid_thw.prod().item()) // (self.merge_size ** 2)
        return self.tokenize(marker) + [self.vision_start_id] + [self.video_token_id] * n_vis + [self.vision_end_id]

    def second_per_grid(self) -> float:
        """Seconds covered by one temporal patch of frames sampled at ``self.fps``."""
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}; set adapter.fps to the sampling rate")
        return self.temporal_patch_size / self.fps

    # ---- chunks -------------------------------------------------------------------------------
    @torch.inference_mode()
    def embed_chunk(self, marker: str, frames: np.ndarray) -> Tokens:
        """Marker + frames [N, H, W, 3] uint8 -> Tokens with 3-D rel_pos starting at 0."""
        if not isinstance(marker, str):
            raise ValueError(f"marker must be a string, got {type(marker).__name__}")
        pixels, grid = self.preprocessed(frames)
        dev = self.device
        ids = torch.tensor(self.chunk_ids(marker, grid), dtype=torch.long, device=dev).unsqueeze(0)  # [1, S]
        emb = self.language_model().embed_tokens(ids)  # [1, S, D]
        feats = self.model.model.get_video_features(pixels, grid.unsqueeze(0)).pooler_output[0]  # [n_vis, D]
        mask = ids == self.video_token_id  # [1, S]
        emb = emb.masked_scatter(mask.unsqueeze(-1), feats.to(emb.dtype))
        rel = self._chunk_positions(ids, grid)  # [3, S]
        return Tokens(input_ids=ids, inputs_embeds=emb, rel_pos=rel, n_vision=int(mask.sum().item()))

    @torch.inference_mode()
    def embed_chunks(self, chunks: Sequence[tuple[str, np.ndarray]]) -> list[Tokens]:
        """Several chunks with one vision-tower pass (videos are separated by their grids inside the tower:
        windowed and full attention never cross two videos, so each result is that of ``embed_chunk``)."""
        if not chunks:
            return []
        for marker, _ in chunks:
            if not isinstance(marker, str):
                raise ValueError(f"marker must be a string, got {type(marker).__name__}")
        prepped = [self.preprocessed(frames) for _, frames in chunks]  # (pixels [P_i, C*tp*p*p], grid [3])
        grids = torch.stack([g for _, g in prepped])  # [B, 3]
        feats = self.model.model.get_video_features(torch.cat([p for p, _ in prepped]), grids).pooler_output
        out = []
        for (marker, _), (_, grid), f in zip(chunks, prepped, feats):  # f: [n_vis_i, D]
            ids = torch.tensor(self.chunk_ids(marker, grid), dtype=torch.long, device=self.device).unsqueeze(0)
            emb = self.language_model().embed_tokens(ids)  # [1, S, D]
            mask = ids == self.video_token_id  # [1, S]
            emb = emb.masked_scatter(mask.unsqueeze(-1), f.to(emb.dtype))
            out.append(Tokens(input_ids=ids, inputs_embeds=emb, rel_pos=self._chunk_positions(ids, grid),
                              n_vision=int(mask.sum().item())))
        return out

    def _chunk_positions(self, ids: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """[3, S] positions HF gives this chunk alone, shifted to start at 0."""
        types = (ids == self.video_token_id).to(torch.int) * 2  # [1, S] 0 text, 2 video
        spg = torch.tensor([self.second_per_grid()], device=ids.device)
        pos, _ = self.model.model.get_rope_index(ids, mm_token_type_ids=types, video_grid_thw=grid.unsqueeze(0),
                                                 second_per_grid_ts=spg)  # [3, 1, S]
        rel = pos[:, 0] - pos[:, 0, :1]  # [3, S]
        # The engine resumes after a chunk at max + 1 (the original Qwen2.5-VL rule); transformers 5.x resumes
        # at (last token's position + 1). They differ only when the temporal positions outrun the spatial grid
        # ((grid_t - 1) * tokens_per_second * second_per_grid > merged grid side: many or tiny frames).
        if int(rel.max()) > int(rel[0, -1]) and not self._warned_span:
            self._warned_span = True
            logger.warning("chunk temporal positions (max %d) exceed its spatial extent (%d): text after it goes "
                           "to max+1, where transformers' get_rope_index would not put it; use fewer frames per "
                           "chunk or a larger frame_size", int(rel.max()), int(rel[0, -1]))
        return rel.contiguous()

    def visual_cells(self, tokens: Tokens) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Merged video token (t, h, w) is cell (h, w) of temporal patch t ("frame" = 2 frames here).

        Cells come from the h and w position ids; the temporal patch from the token order (t-major),
        since temporal ids may repeat at high frame rates.
        """
        vis = torch.nonzero(tokens.input_ids[0] == self.video_token_id).squeeze(1)  # [T*h*w]
        frame = torch.full((tokens.n_tokens,), -1, dtype=torch.long, device=tokens.input_ids.device)
        cell = frame.clone()
        if vis.numel() == 0:
            return frame, cell, 0
        h, w = tokens.rel_pos[1, vis], tokens.rel_pos[2, vis]  # [n]
        h, w = h - h.min(), w - w.min()
        gw = int(w.max().item()) + 1
        n_cells = (int(h.max().item()) + 1) * gw
        if vis.numel() % n_cells:
            raise RuntimeError(f"{vis.numel()} video tokens do not fill whole {n_cells}-cell grids")
        frame[vis] = torch.arange(vis.numel(), device=frame.device) // n_cells
        cell[vis] = h * gw + w
        return frame, cell, n_cells

    # ---- reference ----------------------------------------------------------------------------
    @torch.inference_mode()
    def reference_logits(self, pieces: Sequence[Any]) -> torch.Tensor:
        """HF's own forward over the whole sequence (HF computes the M-RoPE positions) -> last logits [V] fp32."""
        ids: list[int] = []
        pixels, grids, spg = [], [], []
        for piece in pieces:
            if isinstance(piece, str):
                ids += self.tokenize(piece)
            elif isinstance(piece, tuple) and len(piece) == 2:
                marker, frames = piece
                pix, grid = self.preprocess(frames)
                ids += self.chunk_ids(marker, grid)
                pixels.append(pix)
                grids.append(grid)
                spg.append(self.second_per_grid())
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
                          second_per_grid_ts=torch.tensor(spg, device=dev))
        self.model.model.rope_deltas = None  # no stale state from an earlier call
        try:
            out = self.model(input_ids=input_ids, mm_token_type_ids=mm_types, use_cache=False, logits_to_keep=1,
                             **kwargs)
        finally:
            self.model.model.rope_deltas = None
        return out.logits[0, -1].float()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def random(cls, size: str, device: torch.device | str, dtype: torch.dtype, seed: int = 0,
               name: str | None = None, frame_size: int | None = None) -> "Qwen25VLAdapter":
        """Random weights: "tiny" (tests, offline tokenizer) or the published "3b" / "7b" configs (timing)."""
        device = torch.device(device)
        if size == "tiny":
            tok = build_offline_tokenizer(QWEN_SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
            config = _tiny_config(tok)
            default_side = TINY_FRAME_SIZE
        elif size in _PUBLISHED:
            tok = real_id_tokenizer()
            config = _published_config(size)
            default_side = DEFAULT_FRAME_SIZE
        else:
            raise ValueError(f"unknown Qwen2.5-VL size {size!r}; choose tiny, {', '.join(_PUBLISHED)}")
        torch.manual_seed(seed)
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
        model.to(device=device, dtype=dtype)
        logger.info("built random Qwen2.5-VL %s on %s (%s)", size, device, dtype)
        return cls(model, tok, name=name or f"qwen2.5-vl-{size}-random", frame_size=frame_size,
                   default_frame_size=default_side)

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: torch.device | str, dtype: torch.dtype,
                        frame_size: int | None = None, device_map: Any = None, max_memory: dict | None = None,
                        offload_folder: str | None = None) -> "Qwen25VLAdapter":
        """Load a real checkpoint (hub id or local directory); mean/std from its preprocessor_config.json.

        ``device_map`` / ``max_memory`` / ``offload_folder``: accelerate's placement (several GPUs, CPU or
        disk offload); without them the model goes to ``device``.
        """
        from transformers import AutoTokenizer

        placement = placement_kwargs(device_map, max_memory, offload_folder)
        try:
            tok = AutoTokenizer.from_pretrained(name_or_path)
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(name_or_path, dtype=dtype, **placement)
        except Exception as e:  # missing dir, no network, bad files: one line for the user
            raise ValueError(f"cannot load Qwen2.5-VL checkpoint {name_or_path!r}: {one_line(e)}; give a hub id "
                             f"or a local checkpoint directory, or use the tiny-qwen2.5-vl preset") from None
        model.to(torch.device(device))
        pp = read_preprocessor_config(name_or_path)
        vc = model.config.vision_config
        for key, have in (("patch_size", vc.patch_size), ("merge_size", vc.spatial_merge_size),
                          ("temporal_patch_size", vc.temporal_patch_size)):
            if key in pp and int(pp[key]) != int(have):
                logger.warning("preprocessor_config %s=%s differs from the model's %s; using the model's",
                               key, pp[key], have)
        return cls(model, tok, name=str(name_or_path), frame_size=frame_size,
                   default_frame_size=default_side(pp, DEFAULT_FRAME_SIZE, factor=vc.patch_size * vc.spatial_merge_size,
                                                   cap=DEFAULT_FRAME_SIZE),
                   image_mean=pp.get("image_mean", CLIP_MEAN), image_std=pp.get("image_std", CLIP_STD),
                   min_pixels=_min_pixels(pp, DEFAULT_MIN_PIXELS))


def _tiny_config(tok) -> Qwen2_5_VLConfig:
    """A tiny Qwen2.5-VL config whose special token ids are those of the offline tokenizer ``tok``."""
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    vocab = ((len(tok) + 63) // 64) * 64
    text = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=4096,
                rms_norm_eps=1e-6, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"], initializer_range=0.1,  # position errors must show in logits
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]})
    vision = dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=64, hidden_act="silu", in_channels=3,
                  out_hidden_size=64, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                  fullatt_block_indexes=[1], tokens_per_second=2)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                            video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                            vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
                            initializer_range=0.1)


def _published_config(size: str) -> Qwen2_5_VLConfig:
    """The published Qwen2.5-VL-{3B,7B}-Instruct architecture (real special token ids)."""
    spec = _PUBLISHED[size]
    text = {**_PUBLISHED_TEXT, **spec["text"], "rope_parameters": dict(_PUBLISHED_TEXT["rope_parameters"])}
    vision = {**_PUBLISHED_VISION, "out_hidden_size": spec["out_hidden_size"]}
    first = QWEN_FIRST_SPECIAL_ID
    pos = {t: first + i for i, t in enumerate(QWEN_SPECIAL_TOKENS)}
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=pos["<|image_pad|>"],
                            video_token_id=pos["<|video_pad|>"], vision_start_token_id=pos["<|vision_start|>"],
                            vision_end_token_id=pos["<|vision_end|>"],
                            tie_word_embeddings=spec["tie_word_embeddings"])


def _min_pixels(pp: dict, default: int) -> int:
    """The checkpoint's smallest frame area: ``min_pixels`` or ``size.shortest_edge`` (an area for Qwen)."""
    size = pp.get("size") if isinstance(pp.get("size"), dict) else {}
    value = pp.get("min_pixels") or size.get("min_pixels") or size.get("shortest_edge")
    return int(value) if value else default
