"""Long-term memory through the engine and the API: bounds, persistence, `vstream ask`, causality."""
from __future__ import annotations

import json
import time

import numpy as np
import psutil

from conftest import REPO, make_chunks, tiny_adapter
from vstream.api import Agent
from vstream.cli.main import main
from vstream.config import from_name
from vstream.engine.core import Engine
from vstream.engine.longterm import open_long_term

SAMPLE = str(REPO / "data" / "sample.mp4")


def test_5000_chunks_bounded_memory(tmp_path):
    """5,000 chunks: the RAM tier never exceeds its bytes, RSS stays in a fixed budget, entries land on disk."""
    adapter = tiny_adapter("tiny-smolvlm")
    ram_budget = 2 << 20
    cfg = from_name("tiny").replace(**{"memory.window_chunks": 4, "memory.ram_bytes": ram_budget})
    lt = open_long_term(adapter, cfg.memory, tmp_path / "mem")
    eng = Engine(adapter, cfg, lt)
    eng.start()
    proc = psutil.Process()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(1, 16, 16, 3), dtype=np.uint8)
    from vstream.sources import Chunk

    rss_after_warmup = None
    t0 = time.perf_counter()
    for i in range(5000):
        fr = np.roll(base, i, axis=1)
        eng.ingest(Chunk(index=i, start_s=float(i), end_s=float(i + 1), frames=fr, timestamps=[float(i)]))
        assert lt.ram_bytes() <= ram_budget
        if i == 500:
            rss_after_warmup = proc.memory_info().rss
    rss_end = proc.memory_info().rss
    assert len(lt) == 5000 - 4
    assert eng.memory.context_tokens < 4 * 100 + 200  # the active context stays bounded too
    # entries live on disk: what remains in RAM is the budget plus index vectors, not 5,000 chunks of K/V
    per_entry = lt.store.info(0).nbytes
    assert lt.disk_bytes() >= 4996 * per_entry
    assert rss_end - rss_after_warmup < 64 << 20, (rss_end - rss_after_warmup) / 2 ** 20
    # and any entry still comes back with its bytes
    seg = lt.store.get(17)
    assert seg.start_s == 17.0 and seg.n_tokens > 0
    lt.close()
    print(f"5000 chunks in {time.perf_counter() - t0:.1f}s, RSS growth after warm-up "
          f"{(rss_end - rss_after_warmup) / 2 ** 20:.1f} MiB, disk {lt.disk_bytes() / 2 ** 20:.1f} MiB")


def test_save_load_same_entries_and_answers(tmp_path):
    """What was saved comes back exactly, and the loaded memory answers from the right entries.

    References: the live session's own entries and window chunks at save time (bytes, times, text), and
    a hand-computed retrieval score (mean per-layer cosine between the question's query means and each
    entry's key summary) for which entries the answer must cite, in order, with those scores.
    """
    import torch

    agent = Agent.from_pretrained("tiny-llava-onevision", **{"memory.window_chunks": 2})
    with agent.watch(SAMPLE, background=False) as s:
        s.advance_to(9)
        s.ask("What is moving?", history=False)
        lt = s.long_term
        want = {seg.start_s: seg for seg in [lt.store.get(i) for i in lt.store.ids()]
                + [x for x in s.engine.memory.live if x.kind == "vision"]}
        s.save(tmp_path / "lec.vmem")
    assert sorted(want) == [float(i) for i in range(9)]
    question = "What is moving?"
    with agent.load(tmp_path / "lec.vmem") as loaded:
        store = loaded.long_term.store
        assert sorted(i.start_s for i in store.infos()) == sorted(want)
        for i in store.ids():
            got = store.get(i)
            ref = want[got.start_s]
            assert (got.end_s, got.text, got.n_tokens, got.thumbnail) == (ref.end_s, ref.text, ref.n_tokens,
                                                                          ref.thumbnail)
            assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(got.keys + got.values, ref.keys + ref.values))
            assert torch.equal(got.key_summary.cpu(), ref.key_summary.cpu())
        # which entries the answer must use: the top-k by the hand-computed score
        _, _, _, _, qmeans = loaded.engine.prepare(question, loaded.engine.snapshot())
        q = qmeans.double()
        scores = {}
        for i in store.ids():
            ks = store.get(i).key_summary.double()  # [L, H_kv*D]
            cos = [float(q[l] @ ks[l] / (q[l].norm() * ks[l].norm())) if q[l].norm() > 0 else 0.0
                   for l in range(q.shape[0])]
            scores[i] = sum(cos) / len(cos)
        k = agent.config.memory.retrieve_k
        top = sorted(scores, key=lambda i: -scores[i])[:k]
        ans = loaded.ask(question, history=False)
        lt_ev = [e for e in ans.evidence if e.tier == "long_term"]
        assert [e.entry_id for e in lt_ev] == top
        assert all(abs(e.score - scores[e.entry_id]) < 1e-4 for e in lt_ev)
        assert [e.start_s for e in lt_ev] == [store.info(i).start_s for i in top]


def test_memory_dir_then_cli_ask(tmp_path, capsys):
    mem = tmp_path / "lec.vmem"
    assert main(["watch", SAMPLE, "--model", "tiny-smolvlm", "--memory-dir", str(mem), "--json"]) == 0
    capsys.readouterr()
    cfg = json.loads((mem / "config.json").read_text())
    assert cfg  # the directory describes its model
    assert main(["ask", str(mem), "What was on the slide?", "--model", "tiny-smolvlm", "--json",
                 "--max-new-tokens", "4"]) == 0
    out = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.strip()]
    assert out[0]["type"] == "answer" and out[0]["evidence"]
    assert all(e["tier"] == "long_term" for e in out[0]["evidence"])
    # a directory written by another model is a clear one-line error
    code = main(["ask", str(mem), "hi", "--model", "tiny-qwen2.5-vl"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "tiny-smolvlm" in err or "smolvlm" in err
    # not a memory directory at all
    code = main(["ask", str(tmp_path), "hi", "--model", "tiny-smolvlm"])
    assert code == 2 and "not a vstream memory directory" in capsys.readouterr().err


def test_retrieval_is_causal(tmp_path):
    """Entries that started at or after the oldest chunk of the question's window are never retrieved."""
    adapter = tiny_adapter("tiny-llava-onevision")
    cfg = from_name("tiny").replace(**{"memory.window_chunks": 2, "memory.retrieve_k": 8})
    lt = open_long_term(adapter, cfg.memory, None)
    eng = Engine(adapter, cfg, lt)
    eng.start()
    for ch in make_chunks(6, size=16, seed=9):
        eng.ingest(ch)
    snap = eng.snapshot()  # window holds chunks 4, 5; store holds 0..3
    for ch in make_chunks(6, size=16, seed=10, start_index=6):
        eng.ingest(ch)  # store now also holds 4..9
    ans = eng.answer("What happened?", snap, max_new_tokens=2)
    lt_ev = [e for e in ans.evidence if e.tier == "long_term"]
    assert lt_ev and all(e.end_s <= 4.0 for e in lt_ev)
    assert {e.start_s for e in ans.evidence if e.tier == "window"} <= {4.0, 5.0}
    lt.close()


def test_partial_question_pass_matches_the_full_one():
    """query_layers < 1 stops the question pass early: the layers it ran equal the model's own, the rest are 0.

    Reference: the HF language model's forward over the sinks and the question (its hidden states), each
    layer's own input norm and q projection applied to them, averaged over the question's tokens and
    within each key-value group.
    """
    import torch

    adapter = tiny_adapter("tiny-qwen2.5-vl")
    full = Engine(adapter, from_name("tiny").replace(**{"memory.query_layers": 1.0, "memory.long_term": False}))
    half = Engine(adapter, from_name("tiny").replace(**{"memory.query_layers": 0.5, "memory.long_term": False}))
    for e in (full, half):
        e.start()
    q = adapter.embed_text(adapter.question_text("What is on the slide?"))
    a = full._query_means(q, full.snapshot())
    b = half._query_means(q, half.snapshot())
    assert a.shape == b.shape == (adapter.num_layers, adapter.num_kv_heads * adapter.head_dim)
    sink_ids = adapter.tokenize(adapter.system_text(full.config.system_prompt))
    ids = torch.tensor([sink_ids + q.input_ids[0].tolist()])
    lm = adapter.language_model()
    with torch.no_grad():
        hidden = lm(input_ids=ids, output_hidden_states=True).hidden_states  # [L + 1] x [1, S, hidden]
        ref = []
        group = adapter.num_heads // adapter.num_kv_heads
        for li, layer in enumerate(adapter.decoder_layers()):
            qp = layer.self_attn.q_proj(layer.input_layernorm(hidden[li]))[0, len(sink_ids):].mean(0)  # [H*D]
            ref.append(qp.view(adapter.num_kv_heads, group, adapter.head_dim).mean(1).reshape(-1))
        ref = torch.stack(ref)
    assert torch.allclose(a, ref, atol=1e-5), (a - ref).abs().max()
    assert torch.allclose(b[:1], ref[:1], atol=1e-5)
    assert b[1:].abs().sum() == 0 and ref[1:].abs().sum() > 0


def test_per_layer_selection_votes_across_layers():
    """per_layer=True: each layer (with a query) picks its top entries; the most-picked come back."""
    import torch

    adapter = tiny_adapter("tiny-llava-onevision")
    cfg = from_name("tiny").replace(**{"memory.window_chunks": 2, "memory.per_layer": True,
                                       "memory.query_layers": 1.0, "memory.retrieve_k": 2})
    lt = open_long_term(adapter, cfg.memory, None)
    eng = Engine(adapter, cfg, lt)
    eng.start()
    for ch in make_chunks(8, size=16, seed=11):
        eng.ingest(ch)
    target = lt.store.get(3)
    # a query equal to entry 3's key summary on every layer: every layer votes for entry 3 first
    got = lt.retrieve(question="q", query_means=target.key_summary.clone(), k=2, before_s=100.0,
                      device=torch.device("cpu"))
    assert got[0].entry_id == 3 and len(got) == 2
    # layers without a query (zeros) do not vote: with only layer 0 asking, its own top entry wins
    only0 = torch.zeros_like(target.key_summary)
    only0[0] = lt.store.get(5).key_summary[0]
    got = lt.retrieve(question="q", query_means=only0, k=1, before_s=100.0, device=torch.device("cpu"))
    assert got[0].entry_id == 5
    lt.close()
