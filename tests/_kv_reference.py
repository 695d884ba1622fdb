"""Slow, obviously-correct references for the engine's KV cache (shared by the equivalence tests).

- ``Recorder`` keeps every prefill's raw K/V and the position ids it ran at (the engine's forward calls).
- ``Span`` is a run of recorded tokens: keys/values per layer [1, H, n, D] and positions [P, n].
- ``place`` puts spans back to back from a start position, re-rotating every key with the model's own
  RoPE tables (the HF rotary module's cos/sin: undo at the recorded positions, apply at the new ones);
  never with the engine's rotation function.
- ``expected_layout`` says which tokens the active context must hold, from the configuration alone.
- ``full_forward`` is the HF model's own forward over a whole sequence (logits and its cache);
  ``ids_as_text`` lets token ids (decoded or replayed commentary) be one of its pieces.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from memory.manager import fill_cache
from vstream.models.base import rotate_half

TOL = 1e-4


@dataclass
class Span:
    keys: list[torch.Tensor]  # per layer [1, H, n, D], post-RoPE at ``pos``
    values: list[torch.Tensor]  # per layer [1, H, n, D]
    pos: torch.Tensor  # [P, n] the positions the tokens ran at

    @property
    def n(self) -> int:
        return int(self.pos.shape[1])

    def __getitem__(self, sl: slice) -> "Span":
        return Span([k[:, :, sl] for k in self.keys], [v[:, :, sl] for v in self.values], self.pos[:, sl])


def cat(spans: list[Span]) -> Span:
    spans = [s for s in spans if s.n]
    L = len(spans[0].keys)
    return Span([torch.cat([s.keys[l] for s in spans], dim=-2) for l in range(L)],
                [torch.cat([s.values[l] for s in spans], dim=-2) for l in range(L)],
                torch.cat([s.pos for s in spans], dim=1))


class Recorder:
    """Wraps adapter.forward to keep every prefill's raw K/V and the position ids it ran at."""

    def __init__(self, adapter) -> None:
        self.adapter = adapter
        self.records: list[Span] = []
        self._orig = adapter.forward

        def forward(inputs_embeds, position_ids, cache, logits="last", **lm_inputs):
            out = self._orig(inputs_embeds, position_ids, cache, logits, **lm_inputs)
            n = inputs_embeds.shape[1]
            self.records.append(Span([l.keys[:, :, -n:].clone() for l in cache.layers],
                                     [l.values[:, :, -n:].clone() for l in cache.layers],
                                     position_ids.reshape(position_ids.shape[0], -1).clone()))
            return out

        adapter.forward = forward

    @contextlib.contextmanager
    def take(self, out: list):
        """Collect the tokens of the prefills run inside the block as one Span appended to ``out``."""
        n0 = len(self.records)
        yield
        out.append(cat(self.records[n0:]))

    def close(self) -> None:
        del self.adapter.forward  # back to the class method


def cos_sin(adapter, pos: torch.Tensor):
    """The model's own RoPE tables at positions [P, n] -> cos, sin [1, 1, n, D]."""
    dummy = torch.zeros(1, dtype=torch.float32)
    position_ids = adapter.position_ids(pos, 0)  # the layout the language model takes
    cos, sin = adapter.rotary()(dummy, position_ids)  # [1, n, D]
    return cos.unsqueeze(1), sin.unsqueeze(1)


def reposition(adapter, keys: torch.Tensor, old_pos: torch.Tensor, new_pos: torch.Tensor) -> torch.Tensor:
    """Undo the model's RoPE at old_pos, apply it at new_pos (keys [1, H, n, D], positions [P, n])."""
    cos, sin = cos_sin(adapter, old_pos)
    raw = keys * cos - rotate_half(keys) * sin  # rotation by -theta
    cos2, sin2 = cos_sin(adapter, new_pos)
    return raw * cos2 + rotate_half(raw) * sin2


def place(adapter, parts: list[tuple[Span, str]], start: int = 0):
    """Spans back to back from ``start``: "text" spans take one position per token, "vision" spans keep
    their recorded relative positions. Returns per-layer keys, values and the next free position."""
    L = adapter.num_layers
    ks, vs = [[] for _ in range(L)], [[] for _ in range(L)]
    for span, how in parts:
        if how == "text":
            rel = torch.arange(span.n).unsqueeze(0).expand(span.pos.shape[0], -1)
        else:
            rel = span.pos - span.pos[:, :1]
        new = rel + start
        for l in range(L):
            ks[l].append(reposition(adapter, span.keys[l], span.pos, new))
            vs[l].append(span.values[l])
        start += int(rel.max().item()) + 1
    return [torch.cat(k, dim=-2) for k in ks], [torch.cat(v, dim=-2) for v in vs], start


def question_on(adapter, keys, values, start: int, question_text: str):
    """The question turn prefilled on a reference context: (cache incl. the question, logits [1, V])."""
    cache = fill_cache(adapter.new_cache(), keys, values)
    tokens = adapter.embed_text(question_text)
    logits = adapter.forward(tokens.inputs_embeds, adapter.position_ids(tokens.rel_pos, start), cache)
    return cache, logits


@contextlib.contextmanager
def ids_as_text(adapter, table: dict[str, list[int]]):
    """Inside the block, ``adapter.tokenize(key)`` returns ``table[key]`` (exact token ids as a piece)."""
    orig = adapter.tokenize

    def tokenize(text):
        return list(table[text]) if text in table else orig(text)

    adapter.tokenize = tokenize
    try:
        yield
    finally:
        del adapter.tokenize


def full_forward(adapter, pieces: list):
    """The HF model's own forward over the whole sequence: (last logits [V], its DynamicCache)."""
    model = adapter.model
    got = {}
    orig = model.forward

    def forward(*args, **kw):
        kw["use_cache"] = True
        out = orig(*args, **kw)
        got["cache"] = out.past_key_values
        return out

    model.forward = forward
    try:
        logits = adapter.reference_logits(pieces)
    finally:
        del model.forward
    return logits, got["cache"]


def expected_layout(prev_first: Span, items: list, W: int, TW: int, HEAD: int, TAIL: int):
    """The expected active context, computed from the configuration alone.

    prev_first: the caller's previous text (may be an empty span); items: ("vision" | "text", Span) in
    stream order. Returns (head, tail, live [(Span, "text" | "vision")], evicted vision item indices, all
    text that left). Vision: the last W chunks stay. Text: the newest turns whose
    tokens fit in TW stay; all older text left, in stream order, after the caller's previous text; the
    previous-text block is its first HEAD tokens and the last TAIL tokens of the rest.
    """
    vision = [i for i, (k, _) in enumerate(items) if k == "vision"]
    texts = [i for i, (k, _) in enumerate(items) if k == "text"]
    keep_v = set(vision[-W:])
    keep_t, used = set(), 0
    for i in reversed(texts):
        if used + items[i][1].n > TW:
            break
        used += items[i][1].n
        keep_t.add(i)
    left = cat([prev_first] + [items[i][1] for i in texts if i not in keep_t])
    head, rest = left[:HEAD], left[HEAD:]
    tail = rest[max(0, rest.n - TAIL):]
    live = [(items[i][1], items[i][0]) for i in range(len(items)) if i in keep_v or i in keep_t]
    evicted_vision = [i for i in vision if i not in keep_v]
    return head, tail, live, evicted_vision, left


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return (a.float() - b.float()).abs().max().item()


def assert_window_placed(mm, adapter, parts: list[tuple[Span, str]], name: str):
    """``mm``'s active cache equals ``place(adapter, parts)``: the same next position, keys within ``TOL``,
    values exactly. Returns the reference ``(keys, values, next_pos)``."""
    keys, values, next_pos = place(adapter, parts)
    assert mm.next_pos == next_pos, (name, "next position")
    for l in range(adapter.num_layers):
        assert max_diff(mm.cache.layers[l].keys, keys[l]) <= TOL, (name, "keys", l)
        assert torch.equal(mm.cache.layers[l].values, values[l]), (name, "values", l)
    return keys, values, next_pos
