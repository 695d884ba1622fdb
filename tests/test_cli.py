"""The `vstream` command line: end to end on the sample video, and one-line errors for bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from vstream.cli.main import main

SAMPLE = str(REPO / "data" / "sample.mp4")


def test_watch_json_end_to_end():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "vstream", "watch", SAMPLE, "--model", "tiny-smolvlm", "--ask", "8:What changed?",
           "--ask", "3.5:What is on screen?", "--json", "--max-new-tokens", "5"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
    answers = [l for l in lines if l["type"] == "answer"]
    assert [a["question"] for a in answers] == ["What is on screen?", "What changed?"]  # asked in time order
    # asked when the stream reached T: the first chunk boundary at or after T (1 s chunks)
    assert [a["t"] for a in answers] == [4.0, 8.0]
    for a in answers:
        assert isinstance(a["text"], str) and a["tokens"] <= 5
        assert a["evidence"] and all(e["end_s"] <= a["t"] for e in a["evidence"])
        assert a["ttft_s"] > 0 and a["latency_s"] >= a["ttft_s"]
    stats = [l for l in lines if l["type"] == "stats"]
    assert len(stats) == 1 and stats[0]["chunks"] >= 8


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("make", ["missing", "empty", "corrupt", "directory"])
def test_bad_video_is_one_line_error(tmp_path, capsys, make):
    path = tmp_path / "clip.mp4"
    if make == "empty":
        path.write_bytes(b"")
    elif make == "corrupt":
        path.write_bytes(os.urandom(4096))
    elif make == "directory":
        path.mkdir()
    code, out, err = _run(capsys, "watch", str(path), "--model", "tiny-smolvlm", "--ask", "1:hi")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vstream: error:"), err
    assert "clip.mp4" in lines[0] and "Traceback" not in err


def test_unreachable_url_is_one_line_error(capsys):
    code, out, err = _run(capsys, "watch", "rtsp://127.0.0.1:9/nothing", "--model", "tiny-smolvlm", "--json")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "127.0.0.1:9" in err
    assert json.loads(out.strip().splitlines()[-1])["type"] == "error"


def test_wrong_model_name_names_the_presets(capsys):
    code, out, err = _run(capsys, "watch", SAMPLE, "--model", "./no/such/model-dir")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "tiny-smolvlm" in err and "no/such/model-dir" in err


def test_default_model_offline_says_so(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = _run(capsys, "watch", SAMPLE, "--ask", "1:hi")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "SmolVLM2" in err and "tiny-qwen2.5-vl" in err


def test_bad_ask_spec(capsys):
    code, out, err = _run(capsys, "watch", SAMPLE, "--model", "tiny-smolvlm", "--ask", "soon:what?")
    assert code == 2 and "TIME:QUESTION" in err


def test_models_lists_presets(capsys):
    code, out, err = _run(capsys, "models", "--json")
    assert code == 0
    names = {m["name"] for m in json.loads(out)["models"]}
    assert {"tiny-qwen2.5-vl", "tiny-llava-onevision", "tiny-smolvlm", "qwen2.5-vl-7b-random"} <= names
