"""Differential token drop: skip visual tokens that repeat the same grid cell of the previous frame.

A fixed camera or a slide on screen sends nearly the same picture every second. After the projector
(the visual tokens in the LLM's embedding space, before the LLM), each frame's token at grid cell ``c``
is compared (cosine similarity) with the last *kept* token at the same cell of an earlier frame (in this
chunk or an earlier one: the reference survives chunk boundaries). A token whose similarity is above
the threshold is redundant and is not prefilled. The kept tokens keep their original positions (for
M-RoPE their t, h and w ids), so the chunk's segment has gaps in ``rel_pos`` and occupies the same span
as without dropping; re-indexing after an eviction moves it as a block like any other segment.

Rules, per chunk:
- frames are taken in order; a token is dropped when ``cos(token, reference[cell]) > threshold``; a
  kept token becomes its cell's reference (so slow drift is caught once it adds up past the threshold);
- a cell with no reference yet (the stream's first frame, a change of grid size) keeps its token;
- the floor: at least ``ceil(floor * n_visual)`` (and at least 1) visual tokens per chunk are kept;
  when fewer pass, the dropped tokens least similar to their reference are added back (they become
  their cells' references too);
- tokens that are not frame-grid tokens (text, time markers, separators, LLaVA's newline) are always
  kept. Cosine similarity is clamped to [-1, 1], so ``threshold = 1.0`` never drops anything.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DropResult:
    """What :meth:`TokenDrop.keep` decided for one chunk."""

    keep: torch.Tensor  # [S] bool over the chunk's tokens (True: prefill it)
    kept: int  # visual (grid) tokens kept
    dropped: int  # visual (grid) tokens dropped


class TokenDrop:
    """Per-stream reference tokens (the last kept token of every grid cell) and one verb, ``keep``."""

    def __init__(self, threshold: float, floor: float = 0.1) -> None:
        if not -1.0 <= float(threshold) <= 1.0:
            raise ValueError(f"token-drop threshold must be a cosine similarity in [-1, 1], got {threshold}; "
                             f"e.g. 0.9 (1.0 drops nothing)")
        if not 0.0 <= float(floor) <= 1.0:
            raise ValueError(f"token-drop floor must be a fraction in [0, 1], got {floor}")
        self.threshold = float(threshold)
        self.floor = float(floor)
        self._ref: dict[str, torch.Tensor] = {}  # stream -> [C, D] fp32 reference token per cell
        self._have: dict[str, torch.Tensor] = {}  # stream -> [C] bool: the cell has a reference

    def reset(self, stream: str = "") -> None:
        """Forget a stream's reference frame (its next frame keeps every token)."""
        self._ref.pop(stream, None)
        self._have.pop(stream, None)

    def keep(self, embeds: torch.Tensor, frame: torch.Tensor, cell: torch.Tensor, n_cells: int,
             stream: str = "") -> DropResult:
        """Decide which tokens of one chunk to prefill.

        embeds: [S, D] the chunk's LLM inputs; frame, cell: [S] int64 frame index within the chunk and
        grid cell (0..n_cells-1) of every frame-grid token, -1 for tokens that are always kept.
        """
        if embeds.dim() != 2 or frame.shape != (embeds.shape[0],) or cell.shape != frame.shape:
            raise ValueError(f"embeds must be [S, D] and frame/cell [S]; got {tuple(embeds.shape)}, "
                             f"{tuple(frame.shape)}, {tuple(cell.shape)}")
        dev = embeds.device
        keep = torch.ones(embeds.shape[0], dtype=torch.bool, device=dev)  # [S]
        grid = cell >= 0  # [S]
        n_vis = int(grid.sum().item())
        if n_vis == 0:
            return DropResult(keep=keep, kept=0, dropped=0)
        if int(cell.max().item()) >= n_cells:
            raise RuntimeError(f"grid cell {int(cell.max())} out of range for {n_cells} cells")
        d = embeds.shape[1]
        ref, have = self._ref.get(stream), self._have.get(stream)
        if ref is None or ref.shape != (n_cells, d) or ref.device != dev:
            if ref is not None:
                logger.info("token drop: grid changed to %d cells; the next frame keeps every token", n_cells)
            ref = torch.zeros(n_cells, d, dtype=torch.float32, device=dev)
            have = torch.zeros(n_cells, dtype=torch.bool, device=dev)
        ref, have = ref.clone(), have.clone()
        sim = torch.full((embeds.shape[0],), -2.0, device=dev)  # [S] similarity to the reference at decision time
        x = embeds.float()
        for f in torch.unique(frame[grid]).tolist():  # frames in order
            idx = torch.nonzero(grid & (frame == f)).squeeze(1)  # [n] token indices of frame f
            c = cell[idx]  # [n]
            cos = torch.nn.functional.cosine_similarity(x[idx], ref[c], dim=-1).clamp_(-1.0, 1.0)  # [n]
            cos = torch.where(have[c], cos, torch.full_like(cos, -2.0))  # no reference: always kept
            sim[idx] = cos
            drop = cos > self.threshold
            keep[idx[drop]] = False
            k = idx[~drop]
            ref[cell[k]] = x[k]
            have[cell[k]] = True
        n_keep = int(keep[grid].sum().item())
        need = max(1, math.ceil(self.floor * n_vis)) - n_keep
        if need > 0:
            cand = torch.nonzero(grid & ~keep).squeeze(1)  # dropped tokens, least similar first
            add = cand[torch.argsort(sim[cand], stable=True)[:need]]
            keep[add] = True
            for i in sorted(add.tolist(), key=lambda i: int(frame[i])):  # a later frame's token wins its cell
                later = grid & keep & (cell == cell[i]) & (frame > frame[i])
                if not bool(later.any()):
                    ref[cell[i]] = x[i]
            n_keep = int(keep[grid].sum().item())
        self._ref[stream], self._have[stream] = ref, have
        return DropResult(keep=keep, kept=n_keep, dropped=n_vis - n_keep)


def token_drop_for(adapter, threshold: float | None, floor: float) -> TokenDrop | None:
    """A TokenDrop for ``adapter`` (None when ``threshold`` is None); ValueError when its family has no grid."""
    if threshold is None:
        return None
    if not adapter.supports_token_drop():
        raise ValueError(f"token drop is not supported for the {adapter.family} family; "
                         f"leave memory.token_drop unset (no --token-drop)")
    return TokenDrop(threshold, floor)


def drop_chunk_tokens(adapter, td: TokenDrop | None, tokens, stream: str = ""):
    """Apply ``td`` to one chunk's ``Tokens``: (tokens to prefill, visual tokens dropped, keep mask or None)."""
    if td is None:
        return tokens, 0, None
    frame, cell, n_cells = adapter.visual_cells(tokens)
    res = td.keep(tokens.inputs_embeds[0], frame, cell, n_cells, stream=stream)
    return tokens.select(res.keep), res.dropped, res.keep
