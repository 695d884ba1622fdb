"""Text in memory against the model, per family (fp32, CPU, tiny presets, tolerance 1e-4).

Text segments are proven the way vision chunks are (tests/test_engine_equivalence.py):

1. Nothing evicted: the caller's previous text, ``add_text``, commentary turns (replayed as token ids,
   replayed as text, and decoded) and a multi-turn question/answer give, chunk by chunk, the cache and
   the question's logits of the HF model's own forward over the whole sequence; every decoded word is
   the reference's greedy choice.
2. After text eviction: the previous-text block holds the first HEAD and the last TAIL tokens of all text
   that left the window (both ends cut inside a turn), and the cache equals a reference built from the
   recorded K/V of every token, re-rotated with the model's own RoPE tables to the contiguous layout
   ``| sinks | previous text head | tail | live |``; the question's logits match.
3. All of it with retrieved long-term entries in one context:
   ``| sinks | previous text | retrieved (chronological) | live | question |``.
"""
from __future__ import annotations

import pytest

from _kv_reference import (TOL, Recorder, assert_window_placed, expected_layout, full_forward, ids_as_text, max_diff,
                           place, question_on)
from conftest import TINY_PRESETS, make_chunks, tiny_adapter
from memory.segment import TEXT, VISION
from vstream.config import from_name
from memory.types import Retrieved
from vstream.engine.core import Engine

QUESTION = "What happened in the video?"
PREV = "Earlier on this stream: the host said hello and showed a title card."
NOTE = "Note: the speaker mentioned the red square."


def _engine(adapter, window: int, text_tokens: int, head: int = 32, tail: int = 32, decode: str = "dynamic") -> Engine:
    cfg = from_name("tiny").replace(**{"memory.window_chunks": window, "memory.long_term": False,
                                       "memory.text_window_tokens": text_tokens, "memory.prev_text_head": head,
                                       "memory.prev_text_tail": tail, "generation.temperature": 0.0,
                                       "generation.decode": decode})
    return Engine(adapter, cfg)


def _no_stop(monkeypatch, adapter) -> None:
    """Decoded commentary of this adapter instance uses its whole budget (no early stop token)."""
    cls = type(adapter)
    sub = type(f"{cls.__name__}NoStop", (cls,), {"eos_token_ids": property(lambda self: [])})
    monkeypatch.setattr(adapter, "__class__", sub)


@pytest.mark.parametrize("decode", ["dynamic", "static"])  # static: fixed-shape steps (CUDA graphs on a GPU)
@pytest.mark.parametrize("name", TINY_PRESETS)
def test_text_turns_equal_full_forward(name, decode, monkeypatch):
    a = tiny_adapter(name)
    _no_stop(monkeypatch, a)
    eng = _engine(a, window=100, text_tokens=4096, head=4096, tail=0, decode=decode)
    chunks = make_chunks(4, frames=2, seed=21)
    open_t, close_t = a.commentary_open_text(), a.answer_close_text()
    replay_ids = a.tokenize(" The red square moves left.")
    eng.start(PREV)
    pieces: list = [a.system_text(eng.config.system_prompt), PREV]
    table: dict[str, list[int]] = {}

    def ids_piece(ids) -> str:
        key = f"\x00ids{len(table)}\x00"
        table[key] = list(ids)
        return key

    eng.ingest(chunks[0])
    eng.add_text(NOTE)
    pieces += [(chunks[0].marker, chunks[0].frames), NOTE]
    eng.ingest(chunks[1])
    item = eng.commentary(chunks[1], 4, replay=replay_ids)  # replayed token ids
    assert item.token_ids == replay_ids
    pieces += [(chunks[1].marker, chunks[1].frames), open_t, ids_piece(replay_ids), close_t]
    eng.ingest(chunks[2])
    item = eng.commentary(chunks[2], 3)  # decoded
    assert len(item.token_ids) == 3
    before_words = pieces + [(chunks[2].marker, chunks[2].frames), open_t]
    pieces = before_words + [ids_piece(item.token_ids), close_t]
    q1 = "What colour is the square?"
    ans = eng.answer(q1, eng.snapshot(), max_new_tokens=3)
    turn = a.question_text(q1) + ans.text + close_t  # what a session keeps for multi-turn
    eng.add_text(turn)
    pieces.append(turn)
    eng.ingest(chunks[3])
    eng.commentary(chunks[3], 4, replay="A circle appears.")  # replayed text
    pieces += [(chunks[3].marker, chunks[3].frames), open_t, "A circle appears.", close_t]
    cache, _, logits, _, _ = eng.prepare(QUESTION, eng.snapshot())
    with ids_as_text(a, table):
        ref, ref_cache = full_forward(a, pieces + [a.question_text(QUESTION)])
        for j, tok in enumerate(item.token_ids):  # decoding is the reference's greedy choice, word by word
            step = a.reference_logits(before_words + ([ids_piece(item.token_ids[:j])] if j else []))
            assert int(step.argmax()) == tok, f"{name}: decoded word {j} is not the model's greedy choice"
        assert max_diff(logits[0], ref) <= TOL, f"{name}: question logits differ from the full forward"
        n = cache.layers[0].keys.shape[-2]
        for l in range(a.num_layers):
            assert max_diff(cache.layers[l].keys, ref_cache.layers[l].keys[:, :, :n]) <= TOL, (name, l)
            assert max_diff(cache.layers[l].values, ref_cache.layers[l].values[:, :, :n]) <= TOL, (name, l)
        # the comparison can fail: without the note (one add_text) the reference moves
        other = a.reference_logits([p for p in pieces if p is not NOTE] + [a.question_text(QUESTION)])
    assert max_diff(other, ref) > 100 * TOL


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_previous_text_and_retrieval_equal_reference(name, monkeypatch):
    a = tiny_adapter(name)
    _no_stop(monkeypatch, a)
    W, TW, HEAD, TAIL = 2, 24, 20, 18
    eng = _engine(a, window=W, text_tokens=TW, head=HEAD, tail=TAIL)
    evicted = []
    eng.memory.on_evict = evicted.append
    chunks = make_chunks(7, frames=2, seed=22)
    rec = Recorder(a)
    items = []
    try:
        eng.start("Before: a title card.")  # two prefills: the sinks, the caller's text (into the block)
        sinks, prev_first = rec.records
        for ch in chunks:
            spans = []
            with rec.take(spans):
                eng.ingest(ch)
            items.append((VISION, spans[0]))
            spans = []
            with rec.take(spans):
                if ch.index % 3 == 0:
                    eng.add_text(f"note {ch.index}: {NOTE}")
                elif ch.index % 3 == 1:
                    eng.commentary(ch, 4, replay="Some replayed words here.")
                else:
                    eng.commentary(ch, 3)  # decoded, K/V kept from decoding
            items.append((TEXT, spans[0]))
    finally:
        rec.close()
    head, tail, live, ev_idx, left = expected_layout(prev_first, items, W, TW, HEAD, TAIL)
    mm = eng.memory
    # the case is the interesting one: both ends of the block are cut inside a turn
    assert left.n > HEAD + TAIL and mm.prev_head.n_tokens == HEAD and mm.prev_tail.n_tokens == TAIL
    assert [s.kind for s in mm.live] == [how for _, how in live]
    keys, values, next_pos = assert_window_placed(mm, a, [(sinks, "text"), (head, "text"), (tail, "text")] + live,
                                                  name)
    cache, _, logits, _, _ = eng.prepare(QUESTION, eng.snapshot())
    ref_cache, ref = question_on(a, keys, values, next_pos, a.question_text(QUESTION))
    assert max_diff(logits, ref) <= TOL, f"{name}: question logits after text eviction"
    # the reference sees the order of the block: head and tail swapped is detectably different
    swapped, sw_values, _ = place(a, [(sinks, "text"), (tail, "text"), (head, "text")] + live)
    _, ref_sw = question_on(a, swapped, sw_values, next_pos, a.question_text(QUESTION))
    assert max_diff(ref_sw, ref) > 10 * TOL

    # 3. with retrieved long-term entries (given out of order: assembly sorts them by time)
    evicted = [s for s in evicted if s.kind == VISION]  # (evicted text goes to long-term memory too)
    assert [s.chunk_index for s in evicted] == [i // 2 for i in ev_idx]  # items alternate chunk, text
    pick = [evicted[3], evicted[0], evicted[2]]
    forced = [Retrieved(segment=s, score=1.0, entry_id=i) for i, s in enumerate(pick)]
    cache, pos, logits, used, _ = eng.prepare(QUESTION, eng.snapshot(), retrieved=forced)
    assert len(used) == 3
    retrieved = [(items[ev_idx[j]][1], "vision") for j in (0, 2, 3)]
    block = [(sinks, "text"), (head, "text"), (tail, "text")]
    keys, values, next_pos = place(a, block + retrieved + live)
    _, ref = question_on(a, keys, values, next_pos, a.question_text(QUESTION))
    assert max_diff(logits, ref) <= TOL, f"{name}: question logits with retrieved entries"
    # the cache itself: the manager moves the origin back by the retrieved span R (RoPE sees only
    # differences), so the same reference placed from -R must equal it token by token, question included
    r_span = sum(s.span for s in pick)
    keys0, values0, end0 = place(a, block + retrieved + live, start=-r_span)
    ref_cache, ref0 = question_on(a, keys0, values0, end0, a.question_text(QUESTION))
    assert max_diff(ref0, ref) <= TOL
    for l in range(a.num_layers):
        assert max_diff(cache.layers[l].keys, ref_cache.layers[l].keys) <= TOL, (name, "assembled keys", l)
        assert max_diff(cache.layers[l].values, ref_cache.layers[l].values) <= TOL, (name, "assembled values", l)
    # and leaving the previous-text block out of that context is detectably different
    k2, v2, e2 = place(a, [(sinks, "text")] + retrieved + live)
    _, ref_no_prev = question_on(a, k2, v2, e2, a.question_text(QUESTION))
    assert max_diff(ref_no_prev, ref) > 10 * TOL
