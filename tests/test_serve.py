"""RayFleet on a local Ray cluster (2 CPUs, two tiny-smolvlm actors) and its HTTP API on Ray Serve.

References: a single-process ``vstream.Fleet`` on the same frames (token ids of greedy answers, ask_all
ranking); the event log file itself (every alert once); real clients (httpx, openai) on 127.0.0.1.
One cluster, one RayFleet and one Serve app for the whole module (starting them is most of the time).
"""
from __future__ import annotations

import json
import math
import time

import pytest

from conftest import tiny_adapter
from _serve_helpers import free_port as _free_port, start_ray, wait_for as _wait

ray = pytest.importorskip("ray")

MODEL = "tiny-smolvlm"
TOKEN = "test-token-5f1c"
CONDITIONS = ["a person enters", "a red car stops"]


env_state: dict = {}  # what one test leaves for the next (the module shares one cluster)


@pytest.fixture(scope="module")
def env(request, tmp_path_factory):
    """(fleet, url, allow_dir): Ray with 2 CPUs, a RayFleet of two actors, the HTTP app with a token."""
    held = start_ray(request)

    from vstream.serve.client import RayFleet
    from vstream.serve.http import deploy

    root = tmp_path_factory.mktemp("serve")
    allow = root / "allowed"
    allow.mkdir()
    fleet = held["fleet"] = RayFleet(actors=0, model=MODEL, config="tiny", dtype="float32", num_cpus=1,
                                     storage=root / "storage", health_interval_s=0.2, health_timeout_s=10.0)
    loading = fleet.controller.add_workers.remote(2)  # the models load while Serve starts
    url = deploy(fleet.controller_name, token=TOKEN, allow_dir=str(allow), port=_free_port())
    ray.get(loading)
    return fleet, url, allow


def _synthetic(seed: int, duration, fps: int = 4) -> str:
    return f"synthetic:seed={seed},duration={duration},fps={fps},size=32x32"


def test_two_actors_four_streams_equal_a_single_process_fleet(env, tmp_path):
    from vstream.api import Agent
    from vstream.config import from_name
    from vstream.fleet.core import Fleet

    fleet, _, _ = env
    ids = [f"eq-{i}" for i in range(4)]
    for i, sid in enumerate(ids):
        fleet.add(sid, _synthetic(i, 8))
    per_worker = sorted(len(w["streams"]) for w in fleet.actors().values())
    assert per_worker == [2, 2]  # placed by load
    for sid in ids:
        assert fleet.wait_chunks(sid, 8, timeout=60)
    got = {sid: fleet.ask(sid, "What is happening on screen?", history=False, timeout=60) for sid in ids}
    hits = fleet.ask_all("a moving square", top=4)
    st = fleet.stats()
    assert st["total"]["chunks"] == 32 and {st["streams"][s]["worker"] for s in ids} == set(fleet.actors())

    ref_fleet = Fleet(Agent(tiny_adapter(MODEL), from_name("tiny")))
    with ref_fleet:
        for i, sid in enumerate(ids):
            ref_fleet.add(sid, _synthetic(i, 8), memory_dir=tmp_path / sid)
        for sid in ids:
            assert ref_fleet.stream(sid).wait_chunks(8, timeout=60)
        want = {sid: ref_fleet.ask(sid, "What is happening on screen?", history=False, timeout=60) for sid in ids}
        ref_hits = ref_fleet.ask_all("a moving square", top=4)
    for sid in ids:
        a, b = got[sid], want[sid]
        assert a.token_ids == b.token_ids and len(a.token_ids) == 8, sid
        assert a.asked_at_s == b.asked_at_s == 8.0
        assert [(e.start_s, e.source, e.entry_id) for e in a.evidence] == \
            [(e.start_s, e.source, e.entry_id) for e in b.evidence]
        assert any(e.tier == "long_term" for e in a.evidence)  # 8 chunks, window of 4: retrieval happened
        for x, y in zip(a.evidence, b.evidence):
            assert math.isclose(x.score, y.score, rel_tol=1e-3, abs_tol=1e-4)
    assert [h.stream for h in hits] == [h.stream for h in ref_hits]
    for h, r in zip(hits, ref_hits):
        assert math.isclose(h.score, r.score, rel_tol=1e-3, abs_tol=1e-4)
        assert [(e.start_s, e.source) for e in h.evidence] == [(e.start_s, e.source) for e in r.evidence]
    for sid in ids:
        fleet.remove(sid)
    assert fleet.streams == []


def test_killed_actor_streams_resume_elsewhere_and_alerts_are_logged_once(env):
    from vstream.fleet.events import EventLog

    fleet, _, _ = env
    ids = ["live-a", "live-b"]
    notify = [{"text": c, "threshold": 1e-9, "cooldown_s": 1e6} for c in CONDITIONS]
    for i, sid in enumerate(ids):  # endless, paced to the wall clock: mid-stream whenever we look
        fleet.add(sid, _synthetic(10 + i, "inf"), realtime=True, notify=notify)
    placed = fleet.placement()
    assert placed["live-a"]["worker"] != placed["live-b"]["worker"]
    for sid in ids:
        assert fleet.wait_chunks(sid, 5, timeout=60)

    def alerts():
        return [e for e in fleet.events(follow=False) if e["type"] == "alert" and e["stream"] in ids]

    assert _wait(lambda: len(alerts()) == 4, 60)  # each condition fired at the first chunk, once
    victim_name, victim = fleet.actor_of("live-a")
    survivor = placed["live-b"]["worker"]
    t_kill = fleet.stats()["streams"]["live-a"]["stream_time_s"]
    ray.kill(victim, no_restart=True)
    # a replacement loads meanwhile; the next test rebalances onto it (add_actor() does both at once)
    env_state["adding"] = fleet.controller.add_worker.remote(rebalance=False)
    assert _wait(lambda: fleet.placement()["live-a"]["worker"] == survivor, 60)
    assert victim_name not in fleet.actors()
    # every ingested chunk was on disk: at most the one being committed when we looked is lost
    assert fleet.placement()["live-a"]["resumed_at_s"] >= t_kill - 1.0
    assert fleet.wait_chunks("live-a", 2, timeout=60)  # ingesting again, on the survivor
    ans = fleet.ask("live-a", "What did you see earlier?", history=False, timeout=60)
    assert ans.asked_at_s > t_kill  # the stream clock went on from the stored memory
    before = [e for e in ans.evidence if e.tier == "long_term" and e.end_s <= t_kill]
    assert before, ans.evidence  # memory from before the kill, read from its directory
    time.sleep(1.5)  # more chunks, more checks: a condition that stays true does not fire again
    logged = [e for e in EventLog.read(fleet.event_log) if e["stream"] in ids]
    got = sorted((e["stream"], e["condition"]) for e in logged if e["type"] == "alert")
    assert got == sorted((s, c) for s in ids for c in CONDITIONS)
    all_logged = EventLog.read(fleet.event_log)
    assert [e["seq"] for e in all_logged] == list(range(len(all_logged)))
    assert len({e["id"] for e in all_logged}) == len(all_logged)
    ups = [e for e in logged if e["stream"] == "live-a" and e["type"] == "up"]
    assert len(ups) == 2 and ups[0]["worker"] == victim_name and ups[1]["worker"] == survivor
    st = fleet.stats()
    assert st["total"]["worker_deaths"] == 1
    assert st["total"]["events_deduplicated"] >= 3  # the dead placement's outbox was replayed: nothing twice


def test_added_and_removed_actors_move_streams_with_their_memory(env):
    from vstream.fleet.events import EventLog

    fleet, _, _ = env
    ids = ["live-a", "live-b"]
    new = ray.get(env_state.pop("adding"), timeout=300)
    assert fleet.rebalance() == 1  # one stream each now
    placed = fleet.placement()
    assert sorted(len(w["streams"]) for w in fleet.actors().values()) == [1, 1]
    moved = next(sid for sid in ids if placed[sid]["worker"] == new)
    assert placed[moved]["moves"] == 1 and placed[moved]["resumed_at_s"] > 0
    assert fleet.wait_chunks(moved, 2, timeout=60)
    ans = fleet.ask(moved, "What happened at the start?", history=False, timeout=60)
    assert any(e.tier == "long_term" and e.start_s < placed[moved]["resumed_at_s"] for e in ans.evidence)
    assert fleet.remove_actor(new) == new  # graceful: its stream moves back first
    assert new not in fleet.actors() and {p["worker"] for p in fleet.placement().values()} == set(fleet.actors())
    assert fleet.placement()[moved]["moves"] == 2
    assert fleet.wait_chunks(moved, 1, timeout=60)
    for sid in ids:
        fleet.remove(sid)
    logged = [e for e in EventLog.read(fleet.event_log) if e["stream"] in ids]
    alerts = sorted((e["stream"], e["condition"]) for e in logged if e["type"] == "alert")
    assert alerts == sorted((s, c) for s in ids for c in CONDITIONS)  # moves raise no alert again
    assert sorted(e["stream"] for e in logged if e["type"] == "removed") == ids  # a move is not a removal


def test_http_api_end_to_end(env):
    import httpx
    import openai
    from prometheus_client.parser import text_string_to_metric_families

    fleet, url, allow = env
    auth = {"Authorization": f"Bearer {TOKEN}"}
    c = httpx.Client(base_url=url, headers=auth, timeout=60)
    assert httpx.get(f"{url}/v1/health").json()["workers_alive"] >= 1  # open: no token needed
    body = {"id": "web-1", "source": _synthetic(5, 6), "options": {"fps": 2}}
    r = httpx.post(f"{url}/v1/streams", json=body)
    assert r.status_code == 401 and "bearer token" in r.json()["error"]["message"]
    assert httpx.get(f"{url}/v1/events", headers={"Authorization": "Bearer wrong"}).status_code == 401
    for bad, status in (("/etc/passwd", 403), (str(allow / ".." / "x.mp4"), 403), ("/dev/video0", 403),
                        ("missing.mp4", 400), ("file:///etc/passwd", 400),
                        ("synthetic:seed=1,events=/etc/passwd", 403), ("synthetic:seed=1,colour=red", 400)):
        r = c.post("/v1/streams", json={"id": "bad", "source": bad})
        assert r.status_code == status, (bad, r.text)
        assert r.json()["error"]["message"]
    assert "outside the allowed directory" in c.post("/v1/streams", json={"id": "bad", "source": "/etc/passwd"}
                                                     ).json()["error"]["message"]
    r = c.post("/v1/streams", json=body)
    assert r.status_code == 201, r.text
    assert c.post("/v1/streams", json=body).status_code == 409
    assert c.post("/v1/streams", json={"id": "x", "source": "synthetic", "options": {"memory_dir": "/"}}
                  ).status_code == 400
    assert fleet.wait_chunks("web-1", 6, timeout=60)
    info = c.get("/v1/streams/web-1").json()
    assert info["stats"]["chunks"] == 6 and info["worker"] in fleet.actors()
    assert c.get("/v1/streams/nope").status_code == 404

    q = {"question": "What is on screen?", "history": False}
    plain = c.post("/v1/streams/web-1/ask", json=q).json()
    assert plain["asked_at_s"] == 6.0 and plain["evidence"] and len(plain["token_ids"]) == 8
    with c.stream("POST", "/v1/streams/web-1/ask?stream=true", json=q) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _parse_sse(r.iter_lines())
    answer = [d for ev, d in events if ev == "answer"]
    assert len(answer) == 1 and answer[0]["token_ids"] == plain["token_ids"]  # same memory, greedy
    pieces = "".join(d["text"] for ev, d in events if ev == "piece")
    assert pieces.strip(), "no text was streamed before the answer"
    # the streamed pieces are the decoded answer (the final text is stripped; a trailing incomplete
    # character may be held back by the streamer)
    assert answer[0]["text"].startswith(pieces.strip())

    with c.stream("GET", "/v1/events", params={"follow": "false"}) as r:
        evs = [d for _, d in _parse_sse(r.iter_lines())]
    mine = [e for e in evs if e["stream"] == "web-1"]
    assert [e["type"] for e in mine][:1] == ["up"] and all("id" in e for e in evs)
    with c.stream("GET", "/v1/events", params={"follow": "false"},
                  headers={"Last-Event-ID": str(mine[0]["seq"])}) as r:
        later = [d for _, d in _parse_sse(r.iter_lines())]
    assert [e["seq"] for e in later] == [e["seq"] for e in evs if e["seq"] > mine[0]["seq"]]

    res = c.get("/v1/search", params={"q": "a moving square"}).json()["results"]
    assert res and res[0]["stream"] == "web-1" and res[0]["evidence"]

    oc = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)
    assert "web-1" in [m.id for m in oc.models.list().data]
    done = oc.chat.completions.create(model="web-1", messages=[{"role": "user", "content": "What is on screen?"}])
    assert done.choices[0].message.content == plain["text"] and done.usage.completion_tokens == 8
    parts, finish = [], None
    for ch in oc.chat.completions.create(model="web-1", messages=[{"role": "user", "content": "And now?"}],
                                         stream=True, max_tokens=4):
        parts.append(ch.choices[0].delta.content or "")
        finish = ch.choices[0].finish_reason or finish
    assert finish == "length"
    with pytest.raises(openai.NotFoundError):
        oc.chat.completions.create(model="no-such-stream", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()

    text = c.get("/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    chunks = [s for s in fams["vstream_stream_chunks"].samples if s.labels["stream"] == "web-1"]
    assert chunks and chunks[0].value == 6
    tiers = {s.labels["tier"] for s in fams["vstream_stream_memory_bytes"].samples if s.labels["stream"] == "web-1"}
    assert tiers == {"device", "ram", "disk"}
    assert any(s.labels["quantile"] == "0.95" for s in fams["vstream_stream_ttft_seconds"].samples)

    assert c.delete("/v1/streams/web-1").json() == {"id": "web-1", "removed": True}
    assert c.delete("/v1/streams/web-1").status_code == 404


def _parse_sse(lines) -> list[tuple[str, dict]]:
    out, ev, data = [], "message", []
    for line in lines:
        if line == "":
            if data:
                out.append((ev, json.loads("\n".join(data))))
            ev, data = "message", []
        elif line.startswith("event:"):
            ev = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    return out
