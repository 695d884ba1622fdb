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
from typing import Sequence

import numpy as np
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from vstream.models.base import Tokens
from vstream.models.qwen_vl import QwenVLAdapter

logger = logging.getLogger(__name__)

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
        vision=dict(out_hidden_size=2048), tie_word_embeddings=True),
    "7b": dict(
        text=dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                  intermediate_size=18944, vocab_size=152064, max_window_layers=28),
        vision=dict(out_hidden_size=3584), tie_word_embeddings=False),
}
_PUBLISHED_TEXT = dict(
    hidden_act="silu", max_position_embeddings=128000, rms_norm_eps=1e-6, sliding_window=32768,
    use_sliding_window=False, bos_token_id=151643, eos_token_id=151645,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
)
#: The tiny preset (2 decoder layers; initializer 0.1 so that position errors show in the logits).
_TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, hidden_act="silu", max_position_embeddings=4096, rms_norm_eps=1e-6,
                  initializer_range=0.1,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]})
_TINY_VISION = dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=64, hidden_act="silu", in_channels=3,
                    out_hidden_size=64, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                    fullatt_block_indexes=[1], tokens_per_second=2)


class Qwen25VLAdapter(QwenVLAdapter):
    """Qwen2.5-VL behind the adapter protocol (chunks are videos, positions are 3-D M-RoPE)."""

    family = "qwen2.5-vl"
    label = "Qwen2.5-VL"
    hf_class, config_class = Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig
    image_mean_default, image_std_default = CLIP_MEAN, CLIP_STD
    tiny_frame_size, min_pixels_default = TINY_FRAME_SIZE, DEFAULT_MIN_PIXELS
    tiny_text, tiny_vision = _TINY_TEXT, _TINY_VISION
    tiny_extra = dict(tie_word_embeddings=False, initializer_range=0.1)
    published, published_text, published_vision = _PUBLISHED, _PUBLISHED_TEXT, _PUBLISHED_VISION
    _warned_span = False  # set on the instance after the first span warning

    def chunk_ids(self, marker: str, grid_thw: torch.Tensor, n_frames: int | None = None) -> list[int]:
        """Token ids of a chunk: marker text, then vision start, one video pad per merged patch, vision end
        (``n_frames`` is not needed: the grid says it)."""
        n_vis = int(grid_thw.prod().item()) // (self.merge_size ** 2)
        return self.tokenize(marker) + [self.vision_start_id] + [self.video_token_id] * n_vis + [self.vision_end_id]

    def second_per_grid(self) -> float:
        """Seconds covered by one temporal patch of frames sampled at ``self.fps``."""
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}; set adapter.fps to the sampling rate")
        return self.temporal_patch_size / self.fps

    def video_kwargs(self, n_videos: int) -> dict:
        """Temporal position spacing of each video for HF's forward (``second_per_grid_ts`` [n_videos])."""
        return {"second_per_grid_ts": torch.tensor([self.second_per_grid()] * n_videos, device=self.device)}

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
