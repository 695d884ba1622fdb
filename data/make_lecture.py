"""Write data/lecture.mp4 (slides + espeak-ng speech, H.264 + AAC) and data/lecture.json (what is said when).

Six rendered slides (a title and one line each, drawn by ``render_slides.render_slide`` so OCR reads
them) and two spoken sentences per slide that say things the slides do not: a question about a
sentence can only be answered from the sound. ``lecture.json`` lists each sentence with the stream
time its speech starts and ends (silence trimmed, measured on the synthesised samples) and a
paraphrased question about it, and each slide with its text and time span. Needs Debian's
``espeak-ng`` and ``ffmpeg``; deterministic for a given espeak-ng version.

    python data/make_lecture.py [--out-dir data]

The functions (``speak``, ``build_lecture``, ``mux``) are also used by the tests to make short clips.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from render_slides import render_slide  # noqa: E402

from vstream.sources import write_video  # noqa: E402

logger = logging.getLogger("make_lecture")

SPEECH_RATE = 22050  # Hz, espeak-ng's output rate
VOICE, WPM = "en-us", 150

#: (slide text, [(spoken sentence, paraphrased question only the sentence answers), ...])
LECTURE = [
    ("Heat Engines\nWork from temperature differences", [
        ("Steam trains carried most passengers across the country a century ago.",
         "How did people usually travel long distances a hundred years ago?"),
        ("A car engine turns only a third of its fuel into motion.",
         "How much of the petrol in an automobile actually moves it?")]),
    ("Ocean Tides\nThe moon pulls the sea", [
        ("Fishermen in the harbor wait for high water before they sail.",
         "When do boat crews leave the port?"),
        ("In some coastal towns the water rises higher than a house.",
         "How high can the sea climb at certain seaside places?")]),
    ("Honey Bees\nColonies share their food", [
        ("A worker bee visits hundreds of flowers every single day.",
         "How many blossoms does one insect go to daily?"),
        ("The queen can lay thousands of eggs in one morning.",
         "How productive is the mother of the hive?")]),
    ("Glaciers\nRivers of slow moving ice", [
        ("Mountain valleys shaped like the letter U were carved by frozen water.",
         "What gave some highland valleys their rounded shape?"),
        ("Climbers often hear loud cracks as the ice moves at night.",
         "What noises do mountaineers notice after dark?")]),
    ("Volcanic Soil\nAsh makes farmland rich", [
        ("Grape growers plant their vineyards on the slopes of old craters.",
         "Where do wine makers put their plants?"),
        ("Coffee from these hills is sold all over the world.",
         "Which drink from the region is exported globally?")]),
    ("Lightning\nStatic charge in storm clouds", [
        ("Count the seconds between the flash and the thunder to find the distance.",
         "How can you tell how far away a storm is?"),
        ("Tall buildings carry copper rods that guide the current into the ground.",
         "How are skyscrapers protected from electric strikes?")]),
]


def have_tools() -> str | None:
    """None when espeak-ng and ffmpeg are installed, else the reason tests skip."""
    missing = [t for t in ("espeak-ng", "ffmpeg") if shutil.which(t) is None]
    return f"{' and '.join(missing)} not installed (apt-get install {' '.join(missing)})" if missing else None


def speak(text: str, *, voice: str = VOICE, wpm: int = WPM, trim: bool = True) -> np.ndarray:
    """espeak-ng's speech of ``text``: [N] int16 at SPEECH_RATE, leading/trailing silence trimmed."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(wav), text], check=True,
                       capture_output=True)
        with wave.open(str(wav), "rb") as w:
            if w.getframerate() != SPEECH_RATE or w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise RuntimeError(f"espeak-ng wrote {w.getframerate()} Hz, {w.getsampwidth() * 8} bit, "
                                   f"{w.getnchannels()} channel(s); expected {SPEECH_RATE} Hz mono 16 bit")
            x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()  # [N]
    if trim:
        loud = np.flatnonzero(np.abs(x.astype(np.int32)) > 400)
        if len(loud):
            x = x[loud[0]: loud[-1] + 1]
    return x


def write_wav(path: str | Path, samples: np.ndarray, rate: int = SPEECH_RATE) -> Path:
    """[N] int16 mono samples -> a WAV file."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    return Path(path)


#: audio codec -> (container suffix, ffmpeg video args, ffmpeg audio args)
MUX = {
    "aac": (".mp4", ["-c:v", "copy"], ["-c:a", "aac", "-b:a", "48k"]),
    "mp3": (".mp4", ["-c:v", "copy"], ["-c:a", "libmp3lame", "-b:a", "64k"]),
    "opus": (".webm", ["-c:v", "libvpx", "-b:v", "200k", "-deadline", "realtime", "-cpu-used", "8"],
             ["-c:a", "libopus", "-b:a", "48k"]),
    "pcm": (".mkv", ["-c:v", "copy"], ["-c:a", "pcm_s16le"]),
}


def mux(video: str | Path, wav: str | Path, out: str | Path, audio_codec: str = "aac") -> Path:
    """ffmpeg: ``video``'s frames + ``wav`` encoded with ``audio_codec`` (aac, mp3, opus, pcm) -> ``out``."""
    if audio_codec not in MUX:
        raise ValueError(f"audio_codec must be one of {', '.join(MUX)}, got {audio_codec!r}")
    _, vargs, aargs = MUX[audio_codec]
    cmd = ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(video), "-i", str(wav), "-map", "0:v:0",
           "-map", "1:a:0", *vargs, *aargs, "-ac", "1"]
    if str(out).endswith(".mp4"):
        cmd += ["-movflags", "+faststart"]
    subprocess.run(cmd + [str(out)], check=True, capture_output=True)
    return Path(out)


def build_lecture(out: str | Path, lecture=LECTURE, *, width: int = 480, height: int = 270, fps: float = 5.0,
                  lead_s: float = 1.0, gap_s: float = 0.8, slide_gap_s: float = 1.2, tail_s: float = 1.0,
                  audio_codec: str = "aac", voice: str = VOICE, wpm: int = WPM) -> dict:
    """Render, speak and mux ``lecture`` into ``out``; returns the description written to the JSON."""
    out = Path(out)
    speech, sentences, slides = [], [], []
    t = lead_s
    for i, (slide_text, said) in enumerate(lecture):
        slide_start = 0.0 if i == 0 else t - slide_gap_s / 2
        for j, (text, question) in enumerate(said):
            x = speak(text, voice=voice, wpm=wpm)
            start = t
            speech.append((start, x))
            t = start + len(x) / SPEECH_RATE
            sentences.append({"text": text, "start_s": round(start, 3), "end_s": round(t, 3), "slide": i,
                              "question": question})
            t += gap_s if j < len(said) - 1 else slide_gap_s
        slides.append({"text": slide_text, "title": slide_text.split("\n")[0], "start_s": round(slide_start, 3)})
    duration = t - slide_gap_s + tail_s
    for i, s in enumerate(slides):
        s["end_s"] = slides[i + 1]["start_s"] if i + 1 < len(slides) else round(duration, 3)
    audio = np.zeros(int(round(duration * SPEECH_RATE)), np.int16)
    for start, x in speech:
        k = int(round(start * SPEECH_RATE))
        audio[k:k + len(x)] = x[: len(audio) - k]
    n_frames = int(np.ceil(duration * fps)) + 1
    images = [render_slide(s["text"], width, height, style=i) for i, s in enumerate(slides)]
    frames = []
    for k in range(n_frames):
        tk = k / fps
        idx = next((i for i, s in enumerate(slides) if s["start_s"] <= tk < s["end_s"]), len(slides) - 1)
        frames.append(images[idx])
    with tempfile.TemporaryDirectory() as tmp:
        video = write_video(Path(tmp) / "v.mp4", frames, fps, codec="h264")
        wav = write_wav(Path(tmp) / "a.wav", audio)
        mux(video, wav, out, audio_codec)
    return {"video": out.name, "duration_s": round(duration, 3), "fps": fps, "width": width, "height": height,
            "audio": {"codec": audio_codec, "voice": voice, "wpm": wpm, "rate_hz": SPEECH_RATE},
            "generator": {"script": "data/make_lecture.py", "slides": "data/render_slides.py", "speech": "espeak-ng"},
            "sentences": sentences, "slides": slides}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    why = have_tools()
    if why:
        logger.error("cannot make the lecture: %s", why)
        return 1
    args.out_dir.mkdir(parents=True, exist_ok=True)
    video = args.out_dir / "lecture.mp4"
    meta = build_lecture(video)
    (args.out_dir / "lecture.json").write_text(json.dumps(meta, indent=1) + "\n")
    logger.info("wrote %s (%d bytes, %.1f s, %d sentences, %d slides) and lecture.json", video,
                video.stat().st_size, meta["duration_s"], len(meta["sentences"]), len(meta["slides"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
