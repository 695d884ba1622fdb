"""End to end on the synthetic benchmark with a tiny random preset: every protocol writes its files.

Scores are meaningless with random weights; the test checks the files, their fields, and that each
video is ingested once per benchmark with every question asked at its time stamp.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _eval_helpers import SpyAgent
from eval import formats
from eval.judge import LexicalJudge
from eval.protocol import ingest_target
from eval.report import load_bench_results, render_report
from eval.suite import run_synthetic_suite
from eval.synthetic import make_bench, open_synthetic

DURATION = 16


@pytest.fixture(scope="module")
def agent():
    from vstream import Agent

    return Agent.from_pretrained("tiny-smolvlm", device="cpu", dtype="float32")  # tiny config, long-term on


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_bench(tmp_path_factory.mktemp("bench"), videos=2, duration_s=DURATION, fps=2, size=(64, 48))


def _lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def _json(p: Path) -> dict:
    return json.loads(p.read_text())


@pytest.mark.parametrize("protocol", ["official", "vstream"])
def test_synthetic_suite_every_protocol_writes_its_score_files(agent, bench, tmp_path, protocol):
    from eval.rescore import score_files

    spy = SpyAgent(agent)
    suite = run_synthetic_suite(spy, bench, tmp_path, judge=LexicalJudge(), show_progress=False, protocol=protocol)
    official = protocol == "official"
    assert set(suite["results"]) == {"streamingbench", "ovobench", "rvs", "infstreams"}
    assert suite["protocol"] == protocol and f"Protocol: **{protocol}**" in (tmp_path / "summary.md").read_text()

    # StreamingBench: every question recorded; omni items run with ASR on (these clips have no audio track)
    sb = _json(tmp_path / "streamingbench" / "summary.json")
    assert sb["protocol"] == protocol and sb["context"] == "whole stream (vstream memory)"
    assert sb["n_skipped"] == 0 and sb["n_scored"] == 16
    assert any(kw.get("asr") for _src, kw in spy.watch_calls)
    preds = _lines(tmp_path / "streamingbench" / "predictions.jsonl")
    assert len(preds) == 16 and len({p["qid"] for p in preds}) == 16
    for p in preds:
        if p["kind"] in ("mcq", "sqa", "omni"):
            assert p["prompt"].endswith("The best option is:")
            assert p["asked_at_s"] == pytest.approx(ingest_target(p["time_s"], 1.0))  # never past its time stamp
            if official:
                assert p["prompt"].startswith("You are an advanced video question-answering AI assistant.")
                assert p["correct"] is (p["reply"][:1] == p["answer"] if p["reply"] else None)
        elif p["kind"] == "proactive":
            polls = [t for t, _ in p["probes"]]
            first = p["time_s"] + 1 if official else p["time_s"]  # official: from time_stamp + 1
            assert polls[0] == first and polls == sorted(polls) and polls[-1] <= p["gt_time_s"] + 4
            assert all(b - a == pytest.approx(1.0) for a, b in zip(polls, polls[1:]))
            if official:
                assert {"time_correct", "answer_correct"} <= p.keys() and len(p["dialog"]) >= 2
        else:
            raise AssertionError(f"unexpected kind {p['kind']!r}")
    sqa = [p for p in preds if p["kind"] == "sqa"]
    if official:  # the second sequential question carries the first one with its gold answer in the prompt
        assert "the following question and answer occurred" in sqa[1]["prompt"]
        assert "Sequential Question Answering" in sb["official"]["tasks"]
        assert sb["overall"] == sb["official"]["totals"]["real"]["accuracy"]
        rescored = score_files("streamingbench", [str(tmp_path / "streamingbench" / "official_output.json")])
        assert rescored["tasks"] == sb["official"]["tasks"]  # count.py's view of our output file is the same
    else:
        assert "| Counting |" in (tmp_path / "streamingbench" / "summary.md").read_text()

    # OVO-Bench: three categories, six tasks, forward probes expanded
    ovo = _json(tmp_path / "ovobench" / "summary.json")
    assert ovo["protocol"] == protocol and set(ovo["categories"]) == {"backward", "realtime", "forward"}
    assert set(ovo["tasks"]) == {"EPM", "OCR", "ATR", "REC", "SSR", "CRR"}
    assert isinstance(ovo["overall"], float) and ovo["n"] == len(_lines(tmp_path / "ovobench" / "predictions.jsonl"))
    rec = [p for p in _lines(tmp_path / "ovobench" / "predictions.jsonl") if p["task"] == "REC"]
    assert rec and all(isinstance(p["gold"], int) and "How many times" in p["prompt"] for p in rec)
    if official:
        assert score_files("ovobench", [str(tmp_path / "ovobench" / "results.json")])["overall"] == ovo["overall"]

    # RVS: every answer judged
    rvs = _json(tmp_path / "rvs" / "summary.json")
    assert rvs["judged"] == 4 and rvs["invalid"] == 0 and rvs["judge"]["judge"] == "lexical-overlap"
    assert rvs["accuracy"] is not None and 0 <= rvs["mean_score"] <= 5
    assert all({"reply", "answer", "ttft_s"} <= p.keys() for p in _lines(tmp_path / "rvs" / "predictions.jsonl"))
    if official:
        assert score_files("rvs", [str(tmp_path / "rvs" / "judged.json")])["average_score"] == rvs["mean_score"]
        assert (tmp_path / "rvs" / "results.csv").read_text().startswith("video_id,question,answer,pred_answer")

    # Inf-Streams: one line per chunk, merged per video (official layout), judged in both orders
    inf = tmp_path / "infstreams"
    start = bench.infstreams_start_s
    chunks = _lines(inf / "chunks.jsonl")
    # official: the run ends at the last ASR row's end (generate_segments.py); vstream: the end of the video
    ends = [int(m.words[-1][1]) if official else DURATION
            for m in formats.load_infstreams_metadata(bench.infstreams_metadata)]
    assert len(chunks) == sum(e - start for e in ends)
    assert all(set(c["items"][0]) == {"response", "start_time", "end_time"} for c in chunks)
    assert all("/" not in c["video"] and c["chunk_end"] > c["chunk_start"] for c in chunks)  # official shard lines
    merged = _lines(inf / "merged.jsonl")
    assert [len(m["items"]) for m in merged] == [e - start for e in ends] and merged[0]["chunk_start"] == start
    assert all("/" not in m["video"] for m in merged)  # basename keys, as merge_result.py writes them
    js = _json(inf / "judge_summary.json")
    assert js["protocol"] == protocol and js["windows"] >= 1
    assert js["votes_ours"] + js["votes_other"] + js["invalid"] == 2 * js["windows"]
    assert set(js["per_video"]) <= {m["video"] for m in merged}
    if official:
        assert score_files("infstreams", [str(inf / "score_segments_0.jsonl")])["global"]["A"] == js["votes_ours"]

    # one streaming pass per video per benchmark (official proactive items: one more stream each, from
    # their time stamp), never re-encoding the video per question
    sources = [src if isinstance(src, str) else getattr(src, "name", src) for src, _ in spy.watch_calls]
    assert len(sources) == 4 * 2 + (2 if official else 0)
    for s in spy.sessions:
        assert s.advances == sorted(s.advances)
        assert s.stats()["chunks"] <= DURATION
        times = [t for t, _ in s.asked]
        assert times == sorted(times)


def test_long_synthetic_stream_is_generated_on_the_fly(tmp_path):
    b = make_bench(tmp_path, videos=0, long_videos=1, long_duration_s=3600)
    entry = json.loads(b.streamingbench.read_text())[0]
    assert entry["video_path"].startswith("synthetic:") and "duration=3600" in entry["video_path"]
    assert not list(tmp_path.rglob("*.mp4"))  # nothing rendered to disk
    assert formats.parse_time(entry["questions"][-1]["time_stamp"]) > 3000
    src = open_synthetic(formats.resolve_video(entry["video_path"], str(tmp_path)), start_s=3300, end_s=3302)
    frames = list(src)
    assert [f.t for f in frames] == [3300.0, 3301.0] and frames[0].rgb.shape == (48, 64, 3)
    sc = b.scripts[0]
    # the scripted slide is on screen at its time: the rendered frame differs from one without events
    t = (sc.slides[1][0] + sc.slides[1][1]) // 2
    plain = open_synthetic(f"synthetic:seed={sc.seed},duration=3600,fps=1,size=64x48", start_s=t, end_s=t + 1)
    scripted = open_synthetic(formats.resolve_video(entry["video_path"], str(tmp_path)), start_s=t, end_s=t + 1)
    assert not np.array_equal(next(iter(plain)).rgb, next(iter(scripted)).rgb)


def test_cli_synthetic_and_one_line_errors(tmp_path, capsys):
    from vstream.cli.main import main

    out = tmp_path / "syn"
    rc = main(["eval", "synthetic", "--out", str(out), "--model", "tiny-smolvlm", "--device", "cpu",
               "--num-videos", "1", "--duration", "10", "--size", "64x48", "--benchmarks", "ovobench,streamingbench",
               "--limit", "3", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert "synthetic suite done" in capsys.readouterr().out
    assert _json(out / "ovobench" / "summary.json")["n"] == 3
    # rerunning into the same directory needs --resume or --overwrite
    bench_file = out / "bench" / "ovobench.json"
    assert main(["eval", "ovobench", str(bench_file), "--out", str(out / "ovobench"), "--model", "tiny-smolvlm"]) == 2
    err = capsys.readouterr().err
    assert "already exists; pass --resume" in err and err.count("\n") == 1

    # a missing video and a missing field: one line each, before any model is loaded
    sb = tmp_path / "sb.json"
    sb.write_text(json.dumps([{"video_path": "clips/missing.mp4", "questions": [
        {"task_type": "Counting", "question": "q", "time_stamp": "00:00:02", "answer": "A", "options": ["A. 1"]}]}]))
    assert main(["eval", "streamingbench", str(sb), "--out", str(tmp_path / "o1"), "--model", "tiny-smolvlm"]) == 2
    err = capsys.readouterr().err
    assert "video file not found:" in err and "missing.mp4" in err and err.count("\n") == 1
    sb.write_text(json.dumps([{"video_path": "x.mp4", "questions": [{"task_type": "Counting", "question": "q"}]}]))
    assert main(["eval", "streamingbench", str(sb), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "missing field 'time_stamp'" in err and err.count("\n") == 1


def _bench_rows(n: int) -> list[dict]:
    rows = []
    for mode, slope in (("engine", 0.0), ("full", 0.002), ("recompute", 0.0)):
        for i in range(n if mode != "full" else n // 2):
            rows.append({"mode": mode, "chunk": i, "latency_s": 0.05 + slope * i + (0.2 if mode == "recompute" else 0),
                         "rss_bytes": (1 << 30) + (i * (1 << 22) if mode == "full" else 0), "device_bytes": 0})
    rows.append({"mode": "full", "chunk": n // 2, "latency_s": None, "oom": True})
    return rows


def test_efficiency_report_from_bench_json(tmp_path):
    ingest = tmp_path / "ingest.json"
    ingest.write_text(json.dumps({"bench": "ingest", "model": "tiny-llava-onevision", "env": {"device": "cpu"},
                                  "window": 16, "rows": _bench_rows(200), "summary": {"engine": {}}}))
    memory = tmp_path / "memory.json"
    memory.write_text(json.dumps({"bench": "memory", "ttft": {"summary": {"p50": 0.1},
                                                              "samples": {"0 entries": [0.10, 0.12, 0.11],
                                                                          "10000 entries": [0.13, 0.15]}}}))
    extra = tmp_path / "rows.jsonl"  # JSON lines with ttft per row
    extra.write_text("\n".join(json.dumps({"mode": "engine", "chunk": i, "latency_s": 0.06, "ttft_s": 0.2 + i / 100})
                               for i in range(5)))
    data = load_bench_results([ingest, memory, extra])
    assert data.modes == ["engine", "full", "recompute"]
    assert data.ttft["0 entries"] == [0.10, 0.12, 0.11] and len(data.ttft["engine"]) == 5
    md, png = render_report([ingest, memory, extra], tmp_path / "report")
    text = md.read_text()
    assert "| full attention | 100 |" in text and "| 100 |" in text.split("full attention")[1].split("\n")[0]
    assert "| 0 entries | 3 |" in text and f"]({png.name})" in text
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > 1000 and im.size[1] > 400
    with pytest.raises(ValueError, match="bench result not found"):
        render_report([tmp_path / "nope.json"], tmp_path / "r2")


def test_context_seconds_reaches_the_session_and_the_summary(agent, bench, tmp_path):
    from eval.streamingbench import run_streamingbench

    spy = SpyAgent(agent)
    s = run_streamingbench(spy, str(bench.streamingbench), str(tmp_path), context_seconds=4, limit=3,
                           max_new_tokens=2, show_progress=False)
    mem = spy.sessions[0]._inner.config.memory
    assert (mem.window_chunks, mem.long_term) == (4, False) and agent.config.memory.long_term
    assert s["context_seconds"] == 4 and s["context"].startswith("last 4 s before the question")
    assert "context: last 4 s" in (tmp_path / "summary.md").read_text()
