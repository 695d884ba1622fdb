"""The chat-completions judge against a real HTTP server on 127.0.0.1 started by the test."""
from __future__ import annotations

import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from eval.infstreams import judge_infstreams
from eval.judge import ChatJudge, parse_ab

KEY = "sk-test-SECRET-7f3a9c"
ENV = "VSTREAM_TEST_JUDGE_KEY"


class ChatServer:
    """A tiny OpenAI-compatible server: ``respond(body, headers) -> (status, content)`` per request."""

    def __init__(self, respond):
        self.respond = respond
        self.requests: list[tuple[dict, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append((body, headers))
                if self.path != "/v1/chat/completions":
                    status, content = 404, "not found"
                else:
                    status, content = outer.respond(body, headers)
                if status == 200:
                    payload = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                          "choices": [{"index": 0, "finish_reason": "stop",
                                                       "message": {"role": "assistant", "content": content}}]})
                else:
                    payload = json.dumps({"error": {"message": content}})
                data = payload.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def scripted(replies):
    """Answer requests with (status, content) pairs in order."""
    it = iter(replies)
    return lambda body, headers: next(it)


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    return ENV


def make_judge(url, **kw):
    return ChatJudge(url, "judge-model-x", api_key_env=ENV, backoff_s=0.0, **kw)


def test_retries_on_5xx_then_succeeds(key_env, caplog):
    caplog.set_level(logging.DEBUG)
    with ChatServer(scripted([(500, "boom"), (503, "busy"), (200, "A")])) as srv:
        j = make_judge(srv.url)
        assert j.pairwise("ref", "one", "two") == "A"
    assert j.stats.http_retries == 2 and j.stats.requests == 3 and j.stats.invalid == 0
    body, headers = srv.requests[0]
    assert body["model"] == "judge-model-x" and body["temperature"] == 0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "one" in body["messages"][1]["content"] and "two" in body["messages"][1]["content"]
    assert headers["authorization"] == f"Bearer {KEY}"  # the key is sent ...
    assert KEY not in caplog.text  # ... and never logged


def test_5xx_exhausted_raises_one_line(key_env):
    with ChatServer(scripted([(502, "bad gateway")] * 3)) as srv:
        j = make_judge(srv.url, max_retries=2)
        with pytest.raises(RuntimeError, match=r"failed after 3 attempts \(HTTP 502\)") as e:
            j.pairwise("r", "a", "b")
    assert "\n" not in str(e.value) and len(srv.requests) == 3


def test_invalid_replies_are_retried_then_counted(key_env):
    with ChatServer(scripted([(200, "A."), (200, "Candidate A is better"), (200, "b"),  # 3 invalid -> None
                              (200, "I pick B"), (200, " B ")])) as srv:  # invalid, then valid
        j = make_judge(srv.url, invalid_retries=2)
        assert j.pairwise("r", "a", "b") is None
        assert j.pairwise("r", "a", "b") == "B"
    assert j.stats.invalid == 1 and j.stats.invalid_retries == 3 and len(srv.requests) == 5


def test_client_error_is_not_retried_and_key_is_redacted(key_env, caplog):
    caplog.set_level(logging.DEBUG)
    with ChatServer(scripted([(401, f"Incorrect API key provided: {KEY}")])) as srv:
        j = make_judge(srv.url)
        with pytest.raises(RuntimeError) as e:
            j.pairwise("r", "a", "b")
    msg = str(e.value)
    assert "HTTP 401" in msg and KEY not in msg and "***" in msg and ENV in msg
    assert len(srv.requests) == 1 and KEY not in caplog.text and KEY not in repr(j)


def test_unreachable_server_is_retried_then_raises(key_env):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    j = ChatJudge(f"http://127.0.0.1:{port}/v1", "m", api_key_env=ENV, backoff_s=0.0, max_retries=1, timeout_s=2)
    with pytest.raises(RuntimeError, match="failed after 2 attempts"):
        j.pairwise("r", "a", "b")
    assert j.stats.http_retries == 1


def test_rating_through_the_server(key_env):
    with ChatServer(scripted([(200, "{'pred': 'yes', 'score': 4}"), (200, "great answer"), (200, "nope"),
                              (200, "nah")])) as srv:
        j = make_judge(srv.url, invalid_retries=2)
        assert j.rate_answer("q?", "a red cup", "a red cup") == {"pred": "yes", "score": 4}
        assert j.rate_answer("q?", "a", "b") is None
    assert j.stats.invalid == 1
    assert "a red cup" in srv.requests[0][0]["messages"][1]["content"]


def _candidates(user: str) -> tuple[str, str]:
    a = re.search(r"<A>\n(.*?)\n</A>", user, re.S).group(1)
    b = re.search(r"<B>\n(.*?)\n</B>", user, re.S).group(1)
    return a, b


def test_infstreams_judging_both_orders_win_rate_and_no_key_in_files(key_env, tmp_path, caplog):
    """The server prefers the candidate that mentions a goal; ours does in window 0, the reference in
    window 1; window 2 gets an unparsable reply in one order."""
    caplog.set_level(logging.DEBUG)
    merged = tmp_path / "merged.jsonl"
    items = [{"response": "what a goal by the striker", "start_time": 100, "end_time": 101},
             {"response": "the ball goes wide", "start_time": 110, "end_time": 111},
             {"response": "quiet spell", "start_time": 120, "end_time": 121}]
    merged.write_text(json.dumps({"video": "g.mp4", "items": items}) + "\n")
    windows = tmp_path / "windows.jsonl"
    rows = [{"video": "g.mp4", "title": "w0", "content": [[99.5, 101.0, "a shot from distance"]], "preasr": ""},
            {"video": "g.mp4", "title": "w1", "content": [[109.5, 111.0, "goal for the home side"]], "preasr": ""},
            {"video": "g.mp4", "title": "w2", "content": [[119.5, 121.0, "nothing happens"]], "preasr": ""},
            {"video": "g.mp4", "title": "before", "content": [[10, 20, "kick-off"]], "preasr": ""},
            {"video": "other.mp4", "title": "x", "content": [[1, 2, "x"]], "preasr": ""}]
    windows.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    def respond(body, headers):
        assert headers.get("authorization") == f"Bearer {KEY}"
        a, b = _candidates(body["messages"][1]["content"])
        if "quiet" in a:
            return 200, "I cannot decide"
        if "quiet" in b:
            return 200, "A"
        return 200, "A" if "goal" in a else "B"

    with ChatServer(respond) as srv:
        judge = make_judge(srv.url, invalid_retries=1)
        s = judge_infstreams(str(merged), str(windows), str(tmp_path / "out"), judge, protocol="vstream",
                             show_progress=False)
    # w0: ours wins both orders; w1: reference wins both; w2: one invalid order + one vote for the other
    assert (s["votes_ours"], s["votes_other"], s["invalid"], s["windows"]) == (2, 3, 1, 3)
    assert s["win_rate"] == pytest.approx(40.0)
    assert s["windows_outside_run"] == 1 and s["other"] == "reference"
    assert s["judge"]["invalid"] == 1 and s["judge"]["judge"] == "chat:judge-model-x"
    lines = [json.loads(x) for x in (tmp_path / "out" / "judgements.jsonl").read_text().splitlines()]
    assert [(x["ours_first"], x["ours_second"]) for x in lines] == [("A", "B"), ("B", "A"), (None, "A")]
    assert len(srv.requests) == 2 + 2 + 3  # w2: the invalid order is asked twice (1 retry)
    for p in Path(tmp_path / "out").rglob("*"):
        if p.is_file():
            assert KEY not in p.read_text(), p
    assert KEY not in caplog.text
    assert parse_ab(" A ") == "A"


def test_official_judging_sends_the_official_prompts_and_parses_as_the_official_code(key_env, tmp_path):
    """Inf-Streams: judge.py's prompts, no max_tokens, "A" only when the reply starts with A (a reply that
    starts with neither letter is a B vote and is counted). RVS: eval_open_ended.py's prompts, max_tokens 300,
    the reply read as a Python literal; an unreadable one is asked again, a bounded number of times."""
    from eval import prompts

    replies = [(200, " a, clearly"), (200, "I prefer the second"), (200, "{'pred': 'yes', 'score': 4.8}"),
               (200, "```json {\"pred\": \"no\"}```"), (200, "nope"), (200, "still nope")]
    with ChatServer(scripted(replies)) as srv:
        judge = make_judge(srv.url, invalid_retries=1)
        assert judge.vote_official("  ref  ", " ours ", "theirs") == "A"
        assert judge.vote_official("ref", "theirs", "ours") == "B"
        assert judge.rate_official("What?", "a cup", "a red cup") == {"pred": "yes", "score": 4.8}
        assert judge.rate_official("What?", "a cup", "x") is None
    (b0, _), (_, _), (b2, _), (b3, _), (b4, _) = srv.requests[:5]
    assert b0["messages"][0]["content"] == prompts.INF_JUDGE_SYSTEM and "max_tokens" not in b0
    assert b0["messages"][1]["content"] == prompts.INF_JUDGE_USER.format(reference="ref", A="ours", B="theirs")
    assert b2["messages"][0]["content"] == prompts.RVS_JUDGE_SYSTEM and b2["max_tokens"] == 300
    assert "Predicted Answer: a red cup\n\n" in b2["messages"][1]["content"] and b2["temperature"] == 0
    assert len(srv.requests) == 5  # the unreadable rating: asked twice (1 retry), then counted invalid
    assert judge.stats.not_a_letter == 1 and judge.stats.invalid == 1
