"""The simple baselines: last-N-frames presets and uniform offline sampling over everything seen."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vstream.config import from_name
from vstream.sources import SyntheticSource
from eval.uniform import UniformAgent


def test_last_frames_presets_keep_only_the_recent_chunks():
    c = from_name("last-4-frames")
    assert (c.sampler.fps, c.sampler.chunk_seconds, c.memory.window_chunks, c.memory.long_term) == (1.0, 1.0, 4, False)
    assert from_name("uniform-16").memory.window_chunks == 16 and not from_name("uniform-16").memory.long_term


@pytest.fixture(scope="module")
def agent():
    from vstream import Agent

    return Agent.from_pretrained("tiny-smolvlm", config="uniform-16", device="cpu", dtype="float32")


def test_uniform_session_samples_evenly_and_answers_from_a_fresh_context(agent):
    ua = UniformAgent(agent, 4)
    src = SyntheticSource(seed=1, duration_s=20, fps=4, size=(64, 48))
    with ua.watch(src) as s:
        s.advance_to(10)
        times = [t for t, _ in s._kept]
        assert times == [float(t) for t in range(10)]  # 1 fps from 4 fps frames, none at or after 10 s
        picked = [times[i] for i in np.linspace(0, 9, 4).round().astype(int)]  # the reference: 0, 3, 6, 9
        got = s.sampled()
        assert [next(t for t, f in s._kept if f is g) for g in got] == picked
        ans = s.ask("What is on the screen?", max_new_tokens=3)
        assert isinstance(ans.text, str) and ans.tokens <= 3 and s.stream_time_s == 10


def test_uniform_session_memory_stays_bounded_and_spread(agent):
    ua = UniformAgent(agent, 2, cap=4)
    with ua.watch(SyntheticSource(seed=1, duration_s=40, fps=1, size=(64, 48))) as s:
        s.advance_to(40)
        times = [t for t, _ in s._kept]
        assert len(times) <= 4 and times[0] == 0.0
        steps = set(np.diff(times).tolist())
        assert len(steps) == 1  # evenly spread after the halvings


def test_uniform_agent_refuses_a_config_that_would_evict(agent):
    from vstream.api import Agent

    small = Agent(agent.adapter, agent.config.replace(**{"memory.window_chunks": 2}))
    with pytest.raises(ValueError, match="window_chunks >= 4"):
        UniformAgent(small, 4)


def test_cli_runs_a_benchmark_with_the_uniform_preset(tmp_path, capsys):
    from eval.synthetic import make_bench
    from vstream.cli.main import main

    bench = make_bench(tmp_path / "b", videos=1, duration_s=10, fps=2, size=(64, 48))
    rc = main(["eval", "ovobench", str(bench.ovobench), "--out", str(tmp_path / "o"), "--model", "tiny-smolvlm",
               "--device", "cpu", "--config", "uniform-16", "--limit", "3", "--max-new-tokens", "2", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert "OVO-Bench overall (official protocol)" in capsys.readouterr().out
    preds = [json.loads(x) for x in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and all(p["tokens"] <= 2 for p in preds)
