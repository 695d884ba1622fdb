"""The on-disk format of a memory directory: its file names, its config, and its format versions.

A memory directory holds::

    config.json       StoreMeta (model, family, layers, kv heads, head_dim, pos_dims, dtype, format version)
                      plus the cold tier's name ("quantize")
    journal.jsonl     append-only, one JSON line per event (memory.store_io, memory.store_retention)
    segments/         one safetensors file per entry: K/V per layer (optionally quantised), rel_pos, key_summary
    index/            FAISS indexes (memory.index; rebuildable from the store)

Format versions (``memory.types.FORMAT_VERSION`` is the newest this code reads; ``StoreMeta.check_readable``
refuses a newer one with one line):

    1   vision entries only; K/V as is or int8 / int4 / k4v2
    2   entries may also be text (``kind="text"``): a format-1 reader would take them for video chunks
    3   the k2v1.58 cold tier (mixed 2/1-bit keys, ternary values packed five per byte)
    4   entries may carry wall-clock time (``wall_s``, ``wall_end_s``, ``tz`` on their journal line): a
        format-3 reader would drop it silently and lose when they were recorded

A store is written with the lowest version its content needs (``format_version_for``, ``entry_format_version``)
and upgraded in place (``upgrade_config``: a crash-safe rewrite of the config) before the first entry that
needs more, so older readers keep reading what they can. Everything that decides a version lives here.
"""
from __future__ import annotations

import json
from pathlib import Path

from memory import quant
from memory.fsops import FileOps
from memory.journal import atomic_write
from memory.segment import VISION
from memory.types import CLOCK_FORMAT_VERSION, TEXT_FORMAT_VERSION, StoreMeta

CONFIG_NAME = "config.json"
JOURNAL_NAME = "journal.jsonl"
SEGMENT_DIR = "segments"
LOCK_NAME = ".lock"
FORMAT_TAG = "vstream-memory"  # config.json's "format": what marks a directory as a memory

#: cold-tier formats: (key bits, value bits); 0 = stored as is. "k4v2": int4 keys, ternary values (VidKV-like);
#: "k2v1.58": keys 2 bits per channel with half of each head's channels at 1 bit, ternary values 5 per byte
#: (memory.quant codes 21 and 158; ~1.7 bits per element with the per-channel scales of a 197-token entry)
QUANT_BITS = {"none": (0, 0), "int8": (8, 8), "int4": (4, 4), "k4v2": (4, 2),
              "k2v1.58": (quant.KEYS_2_1, quant.TERNARY5)}
#: the memory format version a cold tier needs (readers older than it refuse the directory with one line)
QUANT_VERSION = {"k2v1.58": 3}
QUANT_NAMES = ", ".join(QUANT_BITS)


def check_quantize(quantize: str) -> None:
    """Raise ValueError (one line, naming the choices) for an unknown cold tier."""
    if quantize not in QUANT_BITS:
        raise ValueError(f"quantize must be one of {QUANT_NAMES}, got {quantize!r}")


def quant_bits(quantize: str) -> tuple[int, int]:
    """(key, value) codes of cold tier ``quantize`` for ``memory.quant.quantize`` (0: stored as is)."""
    check_quantize(quantize)
    return QUANT_BITS[quantize]


def format_version_for(quantize: str) -> int:
    """The lowest memory format version that can hold entries of cold tier ``quantize``."""
    return QUANT_VERSION.get(quantize, 1)


def entry_format_version(quantize: str, kind: str, clocked: bool = False) -> int:
    """The lowest format version that can hold one entry of ``kind`` stored in cold tier ``quantize``
    (``clocked``: the entry carries wall-clock time)."""
    if clocked:
        return max(CLOCK_FORMAT_VERSION, entry_format_version(quantize, kind))
    return max(format_version_for(quantize), TEXT_FORMAT_VERSION if kind != VISION else 1)


# ---------------------------------------------------------------------------------------------------
# the config file


def read_config(directory: Path) -> StoreMeta:
    """The StoreMeta of memory ``directory``; ValueError (one line) when it is not a memory directory."""
    path = Path(directory) / CONFIG_NAME
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is unreadable ({e}); not a vstream memory directory") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT_TAG:
        raise ValueError(f"{path} is not a vstream memory config")
    return StoreMeta.from_json(d, str(path))


def read_quantize(directory: Path) -> str:
    """The cold tier a memory directory was created with ("none" when its config does not say)."""
    try:
        return str(json.loads((Path(directory) / CONFIG_NAME).read_text()).get("quantize", "none"))
    except (OSError, json.JSONDecodeError, AttributeError):
        return "none"


def write_config(directory: Path, meta: StoreMeta, quantize: str, durable: bool, fs: FileOps | None) -> None:
    """Write a new store's config (crash-safe: temp file, fsync, rename)."""
    cfg = {"format": FORMAT_TAG, **meta.to_json(), "quantize": quantize}
    atomic_write(Path(directory) / CONFIG_NAME, json.dumps(cfg, indent=1).encode(), durable, fs)


def upgrade_config(directory: Path, version: int, durable: bool, fs: FileOps | None) -> None:
    """Raise the format version in ``directory``'s config to ``version`` (crash-safe rewrite).

    Raises OSError, or ValueError when the config does not parse."""
    path = Path(directory) / CONFIG_NAME
    cfg = json.loads(path.read_text())
    cfg["format_version"] = int(version)
    atomic_write(path, json.dumps(cfg, indent=1).encode(), durable, fs)


def leftover_of_creation(p: Path) -> bool:
    """What a crash while creating a store can leave behind (the creation is simply redone)."""
    if p.name == LOCK_NAME or (p.name.startswith(".") and p.name.endswith(".tmp")):
        return True
    return p.name == SEGMENT_DIR and p.is_dir() and not any(p.iterdir())
