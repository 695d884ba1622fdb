"""What a new user hits on the command line (issue 10, items 8, 9 and 10).

- odd inputs get one clear line (an error, or a warning saying what was done instead);
- arguments, the model name and the source are checked before any model loads (a patched loader
  proves it is never reached), unknown model names never reach the hub;
- stderr holds only vstream's own lines unless -v (no native decoder lines, no duplicated
  warnings, no "Loading weights" bar);
- SIGTERM flushes the memory like SIGINT does (a real subprocess, killed mid-stream).
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from vstream.cli.main import main

SAMPLE = str(REPO / "data" / "sample.mp4")  # 12 s
OWN_LINE = re.compile(r"^(vstream: |(WARNING|ERROR|INFO|CRITICAL) (vstream|memory|eval)[\w.]*: )")


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: what is checked here must be checked before."""
    import vstream.models.registry as registry

    def refuse(*a, **kw):
        raise AssertionError("a model was loaded before the arguments/source were checked")

    monkeypatch.setattr(registry, "load_model", refuse)


@pytest.mark.parametrize("argv,needle", [
    (["--ask", "nan:q"], "finite number of seconds >= 0"),
    (["--ask", "-5:q"], "finite number of seconds >= 0"),
    (["--ask", "inf:q"], "finite number of seconds >= 0"),
    (["--fps", "inf"], "--fps inf is not a finite number > 0"),
    (["--fps", "nan"], "--fps nan is not a finite number > 0"),
    (["--fps", "-2"], "--fps -2 is not a finite number > 0"),
    (["--fps", "0.001", "--ask", "5:q"], "fewer than one per 1-s chunk; use --fps 1 or more"),
])
def test_odd_inputs_are_one_clear_error_before_loading(capsys, no_model, argv, needle):
    code, out, err = _run(capsys, "watch", SAMPLE, "--model", "tiny-smolvlm", *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vstream: error: ") and needle in lines[0], err


def test_ask_past_the_end_warns_and_says_when_it_was_asked(capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="vstream.cli.main"):
        code, out, err = _run(capsys, "watch", SAMPLE, "--model", "tiny-smolvlm", "--ask", "100:q", "--json",
                              "--max-new-tokens", "2")
    assert code == 0
    answer = [json.loads(l) for l in out.splitlines() if '"answer"' in l][0]
    assert answer["t"] == pytest.approx(12.0)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("--ask at 100s is past the end" in m and "12.0 s" in m for m in msgs), msgs
    assert any("before the question's time 100s: asked at 12.0s" in m for m in msgs), msgs


def test_missing_file_is_reported_before_the_model_loads(capsys, no_model, tmp_path):
    code, out, err = _run(capsys, "watch", str(tmp_path / "nope.mp4"), "--model", "tiny-smolvlm")
    assert code == 2 and "no such file" in err and len(err.strip().splitlines()) == 1


def test_not_a_memory_dir_is_reported_before_the_model_loads(capsys, no_model, tmp_path):
    code, out, err = _run(capsys, "ask", str(tmp_path), "q?", "--model", "tiny-smolvlm")
    assert code == 2 and "not a vstream memory directory" in err


@pytest.mark.parametrize("name", ["no-such-model", "tiny-smolvml", "a b/c"])
def test_unknown_model_fails_at_once_without_the_hub(capsys, monkeypatch, name):
    import transformers

    asked = []
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained",
                        classmethod(lambda cls, *a, **kw: asked.append(a) or (_ for _ in ()).throw(OSError("hub"))))
    code, out, err = _run(capsys, "watch", SAMPLE, "--model", name)
    assert code == 2 and asked == []
    assert f"unknown model {name!r}" in err and "tiny-smolvlm" in err and len(err.strip().splitlines()) == 1


def _damaged_copy(tmp_path: Path) -> Path:
    """sample.mp4 with bytes flipped inside its media data: the H.264 decoder complains natively."""
    data = bytearray(Path(SAMPLE).read_bytes())
    for i in range(3000, len(data) - 2000, 97):
        data[i] ^= 0x55
    out = tmp_path / "damaged.mp4"
    out.write_bytes(bytes(data))
    return out


@pytest.fixture(scope="module")
def local_checkpoint(tmp_path_factory) -> Path:
    """A tiny LLaVA-OneVision saved as a local checkpoint (loading it shows transformers' weight bar)."""
    from conftest import tiny_adapter

    d = tmp_path_factory.mktemp("ckpt")
    a = tiny_adapter("tiny-llava-onevision")
    a.model.save_pretrained(d)
    a.tokenizer.save_pretrained(d)
    (d / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"height": 28, "width": 28},
         "rescale_factor": 1 / 255}))
    return d


def _cli(*argv, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "vstream", *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env)


def test_stderr_holds_only_vstreams_own_lines(tmp_path, local_checkpoint):
    damaged = _damaged_copy(tmp_path)
    mem = tmp_path / "m.vmem"
    p = _cli("watch", str(damaged), "--model", str(local_checkpoint), "--ask", "2:q", "--max-new-tokens", "2",
             "--memory-dir", str(mem))
    assert p.returncode == 0, p.stderr
    lines = [l for l in re.split(r"[\r\n]", p.stderr) if l.strip()]
    assert lines, "the damaged file should be reported by vstream"
    assert all(OWN_LINE.match(l) for l in lines), lines
    assert len(lines) == len(set(lines)), lines  # nothing said twice (logger + RuntimeWarning)
    with open(mem / "journal.jsonl", "ab") as f:  # a torn journal line: reported once by the reader
        f.write(b'{"op":"add"')
    p = _cli("ask", str(mem), "what?", "--max-new-tokens", "2")  # the recorded model: the local checkpoint
    assert p.returncode == 0, p.stderr
    lines = [l for l in re.split(r"[\r\n]", p.stderr) if l.strip()]
    assert "Loading weights" not in p.stderr
    assert len(lines) == 1 and "truncated last journal line" in lines[0] and OWN_LINE.match(lines[0]), lines
    # -v shows the rest (here: at least vstream's INFO lines)
    p = _cli("-v", "ask", str(mem), "what?", "--max-new-tokens", "2")
    assert p.returncode == 0 and "INFO " in p.stderr


def _journal_entries(mem: Path) -> int:
    try:
        return sum(1 for l in (mem / "journal.jsonl").read_bytes().split(b"\n") if l.strip().endswith(b"}"))
    except OSError:
        return 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_flushes_the_window_like_sigint(tmp_path, sig):
    """Kill mid-stream once entries are being evicted: the chunks still in the window (4) must be saved too."""
    mem = tmp_path / "m.vmem"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "vstream", "watch", "synthetic:duration=600,fps=4,size=64x48",
                             "--model", "tiny-smolvlm", "--realtime", "--memory-dir", str(mem), "--window", "4"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _journal_entries(mem) < 1:  # the window (4 chunks) is full and one chunk went to long-term
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.05)
        stored_at_kill = _journal_entries(mem)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == (143 if sig == signal.SIGTERM else 130), err
    from memory.store import LongTermStore

    with LongTermStore.open(mem, read_only=True) as store:
        starts = sorted(i.start_s for i in store.infos())
    # every chunk up to the kill is there: the evicted ones and the 4 still in the window
    assert len(starts) >= stored_at_kill + 4, (stored_at_kill, starts)
    assert starts == [float(i) for i in range(len(starts))]


@pytest.mark.parametrize("argv,needle", [
    (["--chunks", "4", "--window", "16"], "--chunks 4 is not above --window 16"),
    (["--chunks", "16", "--window", "16"], "--chunks 16 is not above --window 16"),
    (["--chunks", "40", "--window", "16", "--recompute-chunks", "8"], "--recompute-chunks 8 is not above"),
])
def test_bench_ingest_with_too_few_chunks_is_a_clear_error(capsys, no_model, tmp_path, argv, needle):
    code, out, err = _run(capsys, "bench", "ingest", "--model", "tiny-smolvlm", "--out", str(tmp_path), *argv)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_bench_ingest_just_above_the_window_works(capsys, tmp_path):
    code, out, err = _run(capsys, "bench", "ingest", "--model", "tiny-smolvlm", "--chunks", "3", "--window", "2",
                          "--recompute-chunks", "3", "--modes", "engine,recompute", "--size", "32",
                          "--out", str(tmp_path))
    assert code == 0, err
    summary = json.loads(out)["summary"]
    assert summary["recompute_over_engine"] > 0
