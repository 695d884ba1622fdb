"""The realtime protocol without a server: message checks (``realtime_protocol``) and the worker's push feed
(``push_stream.PushFeed``: image decoding, the client clock and its persisted origin, increasing stamps)."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from vstream.serve import realtime_protocol as rp
from vstream.serve.push_stream import PushFeed, decode_image


def _png(rgb) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _msg(**kw) -> str:
    return json.dumps(kw)


def test_parse_refuses_bad_messages_with_a_code():
    lim = rp.RealtimeLimits(max_message_bytes=1000)
    for text, code in [("{oops", "invalid_json"), ("[1, 2]", "invalid_event"), (_msg(type="x.y"), "unknown_event"),
                       ("x" * 1001, "message_too_large")]:
        with pytest.raises(rp.ProtocolError) as e:
            rp.parse(text, lim)
        assert e.value.code == code and "\n" not in e.value.message
    assert rp.parse(_msg(type="response.create"), lim)["type"] == "response.create"


def test_frame_item_checks_size_kind_and_timestamp():
    lim = rp.RealtimeLimits(max_frame_bytes=5000)
    png = _png(np.zeros((8, 8, 3), np.uint8))
    data, ts = rp.frame_item({"image": base64.b64encode(png).decode(), "timestamp": 3.5}, lim)
    assert data == png and ts == 3.5
    cases = [({"image": base64.b64encode(b"GIF89a....").decode(), "timestamp": 1}, "invalid_frame"),
             ({"image": "not base64!!", "timestamp": 1}, "invalid_base64"),
             ({"image": base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(6000)).decode(), "timestamp": 1}, "frame_too_large"),
             ({"image": base64.b64encode(png).decode()}, "invalid_timestamp"),
             ({"image": base64.b64encode(png).decode(), "timestamp": "soon"}, "invalid_timestamp"),
             ({"image": base64.b64encode(png).decode(), "timestamp": True}, "invalid_timestamp")]
    for msg, code in cases:
        with pytest.raises(rp.ProtocolError) as e:
            rp.frame_item(msg, lim)
        assert e.value.code == code, (msg, e.value.code)


def test_session_changes_and_questions():
    assert rp.session_changes({"session": {"fps": 2, "commentary": True}}, started=False) == {"fps": 2,
                                                                                             "commentary": True}
    with pytest.raises(rp.ProtocolError, match="cannot change once the stream has started"):
        rp.session_changes({"session": {"fps": 2}}, started=True)
    assert rp.session_changes({"session": {"stats_interval_s": 1}}, started=True) == {"stats_interval_s": 1}
    for bad in ({"fps": 0}, {"input_audio_sample_rate": 44100}, {"input_audio_format": "g711_ulaw"},
                {"alerts": "a person"}, {"volume": 3}, {"max_response_output_tokens": 0}):
        with pytest.raises(rp.ProtocolError):
            rp.session_changes({"session": bad}, started=False)
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": " Who? "}]}
    assert rp.question_of({"item": item}) == "Who?"
    with pytest.raises(rp.ProtocolError):
        rp.question_of({"item": {**item, "content": [{"type": "input_audio", "audio": "AAAA"}]}})
    with pytest.raises(rp.ProtocolError):
        rp.audio_item({"audio": base64.b64encode(b"abc").decode()}, rp.RealtimeLimits())  # odd byte count


def test_limits_from_the_environment(monkeypatch):
    monkeypatch.setenv("VSTREAM_REALTIME_LIMITS", '{"max_fps": 5, "idle_timeout_s": 2.5}')
    lim = rp.limits_from_env()
    assert lim.max_fps == 5 and lim.idle_timeout_s == 2.5 and lim.queue_size == rp.RealtimeLimits().queue_size
    for bad in ('{"max_fps": 0}', '{"nope": 1}', "max_fps=5"):
        monkeypatch.setenv("VSTREAM_REALTIME_LIMITS", bad)
        with pytest.raises(ValueError):
            rp.limits_from_env()


def test_decode_image_refuses_non_images_and_bombs():
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    assert np.array_equal(decode_image(_png(rgb)), rgb)  # PNG is lossless: the same pixels
    for bad in (b"hello", b"\xff\xd8\xff\xe0 truncated"):
        with pytest.raises(ValueError):
            decode_image(bad)
    big = _png(np.zeros((4100, 4100, 3), np.uint8))
    with pytest.raises(ValueError, match="scale it down"):
        decode_image(big)


def test_push_feed_clock_origin_is_persisted_and_stamps_must_increase(tmp_path):
    mem = tmp_path / "s" / "memory"
    png = [_png(np.full((8, 8, 3), i * 20, np.uint8)) for i in range(6)]
    feed = PushFeed("s", str(mem), 0.0)
    res = feed.push_frames([(png[0], 100.0), (png[1], 100.5), (png[2], 100.5), (b"junk", 101.0), (png[3], 101.0)])
    assert res["accepted"] == 3 and res["origin"] == 100.0
    assert [(i, c) for i, c, _ in res["errors"]] == [(2, "timestamp_not_increasing"), (3, "invalid_frame")]
    got = []
    feed.frames.end()
    for fr in feed.frames:
        got.append(fr.t)
    assert got == [0.0, 0.5, 1.0]  # stream time = stamp - origin
    assert json.loads((tmp_path / "s" / "push.json").read_text()) == {"origin": 100.0}
    feed.close()
    resumed = PushFeed("s", str(mem), 1.0, resume=True)  # a new worker after a crash: the same clock
    res = resumed.push_frames([(png[4], 100.8), (png[5], 102.0)])
    assert res["origin"] == 100.0 and res["accepted"] == 1 and res["errors"][0][1] == "timestamp_not_increasing"
    resumed.close()
    fresh = PushFeed("s", str(mem), 0.0, resume=False)  # a new stream of the same id: a new clock
    assert fresh.push_frames([(png[0], 7.0)])["origin"] == 7.0
    fresh.close()


@pytest.mark.parametrize("argv, words", [
    (["push", "no-such-clip.mp4", "--to", "http://127.0.0.1:9", "--stream", "x"], "does not exist"),
    (["push", "data/sample.mp4", "--to", "http://127.0.0.1:9", "--stream", "x", "--fps", "0"], "--fps"),
    (["push", "data/sample.mp4", "--to", "ftp://127.0.0.1:9", "--stream", "x"], "http://HOST:PORT"),
    (["push", "data/sample.mp4", "--to", "http://127.0.0.1:9", "--stream", "x", "--reconnects", "0"],
     "cannot connect"),
])
def test_vstream_push_bad_input_is_one_line_error(argv, words, capsys, monkeypatch):
    from conftest import REPO
    from vstream.cli.main import main

    monkeypatch.chdir(REPO)
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("vstream: error:"), err
    assert words in lines[0] and "Traceback" not in err
