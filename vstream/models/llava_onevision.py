"""LLaVA-OneVision adapter (SigLIP vision tower + 2-layer projector + Qwen2 LM with 1-D RoPE).

A chunk is one *video* in LLaVA-OneVision's sense: the time-marker text followed by the video
placeholder token repeated once per pooled vision feature. Per frame the SigLIP tower (at its native
``image_size``) gives a G x G patch grid (27 x 27 at 384 px, patch 14); the projector maps it to the
LM width and 2x bilinear pooling shrinks it to ceil(G/2)^2 tokens (14 x 14 = 196). After the last
frame HF appends one ``image_newline`` token per video, so a chunk of N frames carries
N * ceil(G/2)^2 + 1 vision tokens. Positions are plain 1-D: appending a chunk to a cache is exact.

Frames are resized straight to ``image_size`` squared with PIL's bicubic (``resize.resize_frames``: Pillow on
CPU, its exact torch reproduction elsewhere), so pixel values equal HF's PIL processor's. Deliberate prompt
differences from the chat template (each chunk's marker before its video tokens, no newline after them) are listed
and measured in tests/test_parity_prompt.py.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (AutoTokenizer, LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                          SiglipVisionConfig)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vstream.models.base import (ModelAdapter, Tokens, one_line, placement_kwargs,
                                 read_checkpoint_json)
from vstream.models.resize import resize_frames
from vstream.models.tokenizer import build_offline_tokenizer

logger = logging.getLogger(__name__)

VIDEO_TOKEN = "<video>"
IMAGE_TOKEN = "<image>"
#: Special tokens of the LLaVA-OneVision (Qwen2) tokenizer, in their real order (ids 151643..151647).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN, VIDEO_TOKEN]
#: SigLIP normalisation used by the llava-hf checkpoints (preprocessor_config.json).
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)

# SigLIP-so400m-patch14-384 with its last layer dropped (as in the llava-hf conversion), no pooling head.
_SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
                      patch_size=14, image_size=384, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
                      vision_use_head=False)

#: Vision configs per random size. "tiny": 28 px / patch 4 -> 7 x 7 grid -> 4 x 4 pooled (odd grid, like 27 -> 14).
_VISION: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=4,
                 image_size=28, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=False),
    "small": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, patch_size=8,
                  image_size=56, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=False),
    "0.5b": _SIGLIP_SO400M,
    "7b": _SIGLIP_SO400M,
}

#: Qwen2 text configs per random size: llava-onevision-qwen2-{0.5b,7b}-ov-hf (Qwen2-{0.5B,7B}-Instruct with the
#: vocabulary grown by <image>, <video> and padded to a multiple of 64). "tiny" sets its vocab from the tokenizer.
_TEXT: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
                 initializer_range=0.1),  # larger than 0.02 so that position errors show in the logits
    # "small": a CPU benchmark size (8 layers, hidden 512): big enough that compute, not Python, dominates.
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=2, max_position_embeddings=131072, rms_norm_eps=1e-6,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False),
    "0.5b": dict(vocab_size=152000, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=True),
    "7b": dict(vocab_size=152128, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6,
               rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False),
}


class LlavaOneVisionAdapter(ModelAdapter):
    """LLaVA-OneVision (Qwen2 LM, 1-D RoPE); chunks are fed through HF's video path (pooled, + newline).

    ``frame_size`` is the square side in pixels that frames are resized to before the SigLIP tower. It must equal
    the tower's ``image_size`` (384 for the real checkpoints, 28 for "tiny"): SigLIP's position table and HF's
    pooling both assume that grid. None picks it.
    """

    family = "llava-onevision"
    pos_dims = 1

    def __init__(self, model: nn.Module, tokenizer: Any, *, name: str, frame_size: int | None = None,
                 image_mean: Sequence[float] = DEFAULT_MEAN, image_std: Sequence[float] = DEFAULT_STD) -> None:
        super().__init__(model, tokenizer, name=name, frame_size=frame_size)
        cfg = model.config
        vcfg = cfg.vision_config
        self.image_size = _side(vcfg.image_size)
        self.patch_size = _side(vcfg.patch_size)
        if frame_size is not None and int(frame_size) != self.image_size:
            raise ValueError(f"frame_size={frame_size} is not supported: LLaVA-OneVision's vision tower takes "
                             f"{self.image_size}px frames; leave frame_size unset")
        self.frame_size = self.image_size
        if cfg.vision_feature_select_strategy != "full":
            raise ValueError(f"vision_feature_select_strategy={cfg.vision_feature_select_strategy!r} is not supported "
                             f"for video; only 'full' (all SigLIP patches) is")
        layers = cfg.vision_feature_layer
        self.feature_layers: list[int] = [layers] if isinstance(layers, int) else list(layers)
        self.grid = self.image_size // self.patch_size  # G: patches per side
        self.pooled = math.ceil(self.grid / 2)  # pooled tokens per side
        self.tokens_per_frame = self.pooled * self.pooled
        self.video_token_id = int(cfg.video_token_id)
        video_token = getattr(tokenizer, "video_token", None) or VIDEO_TOKEN
        tok_id = tokenizer.convert_tokens_to_ids(video_token)
        if tok_id != self.video_token_id:
            raise ValueError(f"tokenizer id of {video_token} is {tok_id} but config.video_token_index is "
                             f"{self.video_token_id}; use the tokenizer saved with this checkpoint")
        if len(image_mean) != 3 or len(image_std) != 3 or min(image_std) <= 0:
            raise ValueError(f"image_mean/image_std must be 3 values (std > 0), got {image_mean} / {image_std}")
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)

    # ---- family hooks (language_model, lm_head, stop tokens: the base defaults fit) ------------
    def vision_tokens(self, n_frames: int) -> int:
        """Placeholder tokens for a chunk of n_frames frames (pooled features + one newline)."""
        return n_frames * self.tokens_per_frame + 1

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """[N, H, W, 3] uint8 -> [N, 3, S, S] normalised pixels in the model dtype on its device (S = frame_size)."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be [N, H, W, 3] uint8, got shape {frames.shape} dtype {frames.dtype}")
        n, h, w = frames.shape[:3]
        if n == 0 or h == 0 or w == 0:
            raise ValueError(f"frames must hold at least one non-empty frame, got shape {frames.shape}")
        s = self.frame_size
        # HF's processors resize straight to size x size (bicubic), no aspect-preserving crop; PIL's pixels
        x = resize_frames(frames, [(s, s)], "bicubic", self.device)  # [N, 3, S, S] in 0..1
        mean = torch.tensor(self.image_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.dtype)

    @torch.no_grad()
    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels [N, 3, S, S] -> video features [N * T + 1, D] (T pooled tokens per frame, then image_newline)."""
        lm = self.model.model
        tower = lm.vision_tower
        n_layers = len(tower.encoder.layers)
        idx = [i if i >= 0 else i + n_layers + 1 for i in self.feature_layers]  # into (embeddings, layer 1..L)
        if not all(0 <= i <= n_layers for i in idx):
            raise RuntimeError(f"vision_feature_layer {self.feature_layers} out of range for {n_layers} layers")
        h = tower.embeddings(pixels)  # [N, G*G, Dv]
        states = {0: h}
        for i, layer in enumerate(tower.encoder.layers[:max(idx)], start=1):
            h = layer(h, None)  # [N, G*G, Dv]; HF takes hidden states before post_layernorm
            states[i] = h
        feats = torch.cat([states[i] for i in idx], dim=-1)  # [N, G*G, Dv * len(idx)]
        feats = lm.multi_modal_projector(feats)  # [N, G*G, D]
        n, _, d = feats.shape
        g = self.grid
        grid = feats.view(n, g, g, d).permute(0, 3, 1, 2)  # [N, D, G, G]
        pooled = F.interpolate(grid, size=(self.pooled, self.pooled), mode="bilinear")  # [N, D, P, P]
        pooled = pooled.permute(0, 2, 3, 1).reshape(n * self.tokens_per_frame, d)  # [N*T, D]
        newline = lm.image_newline.to(pooled.dtype).view(1, d)  # [1, D]
        return torch.cat([pooled, newline], dim=0)  # [N*T + 1, D]

    @torch.no_grad()
    def embed_chunk(self, marker: str, frames: np.ndarray) -> Tokens:
        """Marker text + N * T + 1 video tokens; positions 0..S-1."""
        if not isinstance(marker, str):
            raise ValueError(f"marker must be a str, got {type(marker).__name__}")
        return self._video_tokens(marker, self.vision_features(self.preprocessed(frames)))  # features [V, D]

    def visual_cells(self, tokens: Tokens) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Frame i's pooled token j is cell j of frame i; the closing image_newline is never dropped."""
        vis = torch.nonzero(tokens.input_ids[0] == self.video_token_id).squeeze(1)[:-1]  # [N*T] newline excluded
        frame = torch.full((tokens.n_tokens,), -1, dtype=torch.long, device=tokens.input_ids.device)
        cell = frame.clone()
        k = torch.arange(vis.numel(), device=frame.device)
        frame[vis], cell[vis] = k // self.tokens_per_frame, k % self.tokens_per_frame
        return frame, cell, self.tokens_per_frame

    @torch.no_grad()
    def embed_chunks(self, chunks: Sequence[tuple[str, np.ndarray]]) -> list[Tokens]:
        """Several chunks with one SigLIP pass over all their frames (pooling is per frame: results are
        those of ``embed_chunk`` one by one)."""
        if not chunks:
            return []
        pixels = [self.preprocessed(frames) for _, frames in chunks]  # each [N_i, 3, S, S]
        feats = self.vision_features(torch.cat(pixels))[:-1]  # [sum N_i * T, D] (the one newline dropped)
        newline = self.model.model.image_newline.to(feats.dtype).view(1, -1)  # [1, D]
        out, at = [], 0
        for (marker, _), px in zip(chunks, pixels):
            n = px.shape[0] * self.tokens_per_frame
            out.append(self._video_tokens(marker, torch.cat([feats[at:at + n], newline])))  # [N_i * T + 1, D]
            at += n
        return out

    def _video_tokens(self, marker: str, feats: torch.Tensor) -> Tokens:
        """Tokens of a chunk from its video features [V, D] (marker text first); positions 0..S-1."""
        if not isinstance(marker, str):
            raise ValueError(f"marker must be a str, got {type(marker).__name__}")
        text_ids = torch.tensor(self.tokenize(marker), dtype=torch.long, device=self.device)  # [St]
        vis_ids = torch.full((feats.shape[0],), self.video_token_id, dtype=torch.long, device=self.device)  # [V]
        ids = torch.cat([text_ids, vis_ids]).unsqueeze(0)  # [1, S]
        text_emb = self.language_model().embed_tokens(text_ids.unsqueeze(0))  # [1, St, D]
        emb = torch.cat([text_emb, feats.unsqueeze(0).to(text_emb.dtype)], dim=1)  # [1, S, D]
        rel = torch.arange(ids.shape[1], device=self.device).unsqueeze(0)  # [1, S]
        return Tokens(input_ids=ids, inputs_embeds=emb, rel_pos=rel, n_vision=int(feats.shape[0]))

    @torch.no_grad()
    def reference_logits(self, pieces: Sequence[Any]) -> torch.Tensor:
        """HF's own forward over the whole sequence (no cache, HF positions); last logits [V] fp32."""
        ids: list[int] = []
        videos: list[torch.Tensor] = []  # each [N, 3, S, S]
        for piece in pieces:
            if isinstance(piece, str):
                ids += self.tokenize(piece)
            elif isinstance(piece, tuple) and len(piece) == 2:
                marker, frames = piece
                px = self.preprocess(frames)
                ids += self.tokenize(marker) + [self.video_token_id] * self.vision_tokens(px.shape[0])
                videos.append(px)
            else:
                raise ValueError(f"pieces must be str or (marker, frames) tuples, got {type(piece).__name__}")
        if not ids:
            raise ValueError("reference_logits needs at least one token")
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)  # [1, L]
        kwargs: dict[str, Any] = {}
        if videos and len({v.shape[0] for v in videos}) == 1:
            kwargs["pixel_values_videos"] = torch.stack(videos)  # [n_videos, N, 3, S, S]
        elif videos:  # HF batches videos of one length only; encode each with HF and hand the features over
            feats = [self.model.model.get_video_features(pixel_values_videos=v.unsqueeze(0)).pooler_output
                     for v in videos]  # each [1, N_i * T + 1, D]
            kwargs["mm_encoder_outputs"] = {"video": BaseModelOutputWithPooling(pooler_output=torch.cat(feats, 1))}
        out = self.model(input_ids=input_ids, use_cache=False, **kwargs)
        return out.logits[0, -1].float()  # [V]

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def random(cls, size: str = "tiny", device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               seed: int = 0, name: str | None = None, frame_size: int | None = None) -> "LlavaOneVisionAdapter":
        """Random weights in a real architecture: "tiny" for tests, "0.5b" / "7b" = published configs (timing)."""
        if size not in _TEXT:
            raise ValueError(f"unknown LLaVA-OneVision size {size!r}; choose one of {', '.join(_TEXT)}")
        tok = build_offline_tokenizer(SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        tid = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        text_kw = dict(_TEXT[size])
        text_kw.setdefault("vocab_size", -(-len(tok) // 64) * 64)
        if text_kw["vocab_size"] < len(tok):
            raise RuntimeError(f"vocab_size {text_kw['vocab_size']} < tokenizer size {len(tok)}")
        text_cfg = Qwen2Config(**text_kw, bos_token_id=tid["<|endoftext|>"], eos_token_id=tid["<|im_end|>"],
                               pad_token_id=tid["<|endoftext|>"])
        config = LlavaOnevisionConfig(text_config=text_cfg, vision_config=SiglipVisionConfig(**_VISION[size]),
                                      image_token_index=tid[IMAGE_TOKEN], video_token_index=tid[VIDEO_TOKEN],
                                      vision_feature_layer=-1, vision_feature_select_strategy="full",
                                      tie_word_embeddings=text_kw["tie_word_embeddings"])
        torch.manual_seed(seed)
        with torch.device(device):
            model = LlavaOnevisionForConditionalGeneration._from_config(config, dtype=dtype)
        logger.info("built random LLaVA-OneVision %s on %s (%s)", size, device, dtype)
        return cls(model, tok, name=name or f"llava-onevision-{size}-random", frame_size=frame_size)

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, frame_size: int | None = None, device_map: Any = None,
                        max_memory: dict | None = None, offload_folder: str | None = None) -> "LlavaOneVisionAdapter":
        """Load a real checkpoint (hub id or local directory); mean/std from its preprocessor config.

        ``device_map`` / ``max_memory`` / ``offload_folder``: accelerate's placement; else the model goes to ``device``.
        """
        path = str(name_or_path)
        if not os.path.isdir(path) and (os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1):
            raise ValueError(f"LLaVA-OneVision checkpoint directory {path!r} does not exist; give a hub id or a "
                             f"local checkpoint directory")
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"{path!r} holds no config.json; point to a saved LLaVA-OneVision checkpoint directory")
        try:
            tok = AutoTokenizer.from_pretrained(path)
            model = LlavaOnevisionForConditionalGeneration.from_pretrained(
                path, dtype=dtype, **placement_kwargs(device_map, max_memory, offload_folder))
        except Exception as e:  # missing files, bad json, network: one line for the user
            raise ValueError(f"cannot load LLaVA-OneVision checkpoint {path!r}: {one_line(e)}") from None
        if device_map is None:
            model.to(device)
        mean, std = _read_norm(path)
        return cls(model, tok, name=path, frame_size=frame_size, image_mean=mean, image_std=std)


def _side(v: Any) -> int:
    """image_size / patch_size may be an int or a (h, w) pair; LLaVA-OneVision needs square."""
    if isinstance(v, (list, tuple)):
        if len(v) != 2 or v[0] != v[1]:
            raise ValueError(f"non-square vision size {v} is not supported")
        v = v[0]
    return int(v)


def _read_norm(path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """image_mean / image_std of the checkpoint's video (else image) processor; 0.5 / 0.5 when absent."""
    candidates = [("video_preprocessor_config.json", None), ("processor_config.json", "video_processor"),
                  ("preprocessor_config.json", None), ("processor_config.json", "image_processor")]
    for filename, key in candidates:
        data = read_checkpoint_json(path, filename)
        if data is not None and key is not None:
            data = data.get(key)
        if isinstance(data, dict) and data.get("image_mean") is not None and data.get("image_std") is not None:
            mean, std = data["image_mean"], data["image_std"]
            if isinstance(mean, (int, float)):
                mean = [mean] * 3
            if isinstance(std, (int, float)):
                std = [std] * 3
            logger.debug("normalisation from %s: mean %s std %s", filename, mean, std)
            return tuple(float(m) for m in mean), tuple(float(s) for s in std)
    logger.warning("no image_mean/image_std found for %s; using %s / %s", path, DEFAULT_MEAN, DEFAULT_STD)
    return DEFAULT_MEAN, DEFAULT_STD
