"""Shared run plumbing: resumable JSONL result logs, summary JSON + Markdown, progress bars."""
from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def prepare_out_dir(out_dir: str | os.PathLike, files: Sequence[str], *, resume: bool, overwrite: bool) -> Path:
    """Create ``out_dir``; refuse to clobber existing results unless ``resume`` or ``overwrite``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = [f for f in files if (out / f).exists() and (out / f).stat().st_size > 0]
    if existing and not resume and not overwrite:
        raise ValueError(f"{out / existing[0]} already exists; pass --resume to continue that run or "
                         "--overwrite to start again")
    if overwrite and not resume:
        for f in files:
            (out / f).unlink(missing_ok=True)
    return out


class JsonlLog:
    """An append-only JSON-lines file of result records, keyed for resume.

    Existing records are loaded on open; a partial last line (a run killed mid-write) is cut off.
    Each ``append`` writes one line and flushes it, so a killed run loses at most the record in flight.
    """

    def __init__(self, path: str | os.PathLike, key: str | Sequence[str] = "qid") -> None:
        self.path = Path(path)
        self.keys = (key,) if isinstance(key, str) else tuple(key)
        self.records: dict[Any, dict] = {}
        self._load()
        self._fh = self.path.open("a", encoding="utf-8")

    def key_of(self, record: Mapping[str, Any]) -> Any:
        return record[self.keys[0]] if len(self.keys) == 1 else tuple(record[k] for k in self.keys)

    def _load(self) -> None:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return
        data = self.path.read_bytes()
        good = data.rfind(b"\n") + 1
        if good < len(data):
            logger.warning("%s: cutting a partial last line (%d bytes) left by an interrupted run",
                           self.path, len(data) - good)
            with self.path.open("r+b") as fh:
                fh.truncate(good)
            data = data[:good]
        for i, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                self.records[self.key_of(rec)] = rec
            except (ValueError, KeyError) as e:
                raise RuntimeError(f"{self.path}:{i}: unreadable result line ({e}); move the file away "
                                   "or pass --overwrite") from None

    def __contains__(self, key: Any) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def values(self) -> list[dict]:
        return list(self.records.values())

    def append(self, record: dict) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")
        self._fh.flush()
        self.records[self.key_of(record)] = record

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> "JsonlLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _json_default(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (temp file + rename)."""
    p = Path(path)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, p)
    return p


def fmt(v: Any, digits: int = 2) -> str:
    """A table cell: floats rounded, None as "-"."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_summary(out_dir: str | os.PathLike, summary: Mapping[str, Any], markdown: str,
                  name: str = "summary") -> tuple[Path, Path]:
    """``<out>/<name>.json`` and ``<out>/<name>.md``."""
    out = Path(out_dir)
    j = write_json(out / f"{name}.json", dict(summary))
    m = out / f"{name}.md"
    m.write_text(markdown, encoding="utf-8")
    logger.info("wrote %s and %s", j, m)
    return j, m


def progress(total: int | float | None, desc: str, enabled: bool = True, unit: str = "it", **kw: Any) -> tqdm:
    """A tqdm bar on stderr (disabled when ``enabled`` is False)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, leave=False,
                dynamic_ncols=True, **kw)


def take(items: list, limit: int | None) -> list:
    """The first ``limit`` items (all when limit is None or <= 0)."""
    return items[:limit] if limit and limit > 0 else items


def parse_video_filter(videos: str | Sequence[str] | None) -> set[str] | None:
    """``--videos a.mp4,b`` -> {"a.mp4", "b"}; None when no filter."""
    if not videos:
        return None
    parts = videos.split(",") if isinstance(videos, str) else [p for v in videos for p in v.split(",")]
    out = {p.strip() for p in parts if p.strip()}
    return out or None


def open_run(out_dir: str | os.PathLike, files: Sequence[str], items: Iterable[Any], *, resume: bool,
             overwrite: bool, videos: Any, limit: int | None, what: str,
             names: Any = None) -> tuple[Path, list]:
    """The opening every runner shares: prepare ``out_dir``, keep the items of the selected videos
    (``names(item)`` -> (source, *other names)), take the first ``limit``, refuse an empty selection.

    Returns (out dir, selected items).
    """
    from eval.formats import video_matches

    out = prepare_out_dir(out_dir, files, resume=resume, overwrite=overwrite)
    wanted = parse_video_filter(videos)
    picked = [it for it in items if names is None or video_matches(*names(it)[:1], wanted, *names(it)[1:])]
    picked = take(picked, limit)
    if not picked:
        raise ValueError(f"no {what} selected; check --videos / --limit")
    logger.info("%s: %d selected, results in %s", what, len(picked), out)
    return out, picked
