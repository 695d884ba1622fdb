"""``WS /v1/realtime`` end to end: a real ``websockets`` client pushes video and audio into a served stream.

One local Ray (2 CPUs), one RayFleet of two tiny-smolvlm actors and one Serve app on 127.0.0.1 for the whole
module. References: the pushed clip's own script (data/lecture.json: what is said, and when), the client's own
stamps (evidence and transcripts are checked against them), and the counters of frames sent. Tests run in file
order: the last one kills an actor.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import REPO
from _serve_helpers import free_port as _free_port, start_ray, wait_for as _wait

ray = pytest.importorskip("ray")
websockets = pytest.importorskip("websockets")

MODEL = "tiny-smolvlm"
TOKEN = "rt-token-91ab"
LIMITS = {"idle_timeout_s": 8.0, "max_sessions_per_token": 4, "max_fps": 30}
LECTURE = REPO / "data" / "lecture.mp4"


@pytest.fixture(scope="module")
def env(request, tmp_path_factory):
    """(fleet, url): Ray with 2 CPUs, a RayFleet of two actors, the HTTP app with a token."""
    held = start_ray(request, {"VSTREAM_REALTIME_LIMITS": json.dumps(LIMITS)})

    from vstream.serve.client import RayFleet
    from vstream.serve.http import deploy

    root = tmp_path_factory.mktemp("realtime")
    fleet = held["fleet"] = RayFleet(actors=0, model=MODEL, config="tiny", dtype="float32", num_cpus=1,
                                     storage=root / "storage", health_interval_s=0.2, health_timeout_s=10.0)
    loading = fleet.controller.add_workers.remote(2)
    url = deploy(fleet.controller_name, token=TOKEN, port=_free_port())
    ray.get(loading)
    return fleet, url


def _client(url, sid, **kw):
    from vstream.serve.client import RealtimeClient

    return RealtimeClient(url, sid, token=TOKEN, **kw).connect()


def _jpeg(rgb) -> bytes:
    from vstream.cli.push import jpeg

    return jpeg(rgb, 320, 80)


def _color_jpeg(i: int) -> bytes:
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[..., i % 3] = 40 + (i * 37) % 200
    return _jpeg(rgb)


def _start(rt, first: bytes, ts: float, timeout: float = 120.0) -> None:
    """Send the first frame and wait until the server created (or attached) the stream."""
    rt.append_frame(first, ts)
    assert _wait(lambda: rt.session.get("vstream", {}).get("started"), timeout, 0.05), rt.session


def _health(url) -> dict:
    import httpx

    r = httpx.get(f"{url}/v1/health", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _errors(events, code=None):
    return [e["error"] for e in events if e["type"] == "error" and (code is None or e["error"]["code"] == code)]


# ---- the main path ------------------------------------------------------------------------------------
def test_push_lecture_at_real_time_ask_midway_and_hear_the_speech(env):
    from vstream.sources import open_source
    from vstream.sources.audio import audio_blocks

    fleet, url = env
    seen: list[dict] = []
    rt = _client(url, "lec20", on_event=seen.append)
    rt.update_session(fps=2, input_audio_sample_rate=16000, input_audio_transcription={"model": "default"},
                      stats_interval_s=0.5)
    src = open_source(str(LECTURE), end_s=20.0)
    frames = iter(src)
    first = next(frames)
    t_first = time.monotonic()
    _start(rt, _jpeg(first.rgb), t_first)
    base = time.monotonic()  # client clock at clip time 0 (the first frame above was stamped earlier)
    sent: list[tuple[float, float]] = [(t_first, time.monotonic())]  # (stamp, wall when sent)
    stop = threading.Event()

    def audio():
        for b in audio_blocks(str(LECTURE), 0.0, 20.0):
            dt = base + b.t_start_s - time.monotonic()
            if dt > 0 and stop.wait(dt):
                return
            rt.append_audio((np.clip(b.samples, -1, 1) * 32767).astype("<i2").tobytes(), base + b.t_start_s)

    answer: dict = {}

    def ask():
        time.sleep(10.0)
        answer["asked_wall"] = time.monotonic()
        answer.update(rt.ask("What is the lecture about?", max_output_tokens=24, timeout=120))
        answer["done_wall"] = time.monotonic()

    threads = [threading.Thread(target=audio, daemon=True), threading.Thread(target=ask, daemon=True)]
    for t in threads:
        t.start()
    nxt = 0.0
    for fr in frames:
        if fr.t < nxt:
            continue
        nxt = fr.t + 0.5  # 2 frames per second, as the stream samples
        dt = base + fr.t - time.monotonic()
        if dt > 0:
            time.sleep(dt)
        rt.append_frame(_jpeg(fr.rgb), base + fr.t)
        sent.append((base + fr.t, time.monotonic()))
    threads[0].join(30)
    threads[1].join(150)
    assert "response" in answer, "no answer"
    # the transcript: speech recognised on the worker, stamped on the client's clock
    assert _wait(lambda: any(e["type"] == "transcript.delta" for e in seen), 60, 0.2)
    stop.set()
    # every frame sent reached the stream: none refused, none dropped
    assert _wait(lambda: fleet.stats()["streams"]["lec20"]["frames_in"] == len(sent), 30), \
        (fleet.stats()["streams"]["lec20"], len(sent))
    assert _wait(lambda: rt.session["vstream"]["stats"]["worker"].get("frames_accepted") == len(sent), 10)
    feed = rt.session["vstream"]["stats"]["worker"]
    assert feed.get("frames_dropped", 0) == 0 and rt.session["vstream"]["stats"].get("frames_dropped_queue", 0) == 0
    rt.close()

    assert not _errors(seen), _errors(seen)
    # the answer came in pieces while frames kept flowing
    assert len(answer["deltas"]) >= 2 and answer["text"] == "".join(answer["deltas"])
    done = [e for e in seen if e["type"] == "response.text.done"]
    assert done and done[-1]["text"] == answer["text"]
    during = [s for s, w in sent if answer["asked_wall"] <= w <= answer["done_wall"] + 2.0]
    after = [s for s, w in sent if w > answer["done_wall"]]
    assert during and after, (answer["asked_wall"], answer["done_wall"], sent[-1])
    # evidence: pushed frames, on the client's clock (origin = the first stamp)
    vs = answer["response"]["vstream"]
    origin = t_first
    assert rt.session["vstream"]["clock_origin"] == pytest.approx(origin)
    assert vs["asked_at_client"] == pytest.approx(origin + vs["asked_at_s"])
    assert sent[0][0] - 1e-6 <= vs["asked_at_client"] <= answer["asked_wall"] + 1e-6
    vision = [e for e in vs["evidence"] if e["source"] == "vision"]
    assert vision, vs["evidence"]
    stamps = [s for s, _ in sent]
    for e in vision:
        assert e["client_start"] == pytest.approx(origin + e["start_s"])
        assert e["client_end"] == pytest.approx(origin + e["end_s"])
        assert any(e["client_start"] - 1e-6 <= s < e["client_end"] for s in stamps), (e, stamps[:5])
    # the words of the first sentence (1.0-5.5 s of the clip), at the clip's time on the client's clock
    script = json.loads((REPO / "data" / "lecture.json").read_text())["sentences"][0]
    tr = [e for e in seen if e["type"] == "transcript.delta"]
    words = " ".join(e["delta"].lower() for e in tr)
    assert "steam" in words and "trains" in words, words
    first_seg = tr[0]
    assert first_seg["client_start"] == pytest.approx(origin + first_seg["start_s"])
    clip_t = first_seg["client_start"] - base  # client stamp back to clip time
    assert script["start_s"] - 1.0 <= clip_t <= script["start_s"] + 1.5, (clip_t, script)


# ---- abuse ------------------------------------------------------------------------------------------
def test_bad_messages_get_error_events_and_the_session_stays_usable(env):
    fleet, url = env
    seen: list[dict] = []
    rt = _client(url, "abuse", on_event=seen.append)
    rt.update_session(stats_interval_s=0.5)
    t0 = time.monotonic()
    _start(rt, _color_jpeg(0), t0)
    big = b"\xff\xd8\xff" + os.urandom(int(8.5 * 2**20))  # over the 8 MiB frame limit, under the message limit
    rt.append_frame(big, t0 + 0.1, event_id="big")
    rt.append_frame(b"GIF89a not an image at all", t0 + 0.2, event_id="gif")
    rt.append_frame(b"\xff\xd8\xff\xe0 truncated jpeg", t0 + 0.25, event_id="broken")  # passes the magic check
    rt.append_frame(_color_jpeg(1), t0 + 0.3)
    rt.append_frame(_color_jpeg(2), t0 + 0.2, event_id="back")  # backwards
    rt.append_frame(_color_jpeg(3), t0 + 10_000, event_id="future")  # far ahead of the wall clock
    rt.send({"type": "no.such.event"})
    rt.send({"type": "response.create"})  # nothing asked yet
    rt._ws.send("{not json")
    n_flood = 1000
    flood = [_color_jpeg(i % 7) for i in range(n_flood)]
    w0 = time.monotonic()
    for i in range(n_flood):  # 1,000 frames in about a second
        rt.append_frame(flood[i], t0 + 0.5 + i / 1000)
    flood_s = time.monotonic() - w0
    time.sleep(1.2)
    rt.append_frame(_color_jpeg(4), t0 + 3.0)  # after all that: accepted
    list(rt.events())  # what came so far is in `seen`
    ans = rt.ask("What colour was it?", max_output_tokens=4, timeout=60)
    assert ans["text"]
    assert _wait(lambda: rt.session["vstream"]["stats"].get("worker", {}).get("frames_accepted", 0) >= 3, 20)
    errs = _errors(seen)
    codes = {e["code"] for e in errs}
    by_id = {e["event_id"]: e["code"] for e in errs if e["event_id"]}
    assert by_id.get("big") == "frame_too_large" and by_id.get("gif") == "invalid_frame"
    assert by_id.get("back") == "timestamp_not_increasing" and by_id.get("future") == "timestamp_skew"
    assert {"invalid_frame", "unknown_event", "no_question", "invalid_json", "rate_limited"} <= codes, codes
    assert any("cannot be decoded" in e["message"] for e in errs)  # the truncated JPEG, refused by the worker
    limited = [e for e in errs if e["code"] == "rate_limited"]
    assert _wait(lambda: rt.session["vstream"]["stats"]["frames_rate_limited"] == len(limited)
                 + rt.session["vstream"]["stats"].get("events_dropped", 0), 10)  # each one told, or counted
    st = rt.session["vstream"]["stats"]
    assert st["frames_rate_limited"] >= n_flood - LIMITS["max_fps"] * (flood_s + 2), (st, flood_s)
    assert st["frames_refused"] >= 2
    for e in errs:  # one line, naming no server path
        assert "\n" not in e["message"] and "/work" not in e["message"] and "Traceback" not in e["message"]
    rt.close()
    assert _health(url)["workers_alive"] == 2


def test_transport_refusals_and_the_server_is_healthy_after(env):
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    from vstream.serve.realtime_client import ws_url

    fleet, url = env
    target = ws_url(url, "abuse2")
    with pytest.raises(InvalidStatus) as no_token:
        with connect(target, open_timeout=30):
            pass
    assert no_token.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        with connect(target, additional_headers={"Authorization": "Bearer wrong"}, open_timeout=30):
            pass
    with connect(target, subprotocols=["realtime", f"openai-insecure-api-key.{TOKEN}"], open_timeout=30) as ws:
        assert ws.subprotocol == "realtime"  # the token went as a subprotocol, as browsers must send it
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
    # a 20 MB frame: over the transport's message limit, the connection is closed (1009), nothing else
    with connect(target, additional_headers={"Authorization": f"Bearer {TOKEN}"}, max_size=None,
                 open_timeout=30) as ws:
        ws.recv(timeout=30)
        big = base64.b64encode(b"\xff\xd8\xff" + os.urandom(20 * 10**6)).decode()
        with pytest.raises(ConnectionClosed):
            ws.send(json.dumps({"type": "input_video_frame.append", "image": big, "timestamp": 1.0}))
            while True:
                ws.recv(timeout=30)
    # sessions per token
    held = [_client(url, f"many-{i}") for i in range(LIMITS["max_sessions_per_token"])]
    with pytest.raises(InvalidStatus):
        with connect(ws_url(url, "many-x"), additional_headers={"Authorization": f"Bearer {TOKEN}"}, open_timeout=30):
            pass
    for c in held:
        c.close()
    # a client that never reads: errors queue, are dropped past the bound (counted), the server goes on
    raw_cm = connect(target, additional_headers={"Authorization": f"Bearer {TOKEN}"}, open_timeout=30, max_queue=4)
    raw = raw_cm.__enter__()
    n = 3000
    for i in range(n):
        raw.send('{"type": "nope", "padding": "' + "x" * 400 + '"}')
    assert _health(url)["workers_alive"] == 2  # meanwhile: healthy, and another session works
    with _client(url, "bystander") as rt:
        rt.update_session(fps=2)
        assert rt.wait_for("session.updated", 30)
    got = 0
    dropped = None
    end = time.monotonic() + 120
    while time.monotonic() < end:  # now read everything: what came plus what was dropped is every error
        try:
            ev = json.loads(raw.recv(timeout=5))
        except TimeoutError:
            raw.send('{"type": "session.update", "session": {"stats_interval_s": 0.5}}')
            continue
        if ev["type"] == "error":
            got += 1
        elif ev["type"] == "session.updated" and got + ev["session"]["vstream"]["stats"].get("events_dropped", 0) >= n:
            dropped = ev["session"]["vstream"]["stats"].get("events_dropped", 0)
            break
    raw_cm.__exit__(None, None, None)
    assert dropped is not None and got + dropped == n, (got, dropped)
    # a client that vanishes (no close frame): its session ends, the stream stays (detached) with its memory
    gone = _client(url, "vanisher")
    t1 = time.monotonic()
    _start(gone, _color_jpeg(0), t1)
    for i in range(1, 5):
        gone.append_frame(_color_jpeg(i), t1 + i * 0.5)
    assert fleet.wait_chunks("vanisher", 1, timeout=60)
    assert _wait(lambda: fleet.stats()["streams"]["vanisher"].get("push", {}).get("attached"), 30)
    gone._ws.socket.shutdown(socket.SHUT_RDWR)  # the network went away
    gone._ws.socket.close()
    assert _wait(lambda: not fleet.stats()["streams"]["vanisher"]["push"]["attached"], 30)
    assert "vanisher" in fleet.placement() and fleet.stats()["streams"]["vanisher"]["long_term_entries"] >= 1
    # the idle timeout ends a silent session (the stream stays)
    seen: list[dict] = []
    with _client(url, "idle", on_event=seen.append) as rt:
        t0 = time.monotonic()
        assert _wait(lambda: not rt.open, LIMITS["idle_timeout_s"] + 10)
        assert time.monotonic() - t0 >= LIMITS["idle_timeout_s"] - 1
    assert [e["error"]["code"] for e in seen if e["type"] == "error"] == ["idle_timeout"]
    assert _health(url)["workers_alive"] == 2


def test_commentary_follows_the_pushed_chunks(env):
    fleet, url = env
    seen: list[dict] = []
    rt = _client(url, "narrator", on_event=seen.append)
    rt.update_session(fps=2, commentary=True)
    t0 = time.monotonic()
    _start(rt, _color_jpeg(0), t0)
    for i in range(1, 10):  # 4.5 s of frames at real time
        time.sleep(max(0.0, t0 + i * 0.5 - time.monotonic()))
        rt.append_frame(_color_jpeg(i), t0 + i * 0.5)
    assert _wait(lambda: [e for e in seen if e["type"] == "commentary.done"], 60)
    rt.close()
    done = [e for e in seen if e["type"] == "commentary.done"]
    deltas = [e for e in seen if e["type"] == "commentary.delta"]
    first = done[0]
    assert first["text"] == "".join(d["delta"] for d in deltas if d["chunk"] == first["chunk"]) and first["text"]
    assert first["client_timestamp"] == pytest.approx(t0 + first["stream_time_s"])
    assert 1.0 <= first["stream_time_s"] <= 5.0
    assert not _errors(seen)


# ---- the command line -------------------------------------------------------------------------------
def test_vstream_push_feeds_a_stream_that_answers_over_http_and_websocket(env, tmp_path):
    import httpx

    fleet, url = env
    tok = tmp_path / "token"
    tok.write_text(TOKEN + "\n")
    envv = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "vstream", "push", str(LECTURE), "--to", url, "--stream", "lec",
                        "--token-file", str(tok), "--duration", "13", "--ask", "What is on the slide?",
                        "--ask-at", "4", "--linger", "6", "--json"], capture_output=True, text=True, timeout=300, env=envv, cwd=REPO)
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["frames"] >= 25 and summary["errors"] == 0 and summary["audio_s"] == pytest.approx(13.0, abs=0.6)
    assert len(summary["answers"]) == 1 and summary["answers"][0]
    assert "steam" in summary["transcript"].lower(), summary  # the first 10 s window of speech, recognised
    placement = fleet.placement()["lec"]
    assert placement["source"] == "push:"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.post(f"{url}/v1/streams/lec/ask", json={"question": "What was said about trains?",
                                                       "max_new_tokens": 6}, headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] and body["asked_at_s"] >= 11.0 and body["evidence"]
    assert any("speech:" in (e.get("text") or "") for e in body["evidence"])  # the pushed audio, recognised
    with _client(url, "lec") as rt:  # attach to the stream the push made
        assert rt.session["vstream"]["attached"] and rt.session["vstream"]["started"]
        ans = rt.ask("And what did you see?", max_output_tokens=6, timeout=120)
        assert ans["text"] and ans["response"]["vstream"]["evidence"]


# ---- the death of the stream's actor (last: it leaves one actor) -------------------------------------------
def test_session_survives_the_death_of_its_actor(env):
    from vstream.serve.realtime_client import RealtimeError

    fleet, url = env
    seen: list[dict] = []
    rt = _client(url, "phoenix", on_event=seen.append)
    rt.update_session(fps=2)
    t0 = time.monotonic()
    _start(rt, _color_jpeg(0), t0)
    i = 1
    while i < 12:  # 6 s of frames at real time
        time.sleep(max(0.0, t0 + i * 0.5 - time.monotonic()))
        rt.append_frame(_color_jpeg(i), t0 + i * 0.5)
        i += 1
    assert fleet.wait_chunks("phoenix", 4, timeout=60)
    victim_name, victim = fleet.actor_of("phoenix")
    t_kill = fleet.stats()["streams"]["phoenix"]["stream_time_s"]
    ray.kill(victim, no_restart=True)
    assert _wait(lambda: not rt.open, 60)  # the server says so and closes (1012)
    assert rt.close_code == 1012 and "stream_moved" in [e["error"]["code"] for e in seen if e["type"] == "error"]
    rt.close()
    assert _wait(lambda: fleet.placement()["phoenix"]["worker"] not in (None, victim_name), 60)
    rt = _client(url, "phoenix", on_event=seen.append)  # the client reconnects: the same stream, attached
    assert rt.session["vstream"]["attached"]
    for _ in range(10):  # and goes on with its own clock
        time.sleep(max(0.0, t0 + i * 0.5 - time.monotonic()))
        rt.append_frame(_color_jpeg(i), t0 + i * 0.5)
        i += 1
    try:
        ans = rt.ask("What did you see before?", max_output_tokens=4, timeout=120)
    except RealtimeError as e:
        pytest.fail(f"no answer after the reconnect: {e}; events: {seen[-5:]}")
    rt.close()
    vs = ans["response"]["vstream"]
    assert vs["asked_at_s"] > t_kill  # the stream clock went on from the stored memory
    old = [e for e in vs["evidence"] if e["tier"] == "long_term" and e["end_s"] <= t_kill]
    assert old, vs["evidence"]  # memory from before the death, read from its directory
    for e in old:  # on the same client clock as before the death
        assert e["client_start"] == pytest.approx(t0 + e["start_s"])
    assert fleet.placement()["phoenix"]["resumed_at_s"] >= t_kill - 1.0
    assert _health(url)["workers_alive"] == 1
