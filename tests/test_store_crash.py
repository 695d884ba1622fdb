"""Crash safety: a writer process is SIGKILLed at random moments, again and again, on one directory.

After every kill the directory must open, hold every entry the writer reported as committed (it may
lose only the entry being written, never an acknowledged one) and no entry may have wrong bytes.
"""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from _memory_helpers import make_segment, meta, same_kv
from memory.store import LongTermStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _store_writer import CRASH_META, TOKENS  # noqa: E402

WRITER = Path(__file__).with_name("_store_writer.py")
KILLS = 12


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_sigkill_loop_loses_at_most_the_entry_being_written(tmp_path):
    d = tmp_path / "mem"
    m = meta(**CRASH_META)
    rng = random.Random(1234)
    acked: set[int] = set()  # ids the writer reported as committed, over all rounds
    texted: set[int] = set()  # ids whose text update was reported
    verified = 0
    for rnd in range(KILLS):
        proc = subprocess.Popen([sys.executable, str(WRITER), str(d)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        if rnd % 4 == 3:  # kill at any moment, possibly during start-up / journal recovery
            time.sleep(rng.uniform(0.0, 1.2))
        else:
            line = proc.stdout.readline()
            assert line.startswith("ready"), (line, proc.stderr.read() if proc.poll() is not None else "")
            time.sleep(rng.uniform(0.02, 0.35))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err
        lines = out.split("\n")
        ids = [int(x) for x in lines if x.strip().isdigit()]
        acked.update(ids)
        texted.update(int(x.split()[1]) for x in lines if x.startswith("text "))
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            store = LongTermStore.open(d, expected=m, ram_bytes=0)
        with store:
            have = store.ids()
            bad = [str(w.message) for w in rec if "skipped" in str(w.message)]
            assert not bad, bad  # a torn write never shows up as a damaged entry
            # ids are contiguous; every acknowledged entry is there; at most one more (the one in flight)
            assert have == list(range(len(have)))
            assert acked <= set(have), sorted(acked - set(have))
            assert len(have) <= (max(acked) + 2 if acked else 1)
            for i in have[verified:]:  # every entry's bytes equal the deterministic function of its id
                seg, want = store.get(i), make_segment(i, m, tokens=TOKENS)
                assert same_kv(seg, want), f"entry {i} has wrong bytes"
                assert seg.start_s == i and seg.thumbnail == want.thumbnail
            verified = len(have)
            for i in have:
                text = store.info(i).text
                assert text in (f"chunk {i}", f"text {i} v2"), (i, text)
                if i in texted:
                    assert text == f"text {i} v2"
    assert len(acked) > KILLS  # the writer made progress between kills
    assert not [p.name for p in (d / "segments").iterdir() if p.name.endswith(".tmp")]  # cleaned on open
