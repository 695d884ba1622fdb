"""Live commentary: bounded memory over a long stream, the previous-text block, replay, timing fields.

The bound on the active context follows from the configuration alone:
sinks + previous-text head + tail + W chunks + text window (every step, over 500 chunks).
"""
from __future__ import annotations

import pytest
import torch

import vstream.engine.core as engine_mod
from _kv_reference import TOL, Recorder, expected_layout, max_diff, place
from conftest import make_chunks, tiny_adapter
from memory.segment import TEXT, VISION
from vstream.api import Agent
from vstream.config import from_name
from vstream.engine.core import Engine
from vstream.sources import SyntheticSource



def no_stop_tokens(monkeypatch, adapter) -> None:
    """Commentary of this adapter instance cannot stop early: every turn decodes the full budget."""
    cls = type(adapter)
    sub = type(f"{cls.__name__}NoStop", (cls,), {"eos_token_ids": property(lambda self: [])})
    monkeypatch.setattr(adapter, "__class__", sub)


class DecodeCounter:
    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        orig = engine_mod.decode_n_tokens

        def decode(*a, **kw):
            self.calls += 1
            return orig(*a, **kw)

        monkeypatch.setattr(engine_mod, "decode_n_tokens", decode)


def _cfg(**changes):
    fields = {"memory.long_term": False}
    fields.update(changes)
    return from_name("tiny").replace(**fields)


def test_commentary_memory_stays_bounded_over_500_chunks(monkeypatch):
    a = tiny_adapter("tiny-qwen2.5-vl")  # M-RoPE: spans and re-indexing are the hard case
    no_stop_tokens(monkeypatch, a)
    W, TW, HEAD, TAIL, M = 4, 64, 32, 32, 3
    cfg = _cfg(**{"memory.window_chunks": W, "memory.text_window_tokens": TW, "memory.prev_text_head": HEAD,
                  "memory.prev_text_tail": TAIL})
    prev = "Earlier: the host said hello."
    prev_ids = a.tokenize(prev)
    assert 0 < len(prev_ids) < HEAD
    eng = Engine(a, cfg)
    rec = Recorder(a)  # every prefill's raw K/V and positions: the reference for the re-indexed cache
    items = []
    try:
        eng.start(prev)
        sinks, prev_first = rec.records
        mm = eng.memory
        n_sinks = sum(s.n_tokens for s in mm.sinks)
        turn = len(a.tokenize(a.commentary_open_text())) + M + len(a.tokenize(a.answer_close_text()))
        chunk_max, seen_tokens = 0, 0
        for ch in make_chunks(500, frames=2, size=28):
            with rec.take(spans := []):
                rep = eng.ingest(ch)
            items.append((VISION, spans[0]))
            chunk_max = max(chunk_max, rep.n_tokens)
            bound = n_sinks + HEAD + TAIL + W * chunk_max + TW
            assert mm.context_tokens <= bound
            with rec.take(spans := []):
                item = eng.commentary(ch, M)
            items.append((TEXT, spans[0]))
            seen_tokens += rep.n_tokens + turn
            assert (item.start_s, item.end_s, item.chunk_index) == (ch.start_s, ch.end_s, ch.index)
            assert item.latency_s > 0
            ctx = mm.context_tokens
            assert ctx <= bound and mm.next_pos <= bound, f"chunk {ch.index}: {ctx} tokens > bound {bound}"
            assert ctx == sum(s.n_tokens for s in mm.segments())  # the cache is exactly the bookkept segments
            head = mm.prev_head.n_tokens if mm.prev_head else 0
            tail = mm.prev_tail.n_tokens if mm.prev_tail else 0
            assert head <= HEAD and tail <= TAIL
            assert sum(s.n_tokens for s in mm.live if s.kind == TEXT) <= TW
            assert sum(s.kind == VISION for s in mm.live) <= W
    finally:
        rec.close()
    assert seen_tokens > 20 * bound  # unbounded growth would have been visible
    assert mm.prev_head.n_tokens == HEAD and mm.prev_tail.n_tokens == TAIL  # commentary flowed into the block
    assert mm.chunks_ingested == 500 and mm.stream_time_s == 500.0
    assert mm.prev_head.token_ids[:len(prev_ids)] == tuple(prev_ids)  # the caller's text still opens the block
    # re-indexing after 500 chunks of M-RoPE: the cache is the recorded K/V of exactly the tokens the
    # configuration keeps, re-rotated with the model's own RoPE tables to contiguous positions
    head, tail, live, _, _ = expected_layout(prev_first, items, W, TW, HEAD, TAIL)
    keys, values, next_pos = place(a, [(sinks, "text"), (head, "text"), (tail, "text")] + live)
    assert mm.next_pos == next_pos
    for l in range(a.num_layers):
        assert max_diff(mm.cache.layers[l].keys, keys[l]) <= TOL, l
        assert torch.equal(mm.cache.layers[l].values, values[l]), l


@pytest.mark.parametrize("preset", ["tiny-qwen2.5-vl", "tiny-llava-onevision", "tiny-smolvlm"])
def test_long_previous_text_keeps_head_and_tail(preset):
    a = tiny_adapter(preset)
    cfg = _cfg(**{"memory.prev_text_head": 16, "memory.prev_text_tail": 12})
    text = " ".join(f"word{i}" for i in range(60))
    ids = a.tokenize(text)
    assert len(ids) > 16 + 12
    eng = Engine(a, cfg)
    eng.start(text)
    mm = eng.memory
    assert mm.prev_head.token_ids == tuple(ids[:16]) and mm.prev_head.n_tokens == 16
    assert mm.prev_tail.token_ids == tuple(ids[-12:]) and mm.prev_tail.n_tokens == 12
    assert mm.context_tokens == sum(s.n_tokens for s in mm.sinks) + 28
    assert not mm.live


def test_replay_uses_given_text_without_decoding(monkeypatch):
    a = tiny_adapter("tiny-smolvlm")
    dec = DecodeCounter(monkeypatch)
    eng = Engine(a, _cfg(**{"memory.text_window_tokens": 4096}))
    eng.start()
    replay = {0: "The red square moves left.", 2: "", 4: "Now a circle appears."}
    n_open, n_close = len(a.tokenize(a.commentary_open_text())), len(a.tokenize(a.answer_close_text()))
    for ch in make_chunks(6, frames=2, size=32):
        eng.ingest(ch)
        item = eng.commentary(ch, 4, replay=replay.get(ch.index))
        assert (item.start_s, item.end_s, item.chunk_index) == (ch.start_s, ch.end_s, ch.index)
        seg = eng.memory.live[-1]
        assert seg.kind == TEXT and (seg.start_s, seg.end_s) == (ch.start_s, ch.end_s)
        vision = [s for s in eng.memory.live if s.kind == VISION and s.chunk_index == ch.index]
        if ch.index in replay:
            assert item.text == replay[ch.index] == seg.text
            assert seg.n_tokens == n_open + len(a.tokenize(replay[ch.index])) + n_close
            assert vision[0].text.startswith(ch.marker) and replay[ch.index] in vision[0].text
    assert dec.calls == 3  # chunks 1, 3 and 5 only


def test_replay_of_generated_token_ids_reproduces_the_memory(monkeypatch):
    a = tiny_adapter("tiny-qwen2.5-vl")
    no_stop_tokens(monkeypatch, a)
    cfg = _cfg(**{"memory.window_chunks": 3, "memory.text_window_tokens": 40})
    chunks = make_chunks(8, frames=2, size=28, seed=3)
    live = Engine(a, cfg)
    rec = Recorder(a)
    rec_items, items_gen = [], []  # recorded K/V per stream item; the commentary the live run generated
    try:
        live.start("Before the stream.")
        sinks, prev_first = rec.records
        for ch in chunks:
            with rec.take(spans := []):
                live.ingest(ch)
            rec_items.append((VISION, spans[0]))
            with rec.take(spans := []):
                items_gen.append(live.commentary(ch, 4))
            rec_items.append((TEXT, spans[0]))
    finally:
        rec.close()
    assert all(len(i.token_ids) == 4 for i in items_gen)
    dec = DecodeCounter(monkeypatch)
    again = Engine(a, cfg)  # a resumed run: the same chunks, the earlier run's words fed back
    again.start("Before the stream.")
    for ch, item in zip(chunks, items_gen):
        again.ingest(ch)
        got = again.commentary(ch, 4, replay=item.token_ids)
        assert (got.text, got.token_ids) == (item.text, item.token_ids)
        assert (got.start_s, got.end_s) == (item.start_s, item.end_s)
    assert dec.calls == 0
    # the replayed memory is the decoded run's K/V (recorded while it decoded), kept and re-indexed as the
    # configuration says, re-rotated with the model's own RoPE tables
    head, tail, live_parts, _, _ = expected_layout(prev_first, rec_items, 3, 40, cfg.memory.prev_text_head,
                                                   cfg.memory.prev_text_tail)
    keys, values, next_pos = place(a, [(sinks, "text"), (head, "text"), (tail, "text")] + live_parts)
    mm = again.memory
    assert mm.prev_tail is not None and mm.next_pos == next_pos  # text did leave the window
    for l in range(a.num_layers):
        assert max_diff(mm.cache.layers[l].keys, keys[l]) <= TOL, l
        assert max_diff(mm.cache.layers[l].values, values[l]) <= TOL, l


def test_session_commentary_replay_previous_text_and_callbacks(monkeypatch):
    a = tiny_adapter("tiny-llava-onevision")
    agent = Agent(a, from_name("tiny").replace(model=a.name, device="cpu", dtype="float32",
                                               **{"memory.long_term": False, "responder.commentary_tokens": 3}))
    dec = DecodeCounter(monkeypatch)
    got = []
    prev = "Previously on the stream: a title card."
    src = SyntheticSource(seed=5, duration_s=6.0, fps=4.0, size=(64, 48))
    with agent.watch(src, background=False, commentary=True, previous_text=prev,
                     commentary_replay={0: "alpha", 2: "gamma", 4: a.tokenize(" delta")}) as s:
        s.on_commentary(got.append)
        assert s.run_to_end() == 6.0 and s.ended
        items = s.commentary_items
        assert got == items and len(items) == 6
        assert [(i.chunk_index, i.start_s, i.end_s) for i in items] == [(k, float(k), k + 1.0) for k in range(6)]
        assert items[0].text == "alpha" and items[2].text == "gamma" and items[4].text == "delta"
        assert items[4].token_ids == a.tokenize(" delta")
        assert dec.calls == 3
        ids = a.tokenize(prev)
        assert s.engine.memory.prev_head.token_ids[:len(ids)] == tuple(ids[:agent.config.memory.prev_text_head])


def test_previous_text_token_ids_stay_aligned_with_kv(monkeypatch):
    a = tiny_adapter("tiny-smolvlm")
    no_stop_tokens(monkeypatch, a)
    eng = Engine(a, _cfg(**{"memory.text_window_tokens": 16, "memory.prev_text_head": 24,
                            "memory.prev_text_tail": 24}))
    eng.start("Hello there.")
    for ch in make_chunks(6, frames=2, size=32):
        eng.ingest(ch)
        eng.commentary(ch, 3, replay="some words" if ch.index % 2 else None)
    prev = eng.memory.prev_text
    assert prev and sum(s.n_tokens for s in prev) > len(a.tokenize("Hello there."))
    for seg in prev:
        assert len(seg.token_ids) == seg.n_tokens
