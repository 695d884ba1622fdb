"""Lecture outputs from a memory directory, without a VLM and without writing to it: search and export.

``search(directory, query, top=5, thumbs_dir=None) -> list[Moment]``: the moments whose text (speech,
OCR, commentary, markers) is nearest the query in MiniLM space, best first; a moment that overlaps a
better one in time is left out, so the list covers different moments. Each moment's thumbnail (the
frame it was said over) is written to ``thumbs_dir`` when given.

``transcript(directory) -> list[Line]`` and ``export(directory, fmt) -> str`` with fmt ``srt``, ``vtt`` or
``json``: the recognised speech (and the live commentary, when the session had it) with times.

Both read the journal with ``memory.store_io.read_infos`` (no lock, no repair) and the saved text index
read-only; nothing under the directory is created or changed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path


from memory.store_io import read_infos
from memory.types import EntryInfo

logger = logging.getLogger(__name__)

FORMATS = ("srt", "vtt", "json")
_MARKER = re.compile(r"^Time=(?:[0-9.]+-[0-9.]+s|[0-9]{2}:[0-9]{2}:[0-9]{2}-[0-9]{2}:[0-9]{2}:[0-9]{2})\s*(speech:\s*)?")


@dataclass
class Moment:
    """A place in the stream that matches a query."""

    start_s: float
    end_s: float
    text: str
    source: str  # "speech" | "vision" | "text" (commentary)
    score: float  # cosine of the query and the entry text (MiniLM)
    entry_id: int
    thumbnail: str | None = None  # path of the JPEG written to thumbs_dir
    wall_s: float | None = None  # wall-clock time (UTC epoch seconds) at start_s; None: the source had no clock
    wall_end_s: float | None = None
    tz: str = ""  # the source's IANA time-zone name

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Line:
    """One timed line of the transcript."""

    start_s: float
    end_s: float
    text: str
    source: str  # "speech" | "commentary"
    wall_s: float | None = None  # wall-clock time (UTC epoch seconds) at start_s; None: the source had no clock
    wall_end_s: float | None = None
    tz: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _source(info: EntryInfo) -> str:
    return "vision" if info.kind == "vision" else ("speech" if info.source == "speech" else "text")


def _plain(text: str) -> str:
    """Entry text without its leading ``Time=a-bs`` (and ``speech:``) marker."""
    return _MARKER.sub("", text.strip()).strip()


def _text_hash(text: str) -> str:  # the same key as memory.index's manifest
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _scores(directory: Path, infos: list[EntryInfo], query: str, embedder) -> dict[int, float]:
    """Cosine of the query with every entry text; saved index vectors are used where still current."""
    from memory.vectors import VectorIndex

    q = embedder.encode([query])[0]  # [dim]
    out: dict[int, float] = {}
    todo = [i for i in infos if i.text.strip()]
    try:
        man = json.loads((directory / "index" / "manifest.json").read_text())
        if man.get("embedder") == embedder.name and man.get("text_dim"):
            idx = VectorIndex.load(directory / "index" / "text.npz", int(man["text_dim"]), tag=int(man["tag"]))
            hashes = man.get("text_hashes", {})
            current = {i.entry_id for i in todo if hashes.get(str(i.entry_id)) == _text_hash(i.text)}
            ids, scores = idx.search(q, len(idx))
            out = {int(e): float(s) for e, s in zip(ids.tolist(), scores.tolist()) if int(e) in current}
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.info("no usable saved text index in %s (%s); embedding the entry texts", directory, e)
    rest = [i for i in todo if i.entry_id not in out]
    if rest:
        vecs = embedder.encode([i.text for i in rest])  # [N, dim], unit rows
        out.update({i.entry_id: float(s) for i, s in zip(rest, (vecs @ q).tolist())})
    return out


def _moment_of(info: EntryInfo, infos: list[EntryInfo]) -> EntryInfo:
    """The moment an entry stands for: a chunk that carries a transcript is that speech entry (its span and
    words); a chunk whose neighbours show the same thing (one slide) spans all of them."""
    if info.kind != "vision":
        if info.thumbnail is None:  # said before its chunk was seen: show the frame of its first second
            frame = next((i for i in infos if i.kind == "vision" and i.thumbnail and i.start_s <= info.start_s
                          < i.end_s), None)
            return dataclasses.replace(info, thumbnail=frame.thumbnail) if frame else info
        return info
    for sp in infos:
        if sp.kind == "text" and sp.source == "speech" and sp.start_s < info.end_s and info.start_s < sp.end_s \
                and _plain(sp.text) and _plain(sp.text).rstrip(".") in info.text:
            return sp if sp.thumbnail else dataclasses.replace(sp, thumbnail=info.thumbnail)
    vision = sorted((i for i in infos if i.kind == "vision"), key=lambda i: i.start_s)
    k = next(n for n, i in enumerate(vision) if i.entry_id == info.entry_id)
    same = _plain(info.text)
    lo = hi = k
    while lo > 0 and _plain(vision[lo - 1].text) == same and _adjacent(vision[lo - 1], vision[lo]):
        lo -= 1
    while hi + 1 < len(vision) and _plain(vision[hi + 1].text) == same and _adjacent(vision[hi], vision[hi + 1]):
        hi += 1
    return dataclasses.replace(info, start_s=vision[lo].start_s, end_s=vision[hi].end_s, wall_s=vision[lo].wall_s,
                               wall_end_s=vision[hi].wall_end_s)


def _adjacent(a: EntryInfo, b: EntryInfo) -> bool:
    """``b`` follows ``a`` without a gap, in stream time and (when both have it) in wall-clock time."""
    if abs(a.end_s - b.start_s) >= 1e-3:
        return False
    return a.wall_end_s is None or b.wall_s is None or abs(a.wall_end_s - b.wall_s) < 1e-3


def wall_of(info: EntryInfo) -> dict:
    """The wall-clock fields of an entry ({} without wall time)."""
    if info.wall_s is None:
        return {}
    return {"wall_s": info.wall_s, "wall_end_s": info.wall_end_s, "tz": info.tz}


def directory_zone(infos: list[EntryInfo], tz: str | None = None) -> str:
    """``tz`` if given (checked), else the zone of the newest entry with wall time, else this machine's."""
    from vstream.clock import check_zone, local_zone

    if tz is not None:
        return check_zone(tz)
    return next((i.tz for i in reversed(infos) if i.tz), None) or local_zone()


def in_period(infos: list[EntryInfo], since=None, until=None, tz: str | None = None) -> list[EntryInfo]:
    """The entries whose wall-clock span overlaps ``[since, until)`` (all of them when neither is given)."""
    from memory.longterm import wall_overlaps
    from vstream.clock import parse_range

    rng = parse_range(since, until, tz=directory_zone(infos, tz))
    return infos if rng is None else [i for i in infos if wall_overlaps(i, rng)]


def search(directory: str | Path, query: str, *, top: int = 5, thumbs_dir: str | Path | None = None,
           embedder=None, since=None, until=None, tz: str | None = None) -> list[Moment]:
    """The ``top`` moments of a memory directory that best match ``query`` (see the module docstring).

    ``since``/``until`` (``vstream.clock.parse_when``; zone ``tz``, default the stream's): only entries
    recorded in that wall-clock range."""
    if not query or not query.strip():
        raise ValueError("empty search query; give the words to look for, e.g. \"how far away is the storm\"")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    d = Path(directory)
    infos = in_period(read_infos(d), since, until, tz)
    if not infos:
        return []
    if embedder is None:
        from memory.textvec import TextEmbedder

        embedder = TextEmbedder()
    by_id = {i.entry_id: i for i in infos}
    ranked = sorted(_scores(d, infos, query, embedder).items(), key=lambda x: (-x[1], x[0]))
    picked: list[tuple[EntryInfo, float]] = []
    for eid, score in ranked:
        info = _moment_of(by_id[eid], infos)
        if any(info.start_s < p.end_s and p.start_s < info.end_s for p, _ in picked):
            continue  # the same seconds as a better moment
        picked.append((info, score))
        if len(picked) >= top:
            break
    out = []
    thumbs = Path(thumbs_dir) if thumbs_dir is not None else None
    if thumbs is not None:
        if thumbs.resolve() == d.resolve() or d.resolve() in thumbs.resolve().parents:
            raise ValueError(f"thumbs_dir {thumbs} is inside the memory directory; search never writes there, "
                             "give another folder")
        thumbs.mkdir(parents=True, exist_ok=True)
    for rank, (info, score) in enumerate(picked):
        thumb = None
        if thumbs is not None and info.thumbnail:
            p = thumbs / f"{rank + 1:02d}_{info.start_s:07.1f}s.jpg"
            p.write_bytes(info.thumbnail)
            thumb = str(p)
        out.append(Moment(start_s=info.start_s, end_s=info.end_s, text=_plain(info.text), source=_source(info),
                          score=score, entry_id=info.entry_id, thumbnail=thumb, **wall_of(info)))
    return out


def transcript(directory: str | Path, *, since=None, until=None, tz: str | None = None) -> list[Line]:
    """Speech (and commentary) entries of a memory directory, in time order (``since``/``until``: only those
    recorded in that wall-clock range)."""
    lines = [Line(start_s=i.start_s, end_s=i.end_s, text=_plain(i.text), source=i.source, **wall_of(i))
             for i in in_period(read_infos(Path(directory)), since, until, tz)
             if i.kind == "text" and i.source in ("speech", "commentary")]
    return sorted([ln for ln in lines if ln.text], key=lambda ln: (ln.start_s, ln.end_s))


def _stamp(t: float, sep: str) -> str:
    ms = int(round(max(t, 0.0) * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def export(directory: str | Path, fmt: str, *, since=None, until=None, tz: str | None = None) -> str:
    """The transcript as SubRip (``srt``), WebVTT (``vtt``) or JSON (``json``: ``{"segments": [...]}``).

    Cue times are stream time; a line with wall-clock time starts with it (``[14:05:03]``, the stream's zone)
    and JSON has both (``wall_s``, ``wall_end_s``, ``tz``, ``clock``: ISO 8601)."""
    from vstream.clock import clock_text, iso

    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    lines = transcript(directory, since=since, until=until, tz=tz)
    if fmt == "json":
        segs = [{**ln.to_dict(), **({"clock": iso(ln.wall_s, ln.tz)} if ln.wall_s is not None else {})}
                for ln in lines]
        return json.dumps({"segments": segs}, ensure_ascii=False, indent=1) + "\n"
    cues = []
    for n, ln in enumerate(lines, 1):
        sep = "," if fmt == "srt" else "."
        end = max(ln.end_s, ln.start_s + 0.001)
        text = ln.text if ln.source == "speech" else f"[{ln.source}] {ln.text}"
        if ln.wall_s is not None:
            text = f"[{clock_text(ln.wall_s, ln.tz)}] {text}"
        cue = f"{_stamp(ln.start_s, sep)} --> {_stamp(end, sep)}\n{text}\n"
        cues.append(f"{n}\n{cue}" if fmt == "srt" else cue)
    body = "\n".join(cues)
    return body if fmt == "srt" else "WEBVTT\n\n" + body
