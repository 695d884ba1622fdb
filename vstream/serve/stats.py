"""The fleet's statistics, gathered from its live workers by the controller (``Controller.stats``)."""
from __future__ import annotations

from typing import Any

from vstream.serve.rayutil import gather


def gather_stats(workers: list, placement: dict[str, str | None], deaths: int, journal, webhook,
                 uptime_s: float) -> dict[str, Any]:
    """``{"streams": {id: stats + "worker"}, "workers": {...}, "total": {...}}``; a worker that does not
    answer is reported (alive False), a stream being placed has state "placing"."""
    per: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for w, res in zip(workers, gather([w.handle.stats.remote() for w in workers])):
        if isinstance(res, Exception):
            out[w.name] = {"alive": False, "error": str(res)}
            continue
        out[w.name] = {"alive": True, "pid": w.pid, **res["total"]}
        for sid, v in res["streams"].items():
            per[sid] = {**v, "worker": w.name}
    for sid, wn in placement.items():
        per.setdefault(sid, {"worker": wn, "state": "placing"})
    done = [v for v in per.values() if "chunks" in v]
    total = {
        "streams": len(per), "workers": len(out), "worker_deaths": deaths,
        "chunks": sum(v["chunks"] for v in done),
        "chunks_dropped": sum(v["chunks_dropped"] for v in done),
        "frames_dropped": sum(v["frames_dropped"] for v in done),
        "chunks_per_s": sum((w.get("chunks_per_s") or 0.0) for w in out.values() if w.get("alive")),
        "memory_bytes": {k: sum(v["memory_bytes"][k] for v in done) for k in ("device", "ram", "disk")},
        "events": journal.seq, "events_deduplicated": journal.duplicates,
        "webhook": webhook.stats() if webhook is not None else None,
        "uptime_s": uptime_s,
    }
    return {"streams": per, "workers": out, "total": total}
