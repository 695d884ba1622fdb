"""Answering from a saved memory directory (issue 10, items 4, 5 and 6).

- ``vstream ask DIR`` uses the model recorded in DIR/config.json when --model is not given;
- a damaged index file is rebuilt from the entries (same evidence as the intact index), never a traceback;
- reading never changes the directory: every file's bytes are hashed before and after, also with a torn
  journal line and on a full disk (every write into the directory fails with ENOSPC).
"""
from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import REPO
from vstream.cli.main import main

SAMPLE = str(REPO / "data" / "sample.mp4")
QUESTION = "What was on the slide?"


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """A memory directory written by `vstream watch --memory-dir` with tiny-smolvlm."""
    mem = tmp_path_factory.mktemp("mem") / "lec.vmem"
    assert main(["watch", SAMPLE, "--model", "tiny-smolvlm", "--memory-dir", str(mem), "--json"]) == 0
    return mem


@pytest.fixture
def mem(written, tmp_path) -> Path:
    d = tmp_path / "copy.vmem"
    shutil.copytree(written, d)
    return d


def tree_hashes(d: Path) -> dict[str, str]:
    """sha256 of every file under ``d`` (names included: a new or removed file shows too)."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def ask(capsys, mem: Path, *extra: str) -> tuple[int, list[dict], str]:
    code = main(["ask", str(mem), QUESTION, "--json", "--max-new-tokens", "4", *extra])
    out, err = capsys.readouterr()
    return code, [json.loads(l) for l in out.splitlines() if l.strip()], err


def test_ask_uses_the_model_recorded_in_the_directory(mem, capsys):
    recorded = json.loads((mem / "config.json").read_text())["model"]
    assert recorded == "tiny-smolvlm"
    code, lines, err = ask(capsys, mem)  # no --model
    assert code == 0, err
    assert lines[0]["type"] == "answer" and lines[0]["evidence"]
    with_model = ask(capsys, mem, "--model", "tiny-smolvlm")[1]
    assert lines[0]["text"] == with_model[0]["text"]  # the same (seeded) model answered


def test_damaged_index_is_rebuilt_with_the_same_evidence(mem, capsys, caplog):
    code, intact, _ = ask(capsys, mem, "--model", "tiny-smolvlm")
    assert code == 0
    pooled = mem / "index" / "pooled.npz"
    data = pooled.read_bytes()
    pooled.write_bytes(data[: len(data) // 2])  # a zip cut in half: zipfile.BadZipFile when read
    code, rebuilt, err = ask(capsys, mem, "--model", "tiny-smolvlm")
    assert code == 0, err
    assert "Traceback" not in err
    assert any("rebuilding it from the store" in r.getMessage() for r in caplog.records)
    key = [(e["start_s"], e["end_s"], e["source"]) for e in intact[0]["evidence"]]
    assert [(e["start_s"], e["end_s"], e["source"]) for e in rebuilt[0]["evidence"]] == key
    assert pooled.read_bytes() == data[: len(data) // 2]  # the reader did not rewrite it


def test_ask_never_changes_the_directory_even_with_a_torn_journal(mem, capsys):
    with open(mem / "journal.jsonl", "ab") as f:
        f.write(b'{"op":"add","id":99,"kind":"vis')  # an append cut short by a crash
    before = tree_hashes(mem)
    code, lines, err = ask(capsys, mem, "--model", "tiny-smolvlm")
    assert code == 0, err
    assert lines[0]["evidence"]
    assert tree_hashes(mem) == before
    # the python API too
    from vstream.api import Agent

    agent = Agent.from_pretrained("tiny-smolvlm", device="cpu", dtype="float32")
    with agent.load(mem) as s:
        assert s.ask(QUESTION, max_new_tokens=3).evidence
    assert tree_hashes(mem) == before


def test_ask_on_a_full_disk_answers_and_exits_0(mem, capsys, monkeypatch):
    before = tree_hashes(mem)
    root = str(mem.resolve())
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def inside(path) -> bool:
        try:
            return os.path.abspath(os.fspath(path)).startswith(root)
        except TypeError:  # an fd
            return True

    real_open, real_os_open = builtins.open, os.open

    def full_open(file, mode="r", *a, **kw):
        if any(c in mode for c in "wax+") and inside(file):
            raise enospc
        return real_open(file, mode, *a, **kw)

    def full_os_open(path, flags, *a, **kw):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND) and inside(path):
            raise enospc
        return real_os_open(path, flags, *a, **kw)

    def refuse(*a, **kw):
        raise enospc

    monkeypatch.setattr(builtins, "open", full_open)
    monkeypatch.setattr(os, "open", full_os_open)
    for name in ("replace", "rename", "ftruncate", "truncate"):
        monkeypatch.setattr(os, name, refuse)
    import memory.journal

    monkeypatch.setattr(memory.journal, "write_all", refuse)
    code, lines, err = ask(capsys, mem, "--model", "tiny-smolvlm")
    monkeypatch.undo()
    assert code == 0, err
    assert "Errno" not in err and lines[0]["type"] == "answer" and lines[0]["evidence"]
    assert tree_hashes(mem) == before


def test_a_writer_still_repairs_the_torn_line(mem):
    """Repairs happen when a writer opens the store (the reader above left the torn line as it was)."""
    from memory.store import LongTermStore

    j = mem / "journal.jsonl"
    good = j.read_bytes()
    with open(j, "ab") as f:
        f.write(b'{"op":"add"')
    with pytest.warns(RuntimeWarning, match="truncated last journal line"):
        LongTermStore.open(mem, read_only=True).close()
    assert j.read_bytes() == good + b'{"op":"add"'
    with pytest.warns(RuntimeWarning, match="truncated last journal line"):
        LongTermStore.open(mem).close()
    assert j.read_bytes() == good
