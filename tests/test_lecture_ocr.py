"""Lecture use end to end: a slide video watched with OCR, stored, then asked about by paraphrase.

Real OCR (RapidOCR) and real sentence embeddings (MiniLM) through the engine, the store and the
index; the vision-language model is a tiny random one, so only retrieval is judged.
"""
from __future__ import annotations

import importlib.util
import json

from conftest import REPO
from vstream.cli.main import main
from vstream.sources import write_video


def _render():
    spec = importlib.util.spec_from_file_location("render_slides", REPO / "data" / "render_slides.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_watch_with_ocr_then_ask_finds_the_slide(tmp_path, capsys):
    rs = _render()
    slides = rs.load_slides()[:8]
    frames = []
    for i, item in enumerate(slides):  # each slide shown for 2 s at 2 fps
        img = rs.render_slide(item["slide"], width=320, height=180, style=i % 2)
        frames += [img] * 4
    video = write_video(tmp_path / "lecture.mp4", frames, fps=2.0)
    mem = tmp_path / "lec.vmem"
    assert main(["watch", str(video), "--model", "tiny-smolvlm", "--ocr", "--retriever", "text",
                 "--memory-dir", str(mem), "--window", "2", "--json"]) == 0
    capsys.readouterr()
    journal = (mem / "journal.jsonl").read_text()
    assert "Photosynthesis" in journal or "photosynthesis" in journal.lower()  # OCR text reached the entries
    hits = 0
    for i, item in enumerate(slides):
        # no --retriever: `ask` uses the one the memory was indexed with (text), without a rebuild
        assert main(["ask", str(mem), item["question"], "--model", "tiny-smolvlm",
                     "--top-k", "1", "--max-new-tokens", "1", "--json"]) == 0
        ans = json.loads(capsys.readouterr().out.splitlines()[0])
        top = ans["evidence"][0]
        hits += int(2 * i <= top["start_s"] < 2 * i + 2)
    assert hits >= 7, f"paraphrase questions found their slide {hits}/8 times"
