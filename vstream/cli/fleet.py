"""`vstream fleet CONFIG.toml`: many streams on one model until stopped (SIGINT / SIGTERM), or until
every stream has ended.

A config file (relative paths are relative to the file)::

    model = "tiny-smolvlm"          # preset, hub id or local directory
    config = "tiny"                 # config preset (optional)
    device = "auto"                 # optional; dtype too
    event_log = "events.jsonl"      # append-only, fsynced (default: events.jsonl beside the config)
    webhook = "http://127.0.0.1:9000/hook"   # optional: every event POSTed as JSON
    max_batch = 16                  # chunks ingested together at most
    gap_s = 10                      # a stream silent this long gets a "gap" event
    stats_every_s = 10              # a stats line this often (0: only at the end)

    [memory]                        # defaults for every stream: any vstream.config.MemoryConfig field
    window_chunks = 8
    max_disk_bytes = 1_000_000_000  # retention per stream
    max_age_s = 86400

    [alerts]                        # defaults for every stream
    threshold = 0.5
    cooldown_s = 10
    notify = ["a person enters"]

    [[streams]]
    id = "cam-1"
    source = "rtsp://10.0.0.5/stream"
    memory_dir = "cams/1"           # optional
    fps = 2                         # optional; realtime (bool) too
    notify = ["a red car stops"]    # added to [alerts].notify
    memory = { max_disk_bytes = 500_000_000 }   # optional per-stream overrides
"""
from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_TOP = {"model", "config", "device", "dtype", "event_log", "webhook", "max_batch", "gap_s", "stats_every_s",
        "memory", "alerts", "streams"}
_STREAM = {"id", "source", "memory_dir", "fps", "realtime", "chunk_seconds", "notify", "memory"}
_ALERTS = {"threshold", "cooldown_s", "notify"}


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and check a fleet config; ValueError (one line, naming the key) on anything wrong."""
    from vstream.config import MemoryConfig

    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"fleet config {p} does not exist; give a TOML file (see `vstream fleet --help`)") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"fleet config {p} is not valid TOML: {e}") from None
    base = p.resolve().parent

    def rel(v: str) -> str:
        if not isinstance(v, str):
            raise ValueError(f"{p}: paths must be strings, got {v!r}")
        q = Path(v).expanduser()
        return str(q if q.is_absolute() else base / q)

    unknown = set(raw) - _TOP
    if unknown:
        raise ValueError(f"{p}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_TOP))}")
    mem_fields = {f.name for f in dataclasses.fields(MemoryConfig)}

    def memory_overrides(d: Any, where: str) -> dict[str, Any]:
        if not isinstance(d, dict):
            raise ValueError(f"{p}: {where} must be a table of memory settings")
        bad = set(d) - mem_fields
        if bad:
            raise ValueError(f"{p}: unknown memory setting(s) {', '.join(sorted(bad))} in {where}")
        return {f"memory.{k}": v for k, v in d.items()}

    alerts = raw.get("alerts", {})
    if not isinstance(alerts, dict) or set(alerts) - _ALERTS:
        raise ValueError(f"{p}: [alerts] takes {', '.join(sorted(_ALERTS))}")
    streams = raw.get("streams")
    if not isinstance(streams, list) or not streams:
        raise ValueError(f"{p}: no [[streams]]; add at least one with id and source")
    out_streams, seen = [], set()
    for i, s in enumerate(streams):
        where = f"streams[{i}]"
        if not isinstance(s, dict) or set(s) - _STREAM:
            raise ValueError(f"{p}: {where} takes {', '.join(sorted(_STREAM))}")
        sid, src = s.get("id"), s.get("source")
        if not isinstance(sid, str) or not sid or not isinstance(src, str) or not src:
            raise ValueError(f"{p}: {where} needs an id and a source (strings)")
        if sid in seen:
            raise ValueError(f"{p}: stream id {sid!r} is used twice")
        seen.add(sid)
        if not (src.startswith("synthetic") or "://" in src or src.startswith("/dev/")):
            src = rel(src)
        notify = list(alerts.get("notify", [])) + list(s.get("notify", []))
        conds = [{"text": n, "threshold": float(alerts.get("threshold", 0.5)),
                  "cooldown_s": float(alerts.get("cooldown_s", 10.0))} for n in notify]
        out_streams.append({"id": sid, "source": src, "memory_dir": rel(s["memory_dir"]) if "memory_dir" in s else None,
                            "fps": s.get("fps"), "realtime": s.get("realtime"), "chunk_seconds": s.get("chunk_seconds"),
                            "notify": conds, "config": memory_overrides(s.get("memory", {}), f"{where}.memory")})
    return {"model": raw.get("model"), "config": raw.get("config"), "device": raw.get("device"),
            "dtype": raw.get("dtype"), "event_log": rel(raw.get("event_log", "events.jsonl")),
            "webhook": raw.get("webhook"), "max_batch": int(raw.get("max_batch", 16)),
            "gap_s": float(raw.get("gap_s", 10.0)), "stats_every_s": float(raw.get("stats_every_s", 10.0)),
            "memory": memory_overrides(raw.get("memory", {}), "[memory]"), "streams": out_streams}


def cmd_fleet(args) -> int:
    from vstream.api import Agent
    from vstream.config import from_name
    from vstream.fleet.core import Fleet
    from vstream.sources import open_source

    cfg = load_config(args.config_file)
    for s in cfg["streams"]:  # a bad source or bad settings fail before the model loads
        s["source"] = open_source(s["source"])
        base = from_name(cfg["config"]) if cfg["config"] else from_name("default")
        base.replace(**{**cfg["memory"], **s["config"]}).validate()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    agent = Agent.from_pretrained(cfg["model"], config=cfg["config"], device=cfg["device"], dtype=cfg["dtype"],
                                  **cfg["memory"])
    out = sys.stdout

    def emit(obj: dict, human: str) -> None:
        out.write((json.dumps(obj, ensure_ascii=False, default=str) if args.json else human) + "\n")
        out.flush()

    with Fleet(agent, event_log=cfg["event_log"], webhook=cfg["webhook"], max_batch=cfg["max_batch"],
               gap_s=cfg["gap_s"]) as fleet:
        since = fleet.log.seq
        for s in cfg["streams"]:
            fleet.add(s["id"], s["source"], memory_dir=s["memory_dir"], notify=s["notify"], fps=s["fps"],
                      realtime=s["realtime"], chunk_seconds=s["chunk_seconds"], config=s["config"])
        emit({"type": "started", "streams": fleet.streams, "event_log": cfg["event_log"]},
             f"watching {len(fleet.streams)} streams; events in {cfg['event_log']} (Ctrl-C stops)")
        last_stats = time.monotonic()
        while not stop.is_set():
            for ev in fleet.events(since, timeout=0.2):
                since = ev["seq"] + 1
                emit({**ev, "type": "event", "event": ev["type"]}, _human(ev))
                if stop.is_set():
                    break
            every = cfg["stats_every_s"]
            if every and time.monotonic() - last_stats >= every:
                last_stats = time.monotonic()
                emit({"type": "stats", **fleet.stats()["total"]}, _human_stats(fleet.stats()["total"]))
            st = fleet.stats()["total"]
            if st["streams_down"] == st["streams"]:
                for ev in fleet.events(since, follow=False):
                    since = ev["seq"] + 1
                    emit({**ev, "type": "event", "event": ev["type"]}, _human(ev))
                break
        final = fleet.stats()
    emit({"type": "stats", "final": True, **final}, _human_stats(final["total"]))
    return 0


def _human(ev: dict) -> str:
    head = f"[{ev['stream']} {ev.get('stream_time_s', 0):.1f}s]"
    if ev["type"] == "alert":
        return f"{head} ALERT {ev.get('condition')!r} (p={ev.get('probability', 0):.2f}): {ev.get('answer') or ''}"
    extra = f": {ev['error']}" if ev.get("error") else ""
    return f"{head} {ev['type']}{extra}"


def _human_stats(t: dict) -> str:
    return (f"{t['streams']} streams ({t['streams_up']} up, {t['streams_down']} down): {t['chunks']} chunks, "
            f"{t['chunks_dropped']} dropped, mean batch {t['mean_batch'] or 0:.1f}, {t['events']} events")


def add_parser(sub) -> None:
    f = sub.add_parser("fleet", help="many streams on one model until stopped (config in a TOML file)")
    f.add_argument("config_file", help="TOML: model, streams, alerts, retention (see vstream/cli/fleet.py)")
    f.add_argument("--json", action="store_true", help="one JSON object per line")
    f.set_defaults(func=cmd_fleet)
