"""kill -9 of a real `vstream serve` process (and, as a lost machine would, the local Ray it started):
a server started again on the same --storage has every registered stream and every event (issue 22).
Two server starts (model loads): slow, so apart from test_serve_abuse.py's shared server.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import REPO
from _serve_helpers import free_port as _free_port, wait_for as _wait

MODEL = "tiny-smolvlm"
TOKEN = "kill-token-3b7e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _syn(seed: int, duration="4", fps: int = 2) -> str:
    return f"synthetic:seed={seed},duration={duration},fps={fps},size=32x32"


def _start_server(storage: Path, token_file: Path, port: int) -> tuple[subprocess.Popen, str]:
    """`vstream serve` in its own session (its local Ray too), started on 127.0.0.1; (process, url)."""
    import os

    cmd = [sys.executable, "-m", "vstream", "serve", "--model", MODEL, "--config", "tiny", "--dtype", "float32",
           "--num-cpus", "1", "--port", str(port), "--token-file", str(token_file), "--storage", str(storage),
           "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(cmd, cwd=str(storage.parent), env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    line = _readline(proc, 300)
    assert line and json.loads(line)["type"] == "listening", line
    return proc, json.loads(line)["url"]


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    got: list[str] = []
    t = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return got[0].strip() if got else ""


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the server's whole session (it and the Ray processes it started): nothing is left running."""
    import os
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


@pytest.mark.slow
def test_kill_9_of_the_server_loses_no_stream_and_no_event(tmp_path):  # probe 8, the real process
    import os
    import signal

    import httpx

    pytest.importorskip("ray")
    if os.environ.get("RAY_ADDRESS"):
        pytest.skip("needs its own local Ray")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    storage = tmp_path / "storage"
    proc, url = _start_server(storage, token_file, _free_port())
    try:
        c = httpx.Client(base_url=url, headers=AUTH, timeout=60)
        body = {"id": "k9", "source": _syn(31, "inf"), "options": {"realtime": True, "notify": ["a square"]}}
        assert c.post("/v1/streams", json=body).status_code == 201
        assert _wait(lambda: c.get("/v1/streams/k9").json()["stats"].get("chunks", 0) >= 3, 120)
        with c.stream("GET", "/v1/events", params={"follow": "false"}) as r:
            before = [json.loads(x[5:]) for x in r.iter_lines() if x.startswith("data:")]
        assert before
        os.kill(proc.pid, signal.SIGKILL)  # the server process, then (as a lost machine would) its Ray
    finally:
        _kill_session(proc)
    proc, url = _start_server(storage, token_file, _free_port())
    try:
        c = httpx.Client(base_url=url, headers=AUTH, timeout=60)
        assert [s["id"] for s in c.get("/v1/streams").json()["streams"]] == ["k9"]
        with c.stream("GET", "/v1/events", params={"since": 0, "follow": "false"}) as r:
            after = [json.loads(x[5:]) for x in r.iter_lines() if x.startswith("data:")]
        assert [e["id"] for e in after][:len(before)] == [e["id"] for e in before]  # no event lost
        assert _wait(lambda: c.get("/v1/streams/k9").json().get("resumed_at_s", 0) > 0, 120)
        assert _wait(lambda: c.get("/v1/streams/k9").json()["stats"].get("chunks", 0) >= 1, 120)
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(60)
    finally:
        _kill_session(proc)
