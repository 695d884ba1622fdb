"""`vstream serve` against careless and hostile clients (issue 22): every probe that broke the server, as
a test, plus a bounded soak and process deaths. One local Ray (2 CPUs), one tiny-smolvlm worker and one
Serve app with a token for the module; only 127.0.0.1; every loop bounded in time.

The finite-source tests need no Ray: a local http.server serves an MPEG-TS file and an ended HLS playlist.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import itertools
import json
import shutil
import socket
import subprocess
import threading
import time

import pytest

from _serve_helpers import free_port as _free_port, start_ray, wait_for as _wait

MODEL = "tiny-smolvlm"
TOKEN = "abuse-token-91c2"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = {"max_streams": 6, "max_followers_per_token": 70, "max_followers": 90, "max_question_tokens": 64}


# ---- finite sources (no Ray) --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """(dir, base url): a 4-s MPEG-TS clip, an ended HLS playlist of it, served over HTTP on 127.0.0.1;
    /live.ts sends the clip without Content-Length (as a live feed does)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    d = tmp_path_factory.mktemp("media")
    run = functools.partial(subprocess.run, check=True, capture_output=True, timeout=60)
    run(["ffmpeg", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=4", "-t", "4", "-c:v", "libx264",
         "-pix_fmt", "yuv420p", str(d / "clip.ts")])
    run(["ffmpeg", "-y", "-i", str(d / "clip.ts"), "-c", "copy", "-f", "hls", "-hls_time", "1",
         "-hls_playlist_type", "vod", str(d / "pl.m3u8")])

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(d), **kw)

        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path != "/live.ts":
                return super().do_GET()
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()  # no length: the body ends when the connection closes
            self.wfile.write((d / "clip.ts").read_bytes())
            self.close_connection = True

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield d, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("name", ["clip.ts", "pl.m3u8"])
def test_http_ts_file_and_ended_playlist_end_at_eof(media, name):
    from vstream.sources.live import LiveSource

    _, base = media
    src = LiveSource(f"{base}/{name}", backoff_s=0.01)
    frames = list(itertools.islice(src, 200))  # the old code replayed it forever: 200 frames
    assert len(frames) == 16 and src.reconnects == 0
    ts = [f.t for f in frames]
    assert ts == sorted(set(ts)) and all(t == t for t in ts)  # increasing, no NaN
    src.close()


def test_http_live_feed_without_length_still_reconnects(media):
    from vstream.sources.live import LiveSource

    _, base = media
    src = LiveSource(f"{base}/live.ts", backoff_s=0.01)
    frames = list(itertools.islice(src, 40))
    assert len(frames) == 40 and src.reconnects >= 2  # EOF of a feed of unknown size: the connection dropped
    ts = [f.t for f in frames]
    assert ts == sorted(set(ts)) and all(t == t for t in ts)  # frames without a time (NaN) are placed, not NaN
    src.close()


# ---- the server ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(request, tmp_path_factory, media):
    """(fleet, url, allow_dir, storage): Ray with 2 CPUs, one respawning worker, the HTTP app with a token."""
    ray = pytest.importorskip("ray")
    held = start_ray(request, _node_ip_address="127.0.0.1")

    from vstream.serve.client import RayFleet
    from vstream.serve.http import deploy

    root = tmp_path_factory.mktemp("abuse")
    allow = root / "allowed"
    allow.mkdir()
    d, _ = media
    shutil.copy(d / "clip.ts", root / "outside.ts")
    (allow / "pl.m3u8").write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\n{root / 'outside.ts'}\n"
                                   "#EXT-X-ENDLIST\n")
    (allow / "list.ffconcat").write_text(f"ffconcat version 1.0\nfile {root / 'outside.ts'}\n")
    (allow / "sneaky.mp4").write_text(f"#EXTM3U\n#EXTINF:4.0,\n{root / 'outside.ts'}\n#EXT-X-ENDLIST\n")
    fleet = held["fleet"] = RayFleet(actors=0, model=MODEL, config="tiny", dtype="float32", num_cpus=1,
                                     storage=root / "storage", health_interval_s=0.2, health_timeout_s=10.0,
                                     respawn=True)
    loading = fleet.controller.add_workers.remote(1)
    url = deploy(fleet.controller_name, token=TOKEN, allow_dir=str(allow), port=_free_port(), limits=LIMITS)
    ray.get(loading)
    return fleet, url, allow, root / "storage"


@pytest.fixture
def c(env):
    import httpx

    with httpx.Client(base_url=env[1], headers=AUTH, timeout=60) as client:
        yield client


def _syn(seed: int, duration="4", fps: int = 2) -> str:
    return f"synthetic:seed={seed},duration={duration},fps={fps},size=32x32"


def _err(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body["error"]) == {"message", "type", "code"} and body["error"]["message"]
    return body["error"]["message"]


def _healthy(c) -> None:
    assert c.get("/v1/health").status_code == 200
    r = c.post("/v1/streams", json={"id": "probe-ok", "source": _syn(1), "options": {"fps": 2, "chunk_seconds": 1,
                                                                                     "config": {"memory.window_chunks": 4}}})
    assert r.status_code == 201, r.text
    assert c.delete("/v1/streams/probe-ok").status_code == 200


def test_dotted_config_cannot_walk_into_classes(c):  # probe 1
    body = {"id": "atk", "source": "synthetic:duration=2", "options": {"config": {"sampler.__class__.validate": None}}}
    assert "cannot be set over HTTP" in _err(c.post("/v1/streams", json=body), 400)
    _healthy(c)  # creates with fps / chunk_seconds / config still work


def test_config_fields_are_typed_and_paths_cannot_be_probed(c):  # probes 7, 13
    msgs = []
    for cfg in ({"memory.asr": True, "asr.model": "/etc"}, {"asr.model": "/etc/passwd"}, {"asr.model": "/nope"}):
        msgs.append(_err(c.post("/v1/streams", json={"id": "p", "source": _syn(2), "options": {"config": cfg}}), 400))
    assert all("/etc" not in m and "model.bin" not in m for m in msgs)
    assert len({m.split("'")[2] for m in msgs}) == 1  # one message for every refused field
    r = c.post("/v1/streams", json={"id": "p", "source": _syn(2), "options": {"config": {"memory.window_chunks": "4"}}})
    assert "must be an int" in _err(r, 400)
    _healthy(c)


def test_bad_values_are_4xx_json_never_500(c):  # probes 9, 13
    raw = [('{"id":"x","source":"synthetic","options":{"chunk_seconds":Infinity}}', "/v1/streams"),
           ('{"question":"hi","max_new_tokens":Infinity}', "/v1/streams/x/ask"),
           ('{"question":"\\ud800"}', "/v1/streams/x/ask")]
    for body, path in raw:
        _err(c.post(path, content=body, headers={"Content-Type": "application/json"}), 400)
    for opts in ({"fps": "abc"}, {"notify": 5}, {"config": [1]}, {"chunk_seconds": 1e9},
                 {"fps": -1}, {"realtime": "yes"}, {"memory_dir": "/"}):
        _err(c.post("/v1/streams", json={"id": "x", "source": _syn(3), "options": opts}), 400)
    assert "1920" in _err(c.post("/v1/streams", json={"id": "x", "source": "synthetic:size=100000x100000"}), 400)
    assert c.get("/v1/streams").status_code == 200  # nothing got into the registry
    _healthy(c)


def test_listen_options_and_unlisted_schemes_are_refused(c):  # probe 11
    port = _free_port()
    for src in (f"tcp://127.0.0.1:{port}?listen=1", f"udp://127.0.0.1:{port}", f"rtp://127.0.0.1:{port}",
                f"srt://127.0.0.1:{port}?mode=listener", f"http://127.0.0.1:{port}/a.ts?listen=1",
                "file:///etc/passwd", "concat:/etc/passwd", "gopher://x/"):
        msg = _err(c.post("/v1/streams", json={"id": "l", "source": src}), 400)
        if "://" in src:  # refused at the edge, never opened by a worker
            assert "scheme" in msg or "listen" in msg, msg
    with socket.socket() as s:  # nothing listens on it
        s.bind(("127.0.0.1", port))


def test_source_errors_are_generic(env, c):  # probe 12
    fleet, url, _, _ = env
    closed = f"http://127.0.0.1:{_free_port()}/x.ts"
    auth_page = f"{url}/v1/models"  # answers 401
    msgs = {_err(c.post("/v1/streams", json={"id": "scan", "source": s}), 400) for s in (closed, auth_page)}
    assert len(msgs) == 1 and "cannot open source" in msgs.pop()
    assert not (env[3] / "streams" / "scan").exists()  # a failed create leaves no memory dir


def test_playlists_in_the_allowed_dir_are_refused(c):  # probe 6
    for name in ("pl.m3u8", "list.ffconcat", "sneaky.mp4"):
        assert "playlist" in _err(c.post("/v1/streams", json={"id": "pl", "source": name}), 400)


def test_password_and_server_paths_are_not_echoed(c):
    r = c.post("/v1/streams", json={"id": "pw", "source": f"rtsp://user:hunter2@127.0.0.1:{_free_port()}/s"})
    assert "hunter2" not in r.text  # refused (nothing listens) without the password
    assert c.get("/openapi.json").status_code in (401, 404)
    h = c.get("/v1/health").json()
    assert "pid" not in h
    listed = c.get("/v1/streams").text
    assert "hunter2" not in listed and "memory_dir" not in listed


def test_token_is_checked_before_parameters(env):
    import httpx

    url = env[1]
    for path in ("/v1/events?since=abc", "/v1/search?q=x&top=zz", "/v1/streams/x/ask"):
        r = httpx.request("POST" if path.endswith("ask") else "GET", url + path, timeout=30)
        _err(r, 401)


def test_questions_and_tokens_are_bounded(env, c):  # probes 4, 5
    fleet = env[0]
    assert c.post("/v1/streams", json={"id": "qa", "source": _syn(4, "inf"), "options": {"realtime": True}}
                  ).status_code == 201
    assert fleet.wait_chunks("qa", 2, timeout=60)
    _err(c.post("/v1/streams/qa/ask", json={"question": "what? " * 10_000}), 413)  # 60 KB: at the edge
    _err(c.post("/v1/streams/qa/ask", json={"question": "what happened " * 100}), 413)  # tokens, at the worker
    _err(c.post("/v1/streams/qa/ask", json={"question": "x" * (2 << 20)}), 413)  # body
    assert "limit of 1024" in _err(c.post("/v1/streams/qa/ask", json={"question": "hi", "max_new_tokens": 2**63}), 400)
    r = c.post("/v1/chat/completions", json={"model": "qa", "messages": [{"role": "user", "content": "hi"}],
                                             "max_tokens": 2**63})
    _err(r, 400)
    img = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
    _err(c.post("/v1/chat/completions", json={"model": "qa", "messages": [{"role": "user", "content": img}]}), 400)
    _err(c.post("/v1/chat/completions", json={"model": "qa", "n": 3,
                                              "messages": [{"role": "user", "content": "hi"}]}), 400)
    ok = c.post("/v1/streams/qa/ask", json={"question": "What is on screen?", "max_new_tokens": 4})
    assert ok.status_code == 200 and len(ok.json()["token_ids"]) <= 4


def test_a_client_that_leaves_cancels_its_question(env, c):  # probe 4
    import httpx
    import ray

    fleet, url = env[0], env[1]
    _, h = fleet.actor_of("qa")
    before = ray.get(h.stats.remote())["worker"]["questions_cancelled"]
    with pytest.raises(httpx.TimeoutException):
        # the client gives up 50 ms after sending (a 1024-token answer takes several times that here)
        httpx.post(f"{url}/v1/streams/qa/ask", headers=AUTH, timeout=httpx.Timeout(5.0, read=0.05),
                   json={"question": "Describe everything in detail.", "max_new_tokens": 1024})
    assert _wait(lambda: ray.get(h.stats.remote())["worker"]["questions_cancelled"] > before, 30)
    before += 1
    # a streaming client that goes after the first line: its answer stops. The tiny random model may end an
    # answer (a stop token) before the disconnect reaches the worker, so up to three clients try; an answer
    # that finished is not a cancel, and one of three must be
    for _ in range(3):
        with httpx.stream("POST", f"{url}/v1/streams/qa/ask?stream=true", headers=AUTH, timeout=60,
                          json={"question": "Describe everything in detail.", "max_new_tokens": 1024}) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # the answer started; then the client goes
        if _wait(lambda: ray.get(h.stats.remote())["worker"]["questions_cancelled"] >= before + 1, 15):
            break
    assert ray.get(h.stats.remote())["worker"]["questions_cancelled"] >= before + 1
    ok = c.post("/v1/streams/qa/ask", json={"question": "And now?", "max_new_tokens": 2}, timeout=60)
    assert ok.status_code == 200  # the stream answers the next question


def _open_follower(url: str, headers: dict) -> socket.socket:
    host, port = url.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    hdr = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    s.sendall(f"GET /v1/events?follow=true HTTP/1.1\r\nHost: {host}\r\n{hdr}\r\n".encode())
    return s


def _status(s: socket.socket) -> int:
    line = b""
    while not line.endswith(b"\r\n"):
        part = s.recv(1)
        if not part:
            break
        line += part
    return int(line.split()[1])


def test_followers_have_their_own_budget(env, c):  # probe 3
    import httpx

    url = env[1]
    socks = []
    try:
        for _ in range(LIMITS["max_followers_per_token"]):
            socks.append(_open_follower(url, AUTH))
        assert all(_status(s) == 200 for s in socks)
        t0 = time.monotonic()
        r = httpx.get(f"{url}/v1/health", timeout=10)
        elapsed = time.monotonic() - t0
        assert r.status_code == 200 and elapsed < 1.0, elapsed  # the bound: health within 1 s
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
        extra = _open_follower(url, AUTH)
        socks.append(extra)
        assert _status(extra) == 429
    finally:
        for s in socks:
            s.close()
    # the budget comes back when followers leave
    assert _wait(lambda: _follow_status(url) == 200, 30)


def _follow_status(url: str) -> int:
    s = _open_follower(url, AUTH)
    try:
        return _status(s)
    finally:
        s.close()


def test_streams_are_limited_and_huge_bodies_refused(env, c):
    n0 = len(c.get("/v1/streams").json()["streams"])
    made = []
    for i in range(LIMITS["max_streams"] - n0):
        made.append(f"lim-{i}")
        assert c.post("/v1/streams", json={"id": made[-1], "source": _syn(i)}).status_code == 201
    _err(c.post("/v1/streams", json={"id": "one-too-many", "source": _syn(9)}), 429)
    for sid in made:
        c.delete(f"/v1/streams/{sid}")
    _err(c.post("/v1/streams", content=b"{" + b" " * (50 << 20) + b"}",
                headers={"Content-Type": "application/json"}), 413)
    assert c.get("/v1/health").status_code == 200


def test_soak_creates_and_deletes_leave_nothing_behind(env, c):
    storage = env[3]
    for i in range(200):
        r = c.post("/v1/streams", json={"id": f"soak-{i % 3}", "source": "synthetic:duration=1,fps=1,size=16x16"})
        assert r.status_code == 201, (i, r.text)
        assert c.delete(f"/v1/streams/soak-{i % 3}").status_code == 200
    outboxes = list((storage / "outbox").glob("soak-*.jsonl"))
    assert outboxes == []  # per-placement outbox files do not pile up
    assert c.get("/v1/health").status_code == 200


def test_readded_id_checks_its_source_and_resumes(env, c):  # probe 8 (re-add)
    fleet = env[0]
    body = {"id": "again", "source": _syn(21, "inf"), "options": {"realtime": True}}
    assert c.post("/v1/streams", json=body).status_code == 201
    assert fleet.wait_chunks("again", 3, timeout=60)
    c.delete("/v1/streams/again")
    r = c.post("/v1/streams", json={**body, "source": _syn(22, "inf")})
    assert "another source" in _err(r, 409)
    r = c.post("/v1/streams", json=body)
    assert r.status_code == 201 and r.json()["resumed_at_s"] >= 3.0  # the same source resumes after its memory
    c.delete("/v1/streams/again")


def test_readded_live_url_continues_its_clock(env, c, media):  # probe 8: chunks not silently dropped
    fleet = env[0]
    body = {"id": "feed", "source": f"{media[1]}/live.ts", "options": {"fps": 2}}
    assert c.post("/v1/streams", json=body).status_code == 201
    assert fleet.wait_chunks("feed", 3, timeout=60)
    c.delete("/v1/streams/feed")
    r = c.post("/v1/streams", json=body)
    assert r.status_code == 201, r.text
    resumed = r.json()["resumed_at_s"]
    assert resumed >= 3.0
    assert fleet.wait_chunks("feed", 2, timeout=60)
    assert fleet.stats()["streams"]["feed"]["stream_time_s"] > resumed  # new chunks after the stored ones
    c.delete("/v1/streams/feed")


def test_killed_worker_is_replaced(env, c):  # probe 10
    import httpx
    import ray

    fleet, url = env[0], env[1]
    name, h = fleet.actor_of("qa")
    ray.kill(h, no_restart=True)
    assert _wait(lambda: httpx.get(f"{url}/v1/health", timeout=10).status_code == 503, 30)
    assert _wait(lambda: httpx.get(f"{url}/v1/health", timeout=10).status_code == 200, 240)
    assert fleet.placement()["qa"]["worker"] != name
    assert fleet.wait_chunks("qa", 1, timeout=60)


def test_killed_controller_comes_back_with_streams_and_events(env, c):  # probe 8
    import httpx
    import ray

    from vstream.fleet.events import EventLog

    fleet, url, _, storage = env
    logged = len(EventLog.read(storage / "events.jsonl"))
    before = fleet.placement()["qa"]
    pid = ray.get(fleet.controller.__ray_call__.remote(lambda self: __import__("os").getpid()))
    subprocess.run(["kill", "-9", str(pid)], check=True)  # the controller process dies
    assert _wait(lambda: _get_json(url, "/v1/health").get("workers_alive", 0) > 0, 240)
    streams = {s["id"]: s for s in _get_json(url, "/v1/streams")["streams"]}
    assert "qa" in streams and streams["qa"]["source"] == before["source"]
    with httpx.stream("GET", f"{url}/v1/events", params={"since": 0, "follow": "false"}, headers=AUTH,
                      timeout=60) as r:
        seqs = [json.loads(line[5:])["seq"] for line in r.iter_lines() if line.startswith("data:")]
    assert len(seqs) >= logged and seqs[:logged] == list(range(logged))  # every event before the kill
    assert _wait(lambda: fleet.placement()["qa"]["worker"] is not None, 120)
    assert fleet.placement()["qa"]["resumed_at_s"] > 0  # resumed from its memory, not from 0
    assert fleet.wait_chunks("qa", 1, timeout=60)


def _get_json(url: str, path: str) -> dict:
    import httpx

    with contextlib.suppress(httpx.HTTPError, ValueError):
        r = httpx.get(url + path, headers=AUTH, timeout=10)
        if r.status_code == 200:
            return r.json()
    return {}


def test_a_new_server_on_the_same_storage_reloads_the_registry(env):  # probe 8: kill -9 of the server
    import ray

    from vstream.fleet.events import EventLog
    from vstream.serve.client import RayFleet

    fleet, _, _, storage = env
    copy = storage.parent / "after-crash"
    shutil.copytree(storage, copy)  # the storage as a server killed now leaves it (no shutdown ran on it)
    registered = set(fleet.placement())
    logged = EventLog.read(copy / "events.jsonl")
    again = RayFleet(actors=0, model=MODEL, config="tiny", dtype="float32", num_cpus=1, storage=copy,
                     health_interval_s=0.2)
    try:
        assert registered and set(again.placement()) == registered
        assert [e["id"] for e in again.events(follow=False)][:len(logged)] == [e["id"] for e in logged]
        assert ray.get(again.controller.health.remote())["streams_waiting"] == len(registered)
    finally:
        again.close()

