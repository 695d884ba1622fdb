"""ASR benchmark (issue 17): real-time factor and word error rate of the streaming recogniser on a clip.

``bench_asr(video="data/lecture.mp4", reference=None, config=None, out=None)`` decodes the clip's audio
(``vstream.audio``), feeds it to ``StreamingASR`` as a live stream would (blocks of 0.5 s, but waiting
instead of dropping, so the figure is the recogniser's own speed), and returns::

    {"rtf", "busy_s", "audio_s", "load_s", "wer", "words_ref", "segments", "windows", "silent_windows",
     "timestamp_error_s", "config", "transcript", "reference", "video", "cpu_count"}

``wer`` and ``timestamp_error_s`` (mean |start of the recognised first word - spoken start| over the
sentences whose first two words were recognised; ``timestamp_max_error_s`` the largest) need a reference: a ``lecture.json`` beside the clip is used when ``reference`` is None.
With ``out`` the result is also written there as JSON. The per-chunk perception latency with ASR on
over off is measured in the engine benchmark (it needs the engine).

    python -m vstream.bench_asr [VIDEO] [--model default] [--vad silero] [--out docs/bench/asr.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

from vstream.asr import ASRConfig, SpeechSegment, StreamingASR, WhisperRecognizer

logger = logging.getLogger(__name__)


def words_of(text: str) -> list[str]:
    """Lower-case words without punctuation (hyphens split), for scoring."""
    return re.findall(r"[a-z0-9']+", text.lower().replace("-", " "))


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, by Levenshtein distance on words."""
    ref, hyp = words_of(reference), words_of(hypothesis)
    if not ref:
        return float(len(hyp) > 0)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / len(ref)


def _first_word_errors(segments: list[SpeechSegment], sentences: list[dict]) -> list[float]:
    """|recognised start - spoken start| of each sentence's first word, where its first two words were recognised
    in a row (one word alone, such as "a", would match elsewhere)."""
    words = [w for s in segments for w in s.words]
    texts = [" ".join(words_of(w.text)) for w in words]
    errs = []
    for sent in sentences:
        head = words_of(sent["text"])[:2]
        near = [a for a, b_text, a_text in zip(words, texts[1:], texts) if [a_text, b_text] == head
                and abs(a.start_s - sent["start_s"]) < 3.0]
        if near:
            errs.append(min(abs(w.start_s - sent["start_s"]) for w in near))
    return errs


def bench_asr(video: str | os.PathLike = "data/lecture.mp4", reference: str | os.PathLike | None = None,
              config: ASRConfig | None = None, out: str | os.PathLike | None = None,
              block_s: float = 0.5) -> dict:
    """Real-time factor (and WER with a reference) of the streaming recogniser on ``video``'s audio."""
    from vstream.audio import audio_blocks

    config = (config or ASRConfig()).check()
    track = audio_blocks(video, block_s=block_s)
    if track is None:
        raise ValueError(f"bench_asr: {str(video)!r} has no audio track; give a clip with speech (data/lecture.mp4)")
    ref_path = Path(reference) if reference is not None else Path(video).with_suffix(".json")
    sentences = json.loads(ref_path.read_text())["sentences"] if ref_path.is_file() else None
    t = time.perf_counter()
    recognizer = WhisperRecognizer(config)
    load_s = time.perf_counter() - t
    blocks = list(track)
    asr = StreamingASR(config, recognizer=recognizer).start()
    t = time.perf_counter()
    for b in blocks:
        asr.feed(b, wait=True)
    stats = asr.close()
    wall = time.perf_counter() - t
    transcript = " ".join(s.text for s in asr.results)
    result = {"video": str(video), "rtf": stats["rtf"], "wall_rtf": wall / max(stats["audio_s"], 1e-9),
              "busy_s": stats["busy_s"], "audio_s": stats["audio_s"], "load_s": load_s,
              "segments": stats["segments"], "windows": stats["windows"], "silent_windows": stats["silent_windows"],
              "dropped_s": stats["dropped_s"], "config": dataclasses.asdict(config), "cpu_count": os.cpu_count(),
              "transcript": transcript, "wer": None, "words_ref": None, "timestamp_error_s": None, "reference": None}
    if sentences is not None:
        ref_text = " ".join(s["text"] for s in sentences)
        errs = _first_word_errors(asr.results, sentences)
        result.update(wer=word_error_rate(ref_text, transcript), words_ref=len(words_of(ref_text)),
                      reference=ref_text, timestamp_error_s=sum(errs) / len(errs) if errs else None,
                      timestamp_max_error_s=max(errs) if errs else None, first_words_found=len(errs),
                      sentences=len(sentences))
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, out)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Real-time factor and WER of the streaming ASR on a clip.")
    ap.add_argument("video", nargs="?", default="data/lecture.mp4")
    ap.add_argument("--model", default="default")
    ap.add_argument("--vad", default="silero")
    ap.add_argument("--window", type=float, default=ASRConfig.window_s)
    ap.add_argument("--overlap", type=float, default=ASRConfig.overlap_s)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--beam", type=int, default=ASRConfig.beam_size)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = ASRConfig(model=a.model, vad=a.vad, window_s=a.window, overlap_s=a.overlap, cpu_threads=a.threads,
                    beam_size=a.beam)
    r = bench_asr(a.video, config=cfg, out=a.out)
    print(json.dumps({k: v for k, v in r.items() if k not in ("transcript", "reference", "config")}, indent=1))
    print("transcript:", r["transcript"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
