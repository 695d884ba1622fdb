"""The exactly-once event path without Ray: outboxes, the controller's de-duplicating log, `vstream serve` checks."""
from __future__ import annotations

import json

import pytest

from vstream.fleet.events import EventLog
from vstream.serve.journal import Journal, Outbox, read_outbox, safe_name


def _alert(stream: str, cond: str, t: float) -> dict:
    return {"seq": 99, "type": "alert", "stream": stream, "wall_time": 1.0, "stream_time_s": t, "condition": cond,
            "probability": 0.5, "answer": "x"}


def test_outbox_replay_logs_each_event_once_and_survives_a_reopen(tmp_path):
    box = Outbox(tmp_path / "out" / "cam.7.jsonl", "cam", 7)
    sent = [box.put(_alert("cam", c, t)) for c, t in (("a", 1.0), ("b", 2.0), ("a", 9.0))]
    box.close()
    assert [e["id"] for e in sent] == ["cam:7:0", "cam:7:1", "cam:7:2"] and all("seq" not in e for e in sent)
    with open(tmp_path / "out" / "cam.7.jsonl", "ab") as f:  # a kill in the middle of a write
        f.write(b'{"type": "alert", "stream": "cam", "id": "cam:7:3"')
    assert [e["id"] for e in read_outbox(tmp_path / "out" / "cam.7.jsonl")] == ["cam:7:0", "cam:7:1", "cam:7:2"]

    j = Journal(tmp_path / "events.jsonl")
    assert j.record(sent[0]) is not None  # polled before the worker died
    assert j.replay(tmp_path / "out" / "cam.7.jsonl") == 2  # the two it never polled
    assert j.replay(tmp_path / "out" / "cam.7.jsonl") == 0 and j.record(sent[1]) is None
    assert j.duplicates == 5
    assert j.alert_state("cam") == {"a": 9.0, "b": 2.0} and j.alert_state("other") == {}
    j.close()
    logged = EventLog.read(tmp_path / "events.jsonl")
    assert [(e["seq"], e["id"], e["condition"]) for e in logged] == [(0, "cam:7:0", "a"), (1, "cam:7:1", "b"),
                                                                       (2, "cam:7:2", "a")]
    j2 = Journal(tmp_path / "events.jsonl")  # a restarted controller knows what it logged
    assert j2.replay(tmp_path / "out" / "cam.7.jsonl") == 0
    assert j2.record({**sent[0], "id": "cam:8:0"})["seq"] == 3
    assert j2.alert_state("cam") == {"a": 9.0, "b": 2.0}
    j2.close()
    with pytest.raises(ValueError, match="'id'"):
        Journal(None).record({"type": "up", "stream": "cam"})


def test_safe_names_do_not_collide_or_escape():
    assert safe_name("cam-1") == "cam-1"
    names = {safe_name(s) for s in ("../x", "..", "a/b", "a_b", "a b")}
    assert len(names) == 5 and all("/" not in n and n not in (".", "..") for n in names)


def test_serve_cli_refuses_bad_arguments_before_starting_anything(tmp_path, capsys):
    from vstream.cli.main import main

    empty = tmp_path / "token"
    empty.write_text("\n")
    assert main(["serve", "--token-file", str(empty)]) == 2
    assert "token file" in capsys.readouterr().err
    assert main(["serve", "--allow-dir", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["serve", "--port", "0", "--json"]) == 2
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["type"] == "error"
