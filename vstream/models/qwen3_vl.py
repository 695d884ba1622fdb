"""Qwen3-VL adapter: interleaved M-RoPE, DeepStack visual features, textual timestamps.

A chunk is one video in Qwen3-VL's own layout (what ``Qwen3VLProcessor`` writes for a video): per
temporal patch of 2 frames, its time as text, then the patch's visual tokens::

    <{t:.1f} seconds><|vision_start|><|video_pad|> * n<|vision_end|>   (once per temporal patch)

``t`` is the mean time of the patch's two frames, taken from the chunk's ``Time=a-bs`` marker with the
frames spread evenly over [a, b) (the processor's ``_calculate_timestamps`` on the sampled frame times).
The marker text itself is not fed: the timestamps carry the time in the format the model was trained on.

Positions: each temporal patch is its own visual group (transformers splits ``video_grid_thw`` per
frame); its tokens sit at (start, start + row, start + col) and the text after it resumes at
start + max(rows, cols). The positions of a chunk alone, shifted by the chunk's start, are exactly its
positions inside the whole sequence (HF's ``get_rope_index``), and every section of the interleaved
M-RoPE moves by the same delta, so delta rotation of cached keys stays exact.

DeepStack: the vision tower also returns features from some of its layers; HF adds them to the hidden
states of the visual tokens after the first ``len(deepstack_visual_indexes)`` decoder layers. They
are per-token additions, so a chunk's features travel with its ``Tokens.lm_inputs`` and are added when
that chunk is prefilled; the cached K/V then equal HF's full forward.

Preprocessing is Qwen2.5-VL's (inherited): the Qwen resize rule under a per-frame pixel budget,
PIL-exact bicubic resize, mean/std 0.5 (the published video_preprocessor_config.json), patch 16.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from vstream.models.base import (Tokens, default_side, one_line, placement_kwargs, read_checkpoint_json,
                                 read_preprocessor_config)
from vstream.models.qwen2_5_vl import (QWEN_FIRST_SPECIAL_ID, QWEN_SPECIAL_TOKENS, Qwen25VLAdapter, _min_pixels,
                                       real_id_tokenizer)
from vstream.models.tokenizer import build_offline_tokenizer

logger = logging.getLogger(__name__)

#: Qwen3-VL normalisation (Qwen/Qwen3-VL-*-Instruct video_preprocessor_config.json: image_mean/std 0.5).
QWEN3_MEAN = (0.5, 0.5, 0.5)
QWEN3_STD = (0.5, 0.5, 0.5)
#: video_preprocessor_config.json ``size.shortest_edge`` of the published checkpoints (an area: 64 x 64).
QWEN3_MIN_PIXELS = 4096
DEFAULT_FRAME_SIZE = 448
TINY_FRAME_SIZE = 64

_MARKER = re.compile(r"^\s*Time=(-?\d+(?:\.\d+)?)-(-?\d+(?:\.\d+)?)s\s*$")

#: Published Qwen/Qwen3-VL-{2B,4B,8B}-Instruct config.json values (text tower, vision tower, tying).
_PUBLISHED: dict[str, dict[str, Any]] = {
    "2b": dict(
        text=dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8),
        vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                    deepstack_visual_indexes=[5, 11, 17]),
        tie_word_embeddings=True),
    "4b": dict(
        text=dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                  num_key_value_heads=8),
        vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2560,
                    deepstack_visual_indexes=[5, 11, 17]),
        tie_word_embeddings=True),
    "8b": dict(
        text=dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                  num_key_value_heads=8),
        vision=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                    deepstack_visual_indexes=[8, 16, 24]),
        tie_word_embeddings=False),
}
_PUBLISHED_TEXT = dict(head_dim=128, hidden_act="silu", max_position_embeddings=262144, rms_norm_eps=1e-6,
                       vocab_size=151936, bos_token_id=151643, eos_token_id=151645, attention_bias=False,
                       rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                        "mrope_section": [24, 20, 20], "mrope_interleaved": True})
_PUBLISHED_VISION = dict(hidden_act="gelu_pytorch_tanh", in_channels=3, patch_size=16, spatial_merge_size=2,
                         temporal_patch_size=2, num_position_embeddings=2304)


def patch_times(marker: str, n_frames: int, temporal_patch: int, fps: float) -> list[float]:
    """Seconds shown before each temporal patch: the mean time of the patch's first and last frame.

    Frame i of a ``Time=a-bs`` chunk of n frames is at a + i * (b - a) / n; a frame count that is not a
    multiple of the temporal patch repeats the last frame (as the processor does). A marker that is
    not ``Time=a-bs`` is rejected.
    """
    m = _MARKER.match(marker) if isinstance(marker, str) else None
    if m is None:
        raise ValueError(f"Qwen3-VL chunk marker must look like 'Time=12.0-13.0s', got {marker!r}")
    a, b = float(m.group(1)), float(m.group(2))
    if n_frames < 1:
        raise ValueError("a chunk needs at least one frame, got 0")
    step = (b - a) / n_frames if b > a else 1.0 / fps
    times = [a + i * step for i in range(n_frames)]
    times += [times[-1]] * (-n_frames % temporal_patch)
    return [(times[i] + times[i + temporal_patch - 1]) / 2 for i in range(0, len(times), temporal_patch)]


class Qwen3VLAdapter(Qwen25VLAdapter):
    """Qwen3-VL behind the adapter protocol (Qwen2.5-VL's preprocessing; own chunk layout, DeepStack)."""

    family = "qwen3-vl"
    pos_dims = 3

    def __init__(self, model: nn.Module, tokenizer: Any, *, name: str, frame_size: int | None = None,
                 default_frame_size: int = DEFAULT_FRAME_SIZE, image_mean: Sequence[float] = QWEN3_MEAN,
                 image_std: Sequence[float] = QWEN3_STD, fps: float = 2.0,
                 min_pixels: int = QWEN3_MIN_PIXELS) -> None:
        super().__init__(model, tokenizer, name=name, frame_size=frame_size, default_frame_size=default_frame_size,
                         image_mean=image_mean, image_std=image_std, fps=fps, min_pixels=min_pixels)
        self.deepstack_layers = len(model.config.vision_config.deepstack_visual_indexes)
        if self.deepstack_layers > self.num_layers:
            raise ValueError(f"{self.deepstack_layers} DeepStack levels for {self.num_layers} decoder layers")

    # ---- chunks -------------------------------------------------------------------------------
    def supports_token_drop(self) -> bool:
        """No: deepstack features are injected per visual token (``lm_inputs``), so chunks are prefilled whole."""
        return False

    def chunk_ids(self, marker: str, grid_thw: torch.Tensor, n_frames: int | None = None) -> list[int]:
        """Token ids of a chunk: per temporal patch ``<t seconds>``, vision start, pads, vision end."""
        gt, gh, gw = (int(v) for v in grid_thw.tolist())
        per = gh * gw // (self.merge_size ** 2)
        times = patch_times(marker, n_frames or gt * self.temporal_patch_size, self.temporal_patch_size, self.fps)
        ids: list[int] = []
        for t in times[:gt]:
            ids += self.tokenize(f"<{t:.1f} seconds>") + [self.vision_start_id] + [self.video_token_id] * per \
                + [self.vision_end_id]
        return ids

    @torch.inference_mode()
    def embed_chunk(self, marker: str, frames: np.ndarray) -> Tokens:
        """Frames [N, H, W, 3] uint8 -> Tokens with 3-D rel_pos from 0 and the chunk's DeepStack features."""
        if not isinstance(marker, str):
            raise ValueError(f"marker must be a string, got {type(marker).__name__}")
        pixels, grid = self.preprocessed(frames)
        dev = self.device
        ids = torch.tensor(self.chunk_ids(marker, grid, len(frames)), dtype=torch.long, device=dev).unsqueeze(0)
        emb = self.language_model().embed_tokens(ids)  # [1, S, D]
        out = self.model.model.get_video_features(pixels, grid.unsqueeze(0))
        feats = torch.cat(out.pooler_output, dim=0)  # [n_vis, D]
        deep = [torch.cat(f, dim=0).to(emb.dtype) for f in out.deepstack_features]  # each [n_vis, D]
        mask = ids == self.video_token_id  # [1, S]
        emb = emb.masked_scatter(mask.unsqueeze(-1), feats.to(emb.dtype))
        rel = self._chunk_positions(ids, grid)  # [3, S]
        return Tokens(input_ids=ids, inputs_embeds=emb, rel_pos=rel, n_vision=int(mask.sum().item()),
                      lm_inputs={"visual_pos_masks": mask, "deepstack_visual_embeds": deep})

    def embed_chunks(self, chunks: Sequence[tuple[str, np.ndarray]]) -> list[Tokens]:
        """One chunk at a time (Qwen2.5-VL's batched tower pass would give Qwen2.5-VL's layout)."""
        return [self.embed_chunk(marker, frames) for marker, frames in chunks]

    def batch_lm_inputs(self, tokens: Sequence[Tokens], rows: torch.Tensor) -> dict:
        """DeepStack for a right-padded batch: the rows' visual masks padded to [B, S], their features
        concatenated row after row (HF indexes ``hidden[mask]`` in that order)."""
        b, s = rows.shape
        mask = torch.zeros(b, s, dtype=torch.bool, device=rows.device)  # [B, S]
        levels: list[list[torch.Tensor]] = [[] for _ in range(self.deepstack_layers)]
        for i, t in enumerate(tokens):
            extra = t.lm_inputs
            if not extra:
                continue
            mask[i, :t.n_tokens] = extra["visual_pos_masks"][0].to(rows.device)
            for lvl, feat in enumerate(extra["deepstack_visual_embeds"]):
                levels[lvl].append(feat)
        if not bool(mask.any()):
            return {}
        return {"visual_pos_masks": mask, "deepstack_visual_embeds": [torch.cat(f, dim=0) for f in levels]}

    def _chunk_positions(self, ids: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """[3, S] positions HF gives this chunk alone, shifted to start at 0."""
        types = (ids == self.video_token_id).to(torch.int) * 2  # [1, S] 0 text, 2 video
        pos, _ = self.model.model.get_rope_index(ids, mm_token_type_ids=types, video_grid_thw=grid.unsqueeze(0))
        return (pos[:, 0] - pos[:, 0, :1]).contiguous()  # [3, S]

    # ---- reference ----------------------------------------------------------------------------
    @torch.inference_mode()
    def reference_logits(self, pieces: Sequence[Any]) -> torch.Tensor:
        """HF's own forward over the whole sequence (positions, DeepStack by HF) -> last logits [V] fp32."""
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
            kwargs = dict(pixel_values_videos=torch.cat(pixels, dim=0), video_grid_thw=torch.stack(grids))
        self.model.model.rope_deltas = None
        try:
            out = self.model(input_ids=input_ids, mm_token_type_ids=mm_types, use_cache=False, logits_to_keep=1,
                             **kwargs)
        finally:
            self.model.model.rope_deltas = None
        return out.logits[0, -1].float()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def random(cls, size: str, device: torch.device | str, dtype: torch.dtype, seed: int = 0,
               name: str | None = None, frame_size: int | None = None) -> "Qwen3VLAdapter":
        """Random weights: "tiny" (tests, offline tokenizer) or the published "2b" / "4b" / "8b" configs."""
        device = torch.device(device)
        if size == "tiny":
            tok = build_offline_tokenizer(QWEN_SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
            config = _tiny_config(tok)
            side = TINY_FRAME_SIZE
        elif size in _PUBLISHED:
            tok = real_id_tokenizer()
            config = published_config(size)
            side = DEFAULT_FRAME_SIZE
        else:
            raise ValueError(f"unknown Qwen3-VL size {size!r}; choose tiny, {', '.join(_PUBLISHED)}")
        torch.manual_seed(seed)
        with torch.device(device):
            model = Qwen3VLForConditionalGeneration._from_config(config, dtype=dtype)
        model.to(device=device, dtype=dtype)
        logger.info("built random Qwen3-VL %s on %s (%s)", size, device, dtype)
        return cls(model, tok, name=name or f"qwen3-vl-{size}-random", frame_size=frame_size,
                   default_frame_size=side, min_pixels=TINY_FRAME_SIZE ** 2 if size == "tiny" else QWEN3_MIN_PIXELS)

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: torch.device | str, dtype: torch.dtype,
                        frame_size: int | None = None, device_map: Any = None,
                        max_memory: dict | None = None, offload_folder: str | None = None) -> "Qwen3VLAdapter":
        """Load a real checkpoint; preprocessing values from its video_preprocessor_config.json."""
        from transformers import AutoTokenizer

        placement = placement_kwargs(device_map, max_memory, offload_folder)
        try:
            tok = AutoTokenizer.from_pretrained(name_or_path)
            model = Qwen3VLForConditionalGeneration.from_pretrained(name_or_path, dtype=dtype, **placement)
        except Exception as e:  # missing dir, no network, bad files: one line for the user
            raise ValueError(f"cannot load Qwen3-VL checkpoint {name_or_path!r}: {one_line(e)}; give a hub id or a "
                             f"local checkpoint directory, or use the tiny-qwen3-vl preset") from None
        if not placement:
            model.to(torch.device(device))
        pp = read_checkpoint_json(name_or_path, "video_preprocessor_config.json")
        if pp is None:
            pp = read_preprocessor_config(name_or_path)
        vc = model.config.vision_config
        factor = int(vc.patch_size) * int(vc.spatial_merge_size)
        return cls(model, tok, name=str(name_or_path), frame_size=frame_size,
                   default_frame_size=default_side(pp, DEFAULT_FRAME_SIZE, factor=factor, cap=DEFAULT_FRAME_SIZE),
                   image_mean=pp.get("image_mean", QWEN3_MEAN), image_std=pp.get("image_std", QWEN3_STD),
                   min_pixels=_min_pixels(pp, QWEN3_MIN_PIXELS))


def _tiny_config(tok) -> Qwen3VLConfig:
    """A tiny Qwen3-VL config (3 decoder layers, DeepStack into the first 2) with the offline tokenizer's ids."""
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    vocab = ((len(tok) + 63) // 64) * 64
    text = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, hidden_act="silu", max_position_embeddings=4096,
                rms_norm_eps=1e-6, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"], initializer_range=0.1,  # position errors must show in logits
                rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [4, 2, 2],
                                 "mrope_interleaved": True})
    vision = dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=64, hidden_act="gelu_pytorch_tanh",
                  in_channels=3, out_hidden_size=64, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                  num_position_embeddings=64, deepstack_visual_indexes=[0, 1], initializer_range=0.1)
    return Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                         video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                         vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)


def published_config(size: str) -> Qwen3VLConfig:
    """The published Qwen3-VL-{2B,4B,8B}-Instruct architecture with the real special token ids."""
    spec = _PUBLISHED[size]
    text = {**_PUBLISHED_TEXT, **spec["text"], "rope_parameters": dict(_PUBLISHED_TEXT["rope_parameters"])}
    vision = {**_PUBLISHED_VISION, **spec["vision"]}
    pos = {t: QWEN_FIRST_SPECIAL_ID + i for i, t in enumerate(QWEN_SPECIAL_TOKENS)}
    return Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=pos["<|image_pad|>"],
                         video_token_id=pos["<|video_pad|>"], vision_start_token_id=pos["<|vision_start|>"],
                         vision_end_token_id=pos["<|vision_end|>"], tie_word_embeddings=spec["tie_word_embeddings"])
