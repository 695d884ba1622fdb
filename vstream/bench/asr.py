"""ASR benchmark (issue 17): real-time factor and word error rate of the streaming recogniser on a clip.

``bench_asr(video="data/lecture.mp4", reference=None, config=None, out=None)`` decodes the clip's audio
(``vstream.sources.audio``), feeds it to ``StreamingASR`` as a live stream would (blocks of 0.5 s, but waiting
instead of dropping, so the figure is the recogniser's own speed), and returns::

    {"rtf", "busy_s", "audio_s", "load_s", "wer", "words_ref", "segments", "windows", "silent_windows",
     "timestamp_error_s", "config", "transcript", "reference", "video", "cpu_count"}

``wer`` and ``timestamp_error_s`` (mean |start of the recognised first word - spoken start| over the
sentences whose first two words were recognised; ``timestamp_max_error_s`` the largest) need a reference: a ``lecture.json`` beside the clip is used when ``reference`` is None.
With ``out`` the result is also written there as JSON. ``bench_latency`` measures the per-chunk
perception latency of a session with ASR on over off in one run; ``plot_asr`` draws both.

    vstream bench asr [VIDEO] [--asr-model default] [--model tiny-qwen2.5-vl] [--out docs/bench]
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from pathlib import Path

from vstream.config import ASRConfig
from vstream.speech.asr import SpeechSegment, StreamingASR, WhisperRecognizer

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
    from vstream.sources.audio import audio_blocks

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


def bench_latency(video: str | os.PathLike = "data/lecture.mp4", model: str = "tiny-qwen2.5-vl",
                  config: ASRConfig | None = None, device: str = "cpu", fps: float = 2.0) -> dict:
    """Per-chunk perception latency of one session over ``video`` with ASR off, then on, in one process.

    The session with ASR on decodes and recognises the audio on its own threads while perception runs
    (a file watched as fast as it decodes: the recogniser is waited for, nothing is dropped), so the
    ratio of the medians is what speech recognition costs perception on this machine.
    """
    import numpy as np

    from vstream.api import Agent

    agent = Agent.from_pretrained(model, device=device)
    out: dict = {"model": agent.model_name, "fps": fps}
    for name, on in (("off", False), ("on", True)):
        cfg = agent.config.replace(**{"memory.asr": on, "asr": config or ASRConfig()})
        t = time.perf_counter()
        with Agent(agent.adapter, cfg).watch(video, background=False, fps=fps) as session:
            session.run_to_end()
            lat = [r.latency_s for r in session.reports]
            st = session.stats()
        out[name] = {"chunks": len(lat), "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)),
                     "mean_s": float(np.mean(lat)), "wall_s": time.perf_counter() - t, "latencies_s": lat,
                     "asr": {k: v for k, v in (st["asr"] or {}).items() if k != "error"} or None}
    out["ratio_p50"] = out["on"]["p50_s"] / out["off"]["p50_s"]
    out["ratio_mean"] = out["on"]["mean_s"] / out["off"]["mean_s"]
    return out


def plot_asr(result: dict, path: str | os.PathLike) -> None:
    """PNG: per-chunk perception latency with ASR off and on (one run), with RTF and WER in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = result["latency"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name in ("off", "on"):
        ys = lat[name]["latencies_s"]
        ax.plot(range(len(ys)), ys, label=f"ASR {name} (p50 {lat[name]['p50_s'] * 1000:.0f} ms)")
    ax.set_xlabel("chunk")
    ax.set_ylabel("perception latency (s)")
    wer = result.get("wer")
    ax.set_title(f"{lat['model']}: latency ratio on/off {lat['ratio_p50']:.2f} (p50); ASR RTF {result['rtf']:.2f}"
                 + (f", WER {wer:.2f}" if wer is not None else ""), fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
