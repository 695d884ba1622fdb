"""`vstream fleet CONFIG.toml`: config checks, a run to the end of finite streams, and SIGTERM on endless ones."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vstream.cli.main import main
from vstream.fleet.events import EventLog

CONFIG = """
model = "tiny-smolvlm"
config = "tiny"
device = "cpu"
dtype = "float32"
stats_every_s = 0
[memory]
window_chunks = 2
max_disk_bytes = {cap}
[alerts]
threshold = 1e-9
notify = ["a person enters"]
[[streams]]
id = "a"
source = "synthetic:seed=1,duration={da},fps=4,size=32x32"
memory_dir = "mem/a"
[[streams]]
id = "b"
source = "synthetic:seed=2,duration={db},fps=4,size=32x32"
notify = ["a red car stops"]
memory = {{ window_chunks = 3 }}
"""


def test_fleet_cli_runs_finite_streams_to_the_end(tmp_path, capsys):
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(CONFIG.format(cap=50_000, da=6, db=3))
    assert main(["fleet", str(cfg), "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[0]["type"] == "started" and lines[-1]["type"] == "stats" and lines[-1]["final"]
    events = [x for x in lines if x["type"] == "event"]
    logged = EventLog.read(tmp_path / "events.jsonl")
    assert [e["seq"] for e in events] == [e["seq"] for e in logged]  # every logged event printed once
    kinds = [(e["stream"], e["event"]) for e in events]
    assert kinds.count(("a", "alert")) == 1 and kinds.count(("b", "alert")) == 2
    assert ("a", "down") in kinds and ("b", "down") in kinds
    final = lines[-1]["streams"]
    assert final["a"]["chunks"] == 6 and final["b"]["chunks"] == 3
    assert final["a"]["memory_bytes"]["disk"] <= 50_000 and final["a"]["retention_deleted"] > 0
    assert (tmp_path / "mem" / "a" / "journal.jsonl").exists()


@pytest.mark.parametrize("bad, message", [
    ("[[streams]]\nid = 'a'\n", "needs an id and a source"),
    ("colour = 1\n[[streams]]\nid='a'\nsource='synthetic'\n", "unknown key"),
    ("[memory]\nwindow = 3\n[[streams]]\nid='a'\nsource='synthetic'\n", "unknown memory setting"),
    ("[memory]\nmax_disk_bytes = -4\n[[streams]]\nid='a'\nsource='synthetic'\n", "max_disk_bytes"),
    ("[[streams]]\nid='a'\nsource='nothere.mp4'\n", "nothere.mp4"),
])
def test_fleet_cli_rejects_bad_configs_before_loading_a_model(tmp_path, capsys, bad, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("model = 'no-such-model-anywhere'\n" + bad)
    assert main(["fleet", str(cfg)]) == 2
    assert message in capsys.readouterr().err


def test_fleet_cli_stops_cleanly_on_sigterm(tmp_path):
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(CONFIG.format(cap=0, da="inf", db="inf"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    p = subprocess.Popen([sys.executable, "-m", "vstream", "fleet", str(cfg), "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        seen = []
        end = time.monotonic() + 120
        for line in p.stdout:
            seen.append(json.loads(line))
            if sum(x.get("event") == "alert" for x in seen) >= 3 or time.monotonic() > end:
                break
        p.send_signal(signal.SIGTERM)
        rest, _ = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 0
    last = json.loads(rest.splitlines()[-1])
    assert last["type"] == "stats" and last["final"] and last["streams"]["a"]["chunks"] >= 1
    assert (tmp_path / "mem" / "a" / "index" / "manifest.json").exists()  # memory flushed on the way out


def test_fleet_cli_memory_dir_stays_under_the_cap_after_close(tmp_path, capsys):
    from memory.store import LongTermStore

    cfg = tmp_path / "fleet.toml"
    cfg.write_text(CONFIG.format(cap=50_000, da=6, db=3))
    assert main(["fleet", str(cfg)]) == 0
    store = LongTermStore.open(tmp_path / "mem" / "a")
    assert 0 < store.disk_bytes_used() <= 50_000 and store.ids()[-1] == 5  # the newest chunk is kept
    store.close()
