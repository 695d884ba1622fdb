"""Qwen3-VL adapter: interleaved M-RoPE, DeepStack visual features, textual timestamps.

A chunk is one video in Qwen3-VL's own layout (what ``Qwen3VLProcessor`` writes for a video): per
temporal patch of 2 frames, its time as text, then the patch's visual tokens::

    <{t:.1f} seconds><|vision_start|><|video_pad|> * n<|vision_end|>   (once per temporal patch)

``t`` is the mean time of the patch's two frames, taken from the chunk's ``Time=a-bs`` marker with the
frames spread evenly over [a, b) (the processor's ``_calculate_timestamps`` on the sampled frame times).
The marker text itself is not fed: the timestamps carry the time in the format the model was trained on.
Clock markers (``memory.time_marker = "clock"``) therefore do not apply: the timestamps stay in stream
seconds (``chunk_marker``), the format of the processor; the stored entry text still carries the clock.

Positions: each temporal patch is its own visual group (transformers splits ``video_grid_thw`` per
frame); its tokens sit at (start, start + row, start + col) and the text after it resumes at
start + max(rows, cols). The positions of a chunk alone, shifted by the chunk's start, are exactly its
positions inside the whole sequence (HF's ``get_rope_index``), and every section of the interleaved
M-RoPE moves by the same delta, so delta rotation of cached keys stays exact.

DeepStack: the vision tower also returns features from some of its layers; HF adds them to the hidden
states of the visual tokens after the first ``len(deepstack_visual_indexes)`` decoder layers. They
are per-token additions, so a chunk's features travel with its ``Tokens.lm_inputs`` and are added when
that chunk is prefilled; the cached K/V then equal HF's full forward.

Preprocessing, HF's full forward and construction are the Qwen-VL base's (``vstream.models.qwen_vl``): the
Qwen resize rule under a per-frame pixel budget, PIL-exact bicubic resize, mean/std 0.5 (the published
video_preprocessor_config.json), patch 16.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from vstream.models.base import Tokens
from vstream.models.qwen_vl import QwenVLAdapter

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


#: The tiny preset (3 decoder layers, DeepStack into the first 2; initializer 0.1 so that position errors show).
_TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, hidden_act="silu", max_position_embeddings=4096,
                  rms_norm_eps=1e-6, initializer_range=0.1,
                  rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [4, 2, 2],
                                   "mrope_interleaved": True})
_TINY_VISION = dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=64, hidden_act="gelu_pytorch_tanh",
                    in_channels=3, out_hidden_size=64, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                    num_position_embeddings=64, deepstack_visual_indexes=[0, 1], initializer_range=0.1)


class Qwen3VLAdapter(QwenVLAdapter):
    """Qwen3-VL behind the adapter protocol (the Qwen-VL base's preprocessing; own chunk layout, DeepStack)."""

    family = "qwen3-vl"
    label = "Qwen3-VL"
    hf_class, config_class = Qwen3VLForConditionalGeneration, Qwen3VLConfig
    image_mean_default, image_std_default = QWEN3_MEAN, QWEN3_STD
    tiny_frame_size, min_pixels_default = TINY_FRAME_SIZE, QWEN3_MIN_PIXELS
    tiny_text, tiny_vision, tiny_extra = _TINY_TEXT, _TINY_VISION, dict(tie_word_embeddings=False)
    published, published_text, published_vision = _PUBLISHED, _PUBLISHED_TEXT, _PUBLISHED_VISION
    preprocessor_files = ("video_preprocessor_config.json", "preprocessor_config.json")

    def chunk_marker(self, chunk: Any) -> str:
        """Always the stream-time form: the per-patch ``<t seconds>`` timestamps are read from it."""
        from vstream.clock import time_marker

        return time_marker(chunk.start_s, chunk.end_s)

    def __init__(self, model: nn.Module, tokenizer: Any, **kwargs: Any) -> None:
        """As ``QwenVLAdapter`` (keyword arguments: name, frame_size, default_frame_size, image_mean,
        image_std, fps, min_pixels); checks the DeepStack levels against the decoder layers."""
        super().__init__(model, tokenizer, **kwargs)
        self.deepstack_layers = len(model.config.vision_config.deepstack_visual_indexes)
        if self.deepstack_layers > self.num_layers:
            raise ValueError(f"{self.deepstack_layers} DeepStack levels for {self.num_layers} decoder layers")

    # ---- chunks -------------------------------------------------------------------------------
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
