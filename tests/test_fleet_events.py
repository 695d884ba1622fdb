"""Fleet event log and webhook against a real HTTP server on 127.0.0.1 (http.server in a thread)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import tiny_adapter
from vstream.api import Agent
from vstream.config import from_name
from vstream.fleet.events import EventLog, Webhook
from vstream.fleet.core import Fleet
from vstream.sources import SyntheticSource

CONDITIONS = ["a person enters", "a red car stops", "the light turns green"]


class Hook:
    """A webhook receiver: records bodies; ``status`` to answer, ``hold`` to hang until released."""

    def __init__(self, status: int = 200, hold: bool = False) -> None:
        self.bodies: list[dict] = []
        self.hits = 0
        self.status = status
        self.release = threading.Event()
        if not hold:
            self.release.set()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.hits += 1
                hook.release.wait(30)
                if hook.status == 200:
                    hook.bodies.append(json.loads(body))
                self.send_response(hook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._t = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._t.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook_factory():
    made = []

    def make(**kw) -> Hook:
        made.append(Hook(**kw))
        return made[-1]

    yield make
    for h in made:
        h.close()


def _fleet(tmp_path, url, **hook_kw) -> Fleet:
    agent = Agent(tiny_adapter("tiny-smolvlm"), from_name("tiny"))
    hook = Webhook(url, **hook_kw) if url else None
    return Fleet(agent, event_log=tmp_path / "events.jsonl", webhook=hook)


def _add_cams(fleet: Fleet, n_chunks: int = 4) -> None:
    for i in range(2):  # every condition fires once (threshold far below any P("Yes"))
        fleet.add(f"cam-{i}", SyntheticSource(seed=i, duration_s=n_chunks, fps=4, size=(32, 32)),
                  notify=[{"text": c, "threshold": 1e-9} for c in CONDITIONS])


def _wait(pred, timeout=60.0) -> bool:
    end = time.monotonic() + timeout
    while not pred() and time.monotonic() < end:
        time.sleep(0.05)
    return pred()


def test_every_alert_logged_and_delivered_once_in_order(tmp_path, hook_factory):
    hook = hook_factory()
    fleet = _fleet(tmp_path, hook.url, retries=2, backoff_s=0.05)
    with fleet:
        _add_cams(fleet)
        assert _wait(lambda: sum(e["type"] == "alert" for e in fleet.events(follow=False)) == 6)
        assert _wait(lambda: fleet.stats()["total"]["streams_down"] == 2)
    logged = EventLog.read(tmp_path / "events.jsonl")
    alerts = [e for e in logged if e["type"] == "alert"]
    assert sorted((e["stream"], e["condition"]) for e in alerts) == sorted(
        (f"cam-{i}", c) for i in range(2) for c in CONDITIONS)
    for e in alerts:
        assert 0 < e["probability"] <= 1 and isinstance(e["answer"], str) and e["stream_time_s"] == 1.0
        assert e["wall_time"] > 0
    assert [e["seq"] for e in logged] == list(range(len(logged)))
    assert hook.bodies == logged  # every event delivered exactly once, in log order
    assert fleet.webhook.stats()["dropped"] == 0
    # a reopened log continues the numbering
    log = EventLog(tmp_path / "events.jsonl")
    assert log.emit("gap", "cam-0", stream_time_s=9.0)["seq"] == len(logged)
    log.close()


@pytest.mark.parametrize("mode", ["500", "hang"])
def test_a_failing_or_hanging_webhook_does_not_hold_back_ingestion(tmp_path, hook_factory, mode):
    hook = hook_factory(status=500) if mode == "500" else hook_factory(hold=True)
    fleet = _fleet(tmp_path, hook.url, retries=2, backoff_s=0.05, timeout_s=30, queue_size=2)
    with fleet:
        _add_cams(fleet, n_chunks=6)
        for i in range(2):
            assert fleet.stream(f"cam-{i}").wait_chunks(6, timeout=60)
        # all chunks are in while the webhook is still stuck (hang) or failing (500): nothing waited on it
        if mode == "hang":
            assert not hook.release.is_set() and hook.hits >= 1
        assert _wait(lambda: sum(e["type"] == "alert" for e in fleet.events(follow=False)) == 6)
        st = fleet.webhook.stats()
        assert st["dropped"] > 0  # queue of 2: the rest was dropped, counted
        hook.release.set()
    logged = EventLog.read(tmp_path / "events.jsonl")
    assert sum(e["type"] == "alert" for e in logged) == 6  # the log has everything regardless
    if mode == "500":
        assert hook.bodies == [] and fleet.webhook.failed >= 1 and hook.hits >= 3  # retried, then gave up
