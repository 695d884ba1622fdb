"""End to end in a real browser: headless Chromium's fake camera streams a clip into `python app.py`.

Needs Debian's ``chromium`` (/usr/bin/chromium) and the ``playwright`` Python package (its own
browser downloads are never used). Without them the test is skipped with the reason.
Set VSTREAM_SAVE_SCREENSHOT=1 to also copy the screenshot to docs/app_screenshot.png.
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
pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


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


def test_webcam_streams_and_chat_answers_with_evidence(tmp_path):
    if not CHROMIUM.exists():
        _skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip("the playwright Python package is missing: pip install playwright (no `playwright install` needed)")

    t_start = time.monotonic()
    clip = make_y4m(tmp_path / "clip.y4m")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "app.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--model", "tiny-smolvlm", "--port", str(port),
                                 "--memory-root", str(tmp_path / "mem")], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: server_ready(url, proc, log), 45, "the app to serve", log)
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
                viewport={"width": 1400, "height": 1000},
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--no-first-run", "--use-fake-device-for-media-stream",
                      "--use-fake-ui-for-media-stream", f"--use-file-for-fake-video-capture={clip}"])
            try:
                page = ctx.new_page()
                page.set_default_timeout(15_000)
                page.goto(url)
                page.get_by_text("Click to Access Webcam").click()
                page.locator("#webcam button.capture-button").click()  # starts streaming
                label = page.evaluate("document.querySelector('#webcam video').srcObject"
                                      ".getVideoTracks()[0].label")
                assert "clip.y4m" in label, f"the fake camera is not the test clip: {label!r}"
                # frames reach the app: the status panel counts them and chunks are ingested
                wait_until(lambda: status_number(page, "chunks (dropped)") >= 1, 20, "a chunk from the webcam", log)
                kept = status_number(page, "frames kept / dropped")
                assert kept >= 2
                assert "webcam: browser webcam" in page.locator("#status").inner_text()
                # ask while the feed keeps playing; the streamed answer ends with its evidence
                page.locator("#question textarea").fill("What is moving on the screen?")
                page.locator("#question textarea").press("Enter")
                bot = page.locator("#chat .message.bot, #chat [data-testid='bot']")
                wait_until(lambda: "asked at" in page.locator("#chat").inner_text(), 20, "the answer", log)
                page.locator("#evidence img").first.wait_for()
                assert page.locator("#evidence img").count() >= 1
                chat_text = page.locator("#chat").inner_text()
                assert "What is moving on the screen?" in chat_text
                assert re.search(r"Evidence: \d+\.\d-\d+\.\ds \(-?\d\.\d\d\)", chat_text), chat_text
                assert bot.count() >= 2  # the "Started webcam" note and the answer
                wait_until(lambda: status_number(page, "frames kept / dropped") > kept, 15,
                           "the frame count to grow", log)
                # a second browser session (another page) has its own chat over the same stream
                page2 = ctx.new_page()
                page2.set_default_timeout(15_000)
                page2.goto(url)
                assert "yours alone" in page2.locator("#sharing").inner_text()
                page2.locator("#question textarea").fill("Second browser: what colour is the square?")
                page2.locator("#question textarea").press("Enter")
                wait_until(lambda: "asked at" in page2.locator("#chat").inner_text(), 20, "page 2's answer", log)
                chat2 = page2.locator("#chat").inner_text()
                assert "Second browser: what colour is the square?" in chat2
                assert "What is moving on the screen?" not in chat2  # page 1's question stays in page 1
                time.sleep(1.5)  # a refresh tick of page 1 (1 s timer) has passed
                assert "Second browser" not in page.locator("#chat").inner_text()
                assert "webcam: browser webcam" in page2.locator("#status").inner_text()  # the shared stream
                page2.close()
                shot = tmp_path / "app_screenshot.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                if os.environ.get("VSTREAM_SAVE_SCREENSHOT") == "1":
                    (REPO / "docs").mkdir(exist_ok=True)
                    shutil.copy(shot, REPO / "docs" / "app_screenshot.png")
            finally:
                ctx.close()
    finally:
        stop(proc)
    assert proc.poll() is not None
    print(f"browser test took {time.monotonic() - t_start:.1f}s")
