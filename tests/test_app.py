"""The Gradio app's controller and build function, driven directly (no browser), with the tiny preset."""
from __future__ import annotations

import importlib.util
import re
import shutil
import time

import numpy as np
import pytest
from conftest import REPO, tiny_adapter

from vstream.api import Agent
from vstream.app.chat import check_memory_name, evidence_caption, format_status
from vstream.app.controller import NO_SOURCE, AppController
from vstream.config import from_name

SAMPLE = REPO / "data" / "sample.mp4"
CAPTION = re.compile(r"^\d+\.\d-\d+\.\ds \(-?\d+\.\d\d\)$")
#: an evidence label: what it is, its span, a labelled score, its text
LABEL = re.compile(r"^(speech|vision|vision \+ OCR|text) · \d+\.\d–\d+\.\d s · (similarity|retrieval score) "
                   r"[+-]\d\.\d\d( · “.*”)?$")


@pytest.fixture(scope="module")
def agent() -> Agent:
    cfg = from_name("tiny").replace(model="tiny-smolvlm", device="cpu", dtype="float32")
    return Agent(tiny_adapter("tiny-smolvlm"), cfg)


@pytest.fixture
def make_ctl(agent, tmp_path):
    made = []

    def make(**kw) -> AppController:
        kw.setdefault("memory_root", tmp_path / "mem")
        ctl = AppController(agent, **kw)
        made.append(ctl)
        return ctl

    yield make
    for ctl in made:
        ctl.close()


def load_app_module():
    spec = importlib.util.spec_from_file_location("vstream_app_under_test", REPO / "app.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def wait_for(cond, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def frames_kept(ctl: AppController) -> int:
    return ctl.status()["stats"]["frames_kept"]


def test_upload_plays_as_live_and_status_grows(make_ctl):
    ctl = make_ctl()  # realtime: the file is paced like a live feed
    msg = ctl.start_upload(SAMPLE)
    assert "sample.mp4" in msg and "live" in msg
    st = ctl.status()
    assert st["kind"] == "upload" and st["model"] == "tiny-smolvlm" and "cpu" in st["device"]
    first = wait_for(lambda: frames_kept(ctl), 10, "the first frames")
    wait_for(lambda: frames_kept(ctl) > first, 5, "more frames")
    st = ctl.status()
    assert st["stats"]["stream_time_s"] <= 5.0  # paced to the wall clock, not read at full speed
    text = format_status(st)
    assert "frames kept / dropped" in text and "upload: sample.mp4" in text
    assert any("Started upload" in m["content"] for m in ctl.messages())


def test_ask_streams_pieces_then_evidence_thumbnails(make_ctl):
    ctl = make_ctl(realtime=False)
    ctl.start_upload(SAMPLE)
    ctl.session.run_to_end()
    n_before = len(ctl.messages())
    updates = list(ctl.ask("What shape is on the screen?", max_new_tokens=12))
    first, last = updates[0], updates[-1]
    assert first[-2] == {"role": "user", "content": "What shape is on the screen?"}
    assert first[-1]["content"] == "▌ *thinking…*"  # the answer's placeholder appears before any token
    streamed = [u[-1]["content"] for u in updates[1:-1]]
    assert streamed, "no piece was streamed before the final answer"
    counts = [int(re.search(r" ▌ \*\((\d+) pieces\)\*$", s).group(1)) for s in streamed]
    assert counts == list(range(1, len(streamed) + 1))  # one update per decoded piece
    texts = [re.sub(r" ▌ \*\(\d+ pieces\)\*$", "", s) for s in streamed]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # pieces grow the same answer
    final = last[-1]["content"]
    assert len(last) == n_before + 2 and "▌" not in final
    assert final.startswith(texts[-1].strip()[:1])
    labels = re.findall(r"^- (.*)$", final.split("**Evidence**")[1], re.M)
    assert labels and all(LABEL.match(c) for c in labels), labels
    spans = [re.search(r"\d+\.\d–\d+\.\d s", c).group(0) for c in labels]
    assert len(set(spans)) == len(spans), f"a span listed twice: {labels}"  # each span once
    gallery = ctl.evidence()
    assert [c for _, c in gallery] == labels  # one picture per listed item, same order
    for img, caption in gallery:
        assert img.size[0] > 0 and img.mode == "RGB"
    assert ctl.status()["stats"]["ttft_p50"] is not None


def test_ask_without_a_source_says_so(make_ctl):
    ctl = make_ctl()
    updates = list(ctl.ask("anything there?"))
    assert updates[-1][-1] == {"role": "assistant", "content": NO_SOURCE}
    with pytest.raises(ValueError, match="type a question"):
        list(ctl.ask("   "))


def test_pushed_frames_start_a_webcam_session(make_ctl):
    ctl = make_ctl(realtime=False)
    rng = np.random.default_rng(0)
    frame = lambda: rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)  # noqa: E731
    assert ctl.push_frame(frame(), t=0.0)  # the first frame starts the webcam session
    assert ctl.status()["kind"] == "webcam"
    for k in range(1, 25):
        assert ctl.push_frame(frame(), t=k * 0.1)
    assert ctl.session.wait_chunks(2, timeout=20)
    kept = frames_kept(ctl)
    assert kept >= 2
    for k in range(25, 45):
        ctl.push_frame(frame(), t=k * 0.1)
    wait_for(lambda: frames_kept(ctl) > kept, 10, "frame count to grow")
    assert ctl.status()["webcam"]["pushed"] == 45
    assert ctl.push_frame(None) is False
    # another source takes over: webcam frames are ignored (counted) until "Use webcam"
    ctl.realtime = True  # played as live (closing it mid-file stays quick)
    ctl.start_upload(SAMPLE)
    assert ctl.push_frame(frame()) is False
    assert ctl.webcam_ignored == 1
    ctl.start_webcam()
    assert ctl.status()["kind"] == "webcam" and ctl.push_frame(frame())


def test_alerts_and_commentary_reach_the_ui(make_ctl):
    ctl = make_ctl(realtime=False, commentary=True, alert_cooldown_s=1.0)
    with pytest.raises(ValueError, match="alerts watch a live source"):
        ctl.add_alert("a red square appears")  # no source yet: nothing to watch
    ctl.realtime = True
    ctl.start_upload(SAMPLE)
    assert "P(yes) ≥ 1e-06" in ctl.add_alert("Tell me when a red square appears", 1e-6)
    assert ctl.alerts() == ["a red square appears"]
    rows = wait_for(lambda: [r for r in ctl.alert_rows() if r[3] != "not checked yet"], 20, "a checked alert")
    n, cond, thr, p, at, fired = rows[0]
    assert (n, cond, thr) == (1, "a red square appears", "1e-06") and 0 < float(p) < 1 and re.match(r"\d+\.\d s", at)
    alerts = wait_for(lambda: [m["content"] for m in ctl.messages() if "Alert at" in m["content"]], 20,
                      "an alert in the chat")
    assert re.match(r"◆ \*\*Alert at \d+\.\ds\*\*: a red square appears \(P\(yes\) 0\.\d{4}\)", alerts[0])
    log = wait_for(ctl.fired_log, 10, "the fired-alert log")
    assert log[0].condition == "a red square appears" and log[0].thumbnail  # the moment's picture
    (img, caption), *_ = ctl.fired_items()
    assert img.size[0] > 0 and re.match(r"\d+\.\d s · P\(yes\) 0\.\d{4} · a red square appears", caption)
    lines = wait_for(lambda: ctl.commentary_text().splitlines(), 20, "commentary")
    assert lines[0].startswith("[0.0-1.0s] ")
    assert ctl.status()["commentary"] == "on"
    # the toggle applies at the next source start, and the UI says so
    v = ctl.state_version
    msg = ctl.toggle_commentary(False)
    assert "next source start" in msg and "next source start" in ctl.status()["commentary"]
    assert ctl.state_version > v  # every browser refreshes its checkbox
    with pytest.raises(ValueError, match="no alert #99"):
        ctl.delete_alert(99)
    assert "removed" in ctl.delete_alert(1) and ctl.alerts() == [] and ctl.alert_rows() == []
    ctl.add_alert("a blue circle", 0.5)
    ctl.start_upload(SAMPLE)  # alerts and their log go with the source they were set on
    assert ctl.alerts() == [] and ctl.fired_log() == []
    assert "1 alert(s) of the previous source removed" in ctl.messages()[-1]["content"]
    assert ctl.status()["commentary"] == "off" and ctl.commentary_text() == ""


def test_non_video_uploads_leave_the_session_running(make_ctl, tmp_path):
    ctl = make_ctl()
    ctl.start_upload(SAMPLE)
    session = ctl.session
    fake = tmp_path / "notes.mp4"
    fake.write_text("these are lecture notes, not a video\n" * 20)
    with pytest.raises(ValueError, match=r"'notes.mp4' is not a video this app can play") as e1:
        ctl.start_upload(fake)
    text = tmp_path / "notes.txt"
    shutil.copy(fake, text)
    with pytest.raises(ValueError, match=r"'notes.txt' is not a video file: upload one of \.mp4") as e2:
        ctl.start_upload(text)
    for e in (e1, e2):
        assert str(tmp_path) not in str(e.value)  # no server paths in messages
    assert ctl.session is session and ctl.status()["kind"] == "upload"
    kept = wait_for(lambda: frames_kept(ctl), 10, "frames")
    wait_for(lambda: frames_kept(ctl) > kept, 5, "the running session to keep watching")
    with pytest.raises(ValueError, match="no file was uploaded"):
        ctl.start_upload(None)


def test_oversize_upload_is_refused(make_ctl):
    ctl = make_ctl(max_upload_mb=0.01)  # sample.mp4 is ~19 KB
    with pytest.raises(ValueError, match=r"over the upload limit of 0.01 MB"):
        ctl.start_upload(SAMPLE)
    assert ctl.session is None


def test_urls_only_network_schemes(make_ctl):
    ctl = make_ctl(url_retries=0)
    ctl.start_upload(SAMPLE)
    session = ctl.session
    for bad in ("", "/etc/passwd", "file:///etc/passwd", "data/sample.mp4", "/dev/video0"):
        with pytest.raises(ValueError):
            ctl.start_url(bad)
    with pytest.raises(ValueError, match="cannot open stream"):
        ctl.start_url("http://127.0.0.1:9/nothing.mp4")  # connection refused: reported, nothing replaced
    assert ctl.session is session


def test_save_and_load_by_name_only(make_ctl, tmp_path):
    ctl = make_ctl(realtime=False)
    with pytest.raises(ValueError, match="No source"):
        ctl.save("early")
    ctl.start_upload(SAMPLE)
    ctl.session.run_to_end()
    assert "run1" in ctl.save("run1")
    assert ctl.list_saved() == ["run1"]
    assert (tmp_path / "mem" / "run1" / "config.json").is_file()
    with pytest.raises(ValueError, match="exists"):
        ctl.save("run1")
    for bad in ("../evil", "..", "a/b", "/tmp/x", "x..y", ".hidden", ""):
        with pytest.raises(ValueError):
            ctl.save(bad)
        with pytest.raises(ValueError):
            ctl.load(bad)
    assert not (tmp_path / "evil").exists()
    with pytest.raises(ValueError, match="no saved memory named 'missing'"):
        ctl.load("missing")
    (tmp_path / "mem" / "notmem").mkdir()  # a folder without a memory is not offered
    assert ctl.list_saved() == ["run1"]
    assert "run1" in ctl.load("run1")
    st = ctl.status()
    assert st["kind"] == "memory" and st["stats"]["long_term_entries"] > 0
    final = list(ctl.ask("What happened?"))[-1][-1]["content"]
    assert "**Evidence**" in final and "- none" not in final
    assert ctl.evidence() and all(LABEL.match(c) for _, c in ctl.evidence())  # thumbnails from saved memory


def test_memory_names_and_captions():
    assert check_memory_name(" lecture-1.v2 ") == "lecture-1.v2"
    for bad in ("../x", "x/y", "a\\b", "-x", "x" * 65, "run.partial"):
        with pytest.raises(ValueError):
            check_memory_name(bad)
    assert evidence_caption(12.0, 13.0, 0.8349) == "12.0-13.0s (0.83)"


def test_build_app_binds_localhost_by_default(make_ctl, monkeypatch):
    monkeypatch.delenv("VSTREAM_APP_AUTH", raising=False)
    app = load_app_module()
    args = app.parse_args([])
    assert args.model.startswith("tiny-") and args.host == "127.0.0.1" and args.auth is None
    ctl = make_ctl()
    demo, kw = app.build_app(ctl, args)
    assert kw["server_name"] == "127.0.0.1" and kw["server_port"] == 7860
    assert kw["share"] is False and kw["auth"] is None and kw["max_file_size"] == "500mb"
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    cam = by_id["webcam"]
    assert cam.streaming and cam.sources == ["webcam"] and cam.webcam_options.mirror is False
    for elem in ("chat", "question", "evidence", "status", "latency-plot", "commentary", "notice", "banner", "now",
                 "overload", "player", "live-frame", "transcript", "focus-image", "focus-caption", "alerts", "fired",
                 "mic", "asr-on", "search-hits", "timeline", "saved-table", "cam-grid", "cam-evidence"):
        assert elem in by_id, elem
    rng = by_id["ask-range"]  # the question's time range: collapsed under the question box
    assert type(rng).__name__ == "Accordion" and rng.open is False and rng.label == "Time range"
    def inside(block, box) -> bool:
        while block is not None and block is not box:
            block = block.parent
        return block is box

    assert inside(by_id["ask-since"], rng) and inside(by_id["ask-until"], rng) and not inside(by_id["question"], rng)
    assert "memory-since" in by_id and "memory-until" in by_id and "memory-range-btn" in by_id
    assert any(type(b).__name__ == "Timer" for b in demo.blocks.values())
    kw = app.launch_kwargs(app.parse_args(["--host", "0.0.0.0", "--port", "8123", "--auth", "me:se:cret",
                                           "--max-upload-mb", "20"]))
    assert kw["server_name"] == "0.0.0.0" and kw["server_port"] == 8123
    assert kw["auth"] == ("me", "se:cret") and kw["max_file_size"] == "20mb"
    assert app.parse_args(["--no-asr"]).asr is False and app.parse_args(["--no-realtime"]).realtime is False
    for bad in (["--auth", "nopassword"], ["--auth", ":x"], ["--port", "0"], ["--max-upload-mb", "0"], ["--fps", "0"]):
        with pytest.raises(SystemExit):
            app.parse_args(bad)


def test_each_browser_has_its_own_chat_over_the_shared_stream(make_ctl):
    """Two browser sessions (two chats) on one controller: a question and its answer appear only in the
    asker's chat; the stream, its source change and alerts are shared; the UI says so."""
    from vstream.app.chat import SHARING_NOTE

    ctl = make_ctl(realtime=False)
    alice, bob = ctl.new_chat(), ctl.new_chat()
    ctl.start_upload(SAMPLE)
    ctl.session.run_to_end()
    started = [m for m in alice.messages() if "Started upload" in m["content"]]
    assert started and bob.messages() == alice.messages()  # the source change reached both
    bob_before = bob.messages()
    list(ctl.ask("Alice's private question?", max_new_tokens=4, chat=alice))
    assert [m["content"] for m in alice.messages()[-2:-1]] == ["Alice's private question?"]
    assert bob.messages() == bob_before and bob.evidence() == []  # nothing of Alice's reached Bob
    assert alice.evidence()
    list(ctl.ask("Bob asks too?", max_new_tokens=4, chat=bob))
    assert "Bob asks too?" not in [m["content"] for m in alice.messages()]
    assert "Alice's private question?" not in [m["content"] for m in bob.messages()]
    # one stream for both: the same session answered both (two answers counted)
    assert ctl.status()["stats"]["queries_answered"] == 2
    # alerts concern everyone watching: posted into every chat
    from vstream.types import Alert

    sa = ctl.book.add(ctl.session, "a person enters", 0.5, None, lambda sa, a: None)
    ctl._on_alert(ctl._generation, sa, Alert(condition="a person enters", at_s=3.0, probability=0.9, answer=None))
    assert "Alert at 3.0s" in alice.messages()[-1]["content"] and "Alert at 3.0s" in bob.messages()[-1]["content"]
    # the UI states what is shared and what is not
    mod = load_app_module()
    demo, _ = mod.build_app(ctl, mod.parse_args([]))
    config = str(demo.config)
    assert SHARING_NOTE in config and "(this browser only)" in config
    assert "shared by everyone" in SHARING_NOTE and "yours alone" in SHARING_NOTE
