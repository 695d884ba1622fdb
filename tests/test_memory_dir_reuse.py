"""Reusing a --memory-dir (issue 10, item 3): the same source resumes, another one is refused in one line
(before any model loads, the directory untouched) or, with --memory-append, added after the stored
entries with its own time base. Never a silent no-op."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from conftest import REPO
from vstream.cli.main import main

SAMPLE = str(REPO / "data" / "sample.mp4")  # 12 s -> 12 one-second chunks
OTHER = "synthetic:seed=4,duration=5,fps=4,size=64x48"


def entries(mem: Path) -> list[tuple[float, float]]:
    from memory.store import LongTermStore

    with LongTermStore.open(mem, read_only=True) as store:
        return sorted((i.start_s, i.end_s) for i in store.infos())


def tree_hashes(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def watch(capsys, *argv) -> tuple[int, str, str]:
    code = main(["watch", *argv, "--model", "tiny-smolvlm", "--json"])
    out, err = capsys.readouterr()
    return code, out, err


def test_memory_dir_is_resumed_refused_or_appended(tmp_path, capsys, caplog, monkeypatch):
    mem = tmp_path / "m.vmem"
    assert watch(capsys, SAMPLE, "--memory-dir", str(mem))[0] == 0
    first = entries(mem)
    assert first == [(float(i), float(i + 1)) for i in range(12)]
    sources = json.loads((mem / "sources.json").read_text())["sources"]
    assert len(sources) == 1 and sources[0]["identity"]["path"] == str(Path(SAMPLE).resolve())
    assert sources[0]["identity"]["size"] == Path(SAMPLE).stat().st_size

    # the same video again: resumed, said so, nothing stored twice
    with caplog.at_level(logging.WARNING, logger="vstream.session.memory_dir"):
        assert watch(capsys, SAMPLE, "--memory-dir", str(mem))[0] == 0
    assert any("holds this source already" in r.getMessage() and "resuming" in r.getMessage()
               for r in caplog.records)
    assert entries(mem) == first

    # another video: refused in one line, before the model loads, the directory untouched
    import vstream.models.registry as registry

    before = tree_hashes(mem)
    with monkeypatch.context() as m:
        m.setattr(registry, "load_model", lambda *a, **k: pytest.fail("model loaded before the memory dir check"))
        code, out, err = watch(capsys, OTHER, "--memory-dir", str(mem))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "holds 12 entries of" in lines[0] and "sample.mp4" in lines[0]
    assert "--memory-append" in lines[0]
    assert tree_hashes(mem) == before

    # the Python API refuses the same way
    from vstream.api import Agent

    agent = Agent.from_pretrained("tiny-smolvlm", device="cpu", dtype="float32")
    with pytest.raises(ValueError, match="holds 12 entries"):
        agent.watch(OTHER, memory_dir=mem, background=False)
    assert tree_hashes(mem) == before

    # --memory-append: added after the stored entries, its times starting at 12 s (stated)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vstream.session.memory_dir"):
        code, out, err = watch(capsys, OTHER, "--memory-dir", str(mem), "--memory-append", "--ask", "2:What now?")
    assert code == 0, err
    assert any("stream times start at 12.0 s" in r.getMessage() for r in caplog.records)
    answer = [json.loads(l) for l in out.splitlines() if '"answer"' in l][0]
    assert answer["t"] == pytest.approx(14.0)  # 2 s into the appended stream
    got = entries(mem)
    assert got[:12] == first and got[12:] == [(12.0 + i, 13.0 + i) for i in range(5)]
    assert len(json.loads((mem / "sources.json").read_text())["sources"]) == 2
    # and it can be resumed in turn (the same appended source again stores nothing twice)
    assert watch(capsys, OTHER, "--memory-dir", str(mem))[0] == 0
    assert entries(mem) == got
