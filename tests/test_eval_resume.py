"""Resume: a run interrupted midway and restarted gives the same output as an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _eval_helpers import Interrupted, SpyAgent
from eval.infstreams import CHUNKS, MERGED, run_infstreams
from eval.runner import JsonlLog
from eval.streamingbench import run_streamingbench
from eval.synthetic import make_bench

REPO = Path(__file__).resolve().parents[1]
START = 3  # commentary start (s)
DURATION = 12
VIDEO = "syn_000"
N_CHUNKS = DURATION - START

# Replaying finished chunks is exact only when they are replayed as token ids: text -> tokens is not
# lossless for byte-level pieces (random weights emit invalid UTF-8 that decodes to U+FFFD).


@pytest.fixture(scope="module")
def agent():
    from vstream import Agent

    return Agent.from_pretrained("tiny-smolvlm", device="cpu", dtype="float32", **{"memory.long_term": False})


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_bench(tmp_path_factory.mktemp("bench"), videos=2, duration_s=DURATION, fps=2, size=(64, 48))


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _run(agent, bench, out, **kw):
    # the vstream protocol runs to the end of the video (the official one stops at the last ASR word)
    return run_infstreams(agent, str(bench.infstreams_metadata), str(out), start_time=START, show_progress=False,
                          videos=VIDEO, protocol="vstream", **kw)


@pytest.fixture(scope="module")
def reference_run(agent, bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    _run(agent, bench, out)
    return out


def _crash_after(n: int):
    written = []

    def hook(rec):
        written.append(rec)
        if len(written) == n:
            raise Interrupted("killed")
    return hook


def assert_same_output(got: Path, ref: Path) -> None:
    a, b = _lines(got / MERGED), _lines(ref / MERGED)
    assert a == b


def test_infstreams_resume_replays_finished_chunks_without_rewriting_them(agent, bench, tmp_path):
    with pytest.raises(Interrupted):
        _run(agent, bench, tmp_path, on_chunk=_crash_after(4))
    before = _lines(tmp_path / CHUNKS)
    assert len(before) == 4 and not (tmp_path / MERGED).exists()
    with pytest.raises(ValueError, match="--resume"):  # refuses to clobber without --resume / --overwrite
        _run(agent, bench, tmp_path)

    spy = SpyAgent(agent)
    summary = _run(spy, bench, tmp_path, resume=True)
    (source, kw), = spy.watch_calls
    expected = {r["chunk_index"]: (r["token_ids"] if "token_ids" in r else r["items"][0]["response"]) for r in before}
    assert kw["commentary_replay"] == expected
    assert kw["commentary"] is True and kw["previous_text"] and kw["background"] is False
    after = _lines(tmp_path / CHUNKS)
    assert after[:4] == before  # finished chunks are not written again
    keys = [(r["video"], r["chunk_index"]) for r in after]
    assert len(keys) == len(set(keys)) == summary["chunks"] == N_CHUNKS
    assert [r["chunk_start"] for r in after] == [float(t) for t in range(START, DURATION)]

    spy2 = SpyAgent(agent)  # nothing left to do: no session is opened
    _run(spy2, bench, tmp_path, resume=True)
    assert spy2.watch_calls == []


@pytest.mark.parametrize("crash_after", [1, 2, 4, 6])
def test_infstreams_interrupted_then_resumed_equals_uninterrupted(agent, bench, reference_run, tmp_path, crash_after):
    with pytest.raises(Interrupted):
        _run(agent, bench, tmp_path, on_chunk=_crash_after(crash_after))
    _run(agent, bench, tmp_path, resume=True)
    assert len(_lines(tmp_path / MERGED)[0]["items"]) == N_CHUNKS
    assert_same_output(tmp_path, reference_run)


def test_resume_replays_the_recorded_text(agent, bench, tmp_path):
    """Finished chunks' text comes from the file (edited here), proving they are not regenerated."""
    with pytest.raises(Interrupted):
        _run(agent, bench, tmp_path, on_chunk=_crash_after(2))
    rows = _lines(tmp_path / CHUNKS)
    rows[0]["items"][0]["response"] = "REPLAYED MARKER"
    rows[0].pop("token_ids", None)
    (tmp_path / CHUNKS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    _run(agent, bench, tmp_path, resume=True)
    merged = _lines(tmp_path / MERGED)
    assert merged[0]["items"][0]["response"] == "REPLAYED MARKER"
    assert len(merged[0]["items"]) == N_CHUNKS


def test_streamingbench_interrupted_then_resumed_equals_uninterrupted(agent, bench, tmp_path):
    full = run_streamingbench(agent, str(bench.streamingbench), str(tmp_path / "a"), show_progress=False,
                              videos=VIDEO, protocol="vstream")
    ref = {r["qid"]: r for r in _lines(tmp_path / "a" / "predictions.jsonl")}

    crashing = SpyAgent(agent, fail_after_asks=3)
    with pytest.raises(Interrupted):
        run_streamingbench(crashing, str(bench.streamingbench), str(tmp_path / "b"), show_progress=False,
                           videos=VIDEO, protocol="vstream")
    spy = SpyAgent(agent)
    again = run_streamingbench(spy, str(bench.streamingbench), str(tmp_path / "b"), resume=True, show_progress=False,
                               videos=VIDEO, protocol="vstream")
    got = {r["qid"]: r for r in _lines(tmp_path / "b" / "predictions.jsonl")}
    assert got.keys() == ref.keys() and len(_lines(tmp_path / "b" / "predictions.jsonl")) == len(ref)
    for qid, r in ref.items():
        assert (got[qid]["reply"], got[qid]["correct"], got[qid].get("fired_at_s")) == \
               (r["reply"], r["correct"], r.get("fired_at_s")), qid
    # only the questions left over were asked again (proactive polls may ask nothing)
    mcq_left = sum(1 for r in ref.values() if r["kind"] in ("mcq", "sqa", "omni")) - 3
    assert spy.asks == mcq_left
    assert {k: v for k, v in again.items() if k != "model"} == {k: v for k, v in full.items() if k != "model"}


def test_streamingbench_official_interrupted_then_resumed_equals_uninterrupted(agent, bench, tmp_path):
    """Official protocol: proactive items on their own streams, sequential-QA contexts in the prompts."""
    run = dict(show_progress=False, videos=VIDEO, protocol="official")
    full = run_streamingbench(agent, str(bench.streamingbench), str(tmp_path / "a"), **run)
    ref = {r["qid"]: r for r in _lines(tmp_path / "a" / "predictions.jsonl")}
    with pytest.raises(Interrupted):
        run_streamingbench(SpyAgent(agent, fail_after_asks=2), str(bench.streamingbench), str(tmp_path / "b"), **run)
    again = run_streamingbench(SpyAgent(agent), str(bench.streamingbench), str(tmp_path / "b"), resume=True, **run)
    got = {r["qid"]: r for r in _lines(tmp_path / "b" / "predictions.jsonl")}
    assert got.keys() == ref.keys()
    for qid, r in ref.items():
        assert {k: got[qid].get(k) for k in ("prompt", "reply", "correct", "dialog")} == \
               {k: r.get(k) for k in ("prompt", "reply", "correct", "dialog")}, qid
    assert again["official"] == full["official"]


def test_jsonl_log_cuts_a_partial_last_line(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_text('{"qid": "a", "v": 1}\n{"qid": "b", "v": 2}\n{"qid": "c", "v"')
    with JsonlLog(p) as log:
        assert set(log.records) == {"a", "b"}
        log.append({"qid": "c", "v": 3})
    assert [json.loads(x)["qid"] for x in p.read_text().splitlines()] == ["a", "b", "c"]


def test_killed_subprocess_then_resumed(bench, reference_run, tmp_path):
    """A real `vstream eval infstreams` process killed with SIGKILL midway, then resumed."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "vstream", "eval", "infstreams", str(bench.infstreams_metadata), "--out", str(out),
           "--start-time", str(START), "--videos", VIDEO, "--model", "tiny-smolvlm", "--device", "cpu",
           "--dtype", "float32", "--no-long-term", "--no-progress", "--protocol", "vstream"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    chunks = out / CHUNKS
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if chunks.exists() and chunks.read_text().count("\n") >= 3:
                break
            time.sleep(0.01)
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {proc.stderr.read().decode()[-500:]}")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    before = _lines(chunks)
    assert 3 <= len(before) < N_CHUNKS
    res = subprocess.run(cmd + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-800:]
    after = _lines(chunks)
    assert after[:len(before)] == before and len(after) == N_CHUNKS
    assert_same_output(out, reference_run)
