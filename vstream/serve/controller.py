"""The RayFleet controller (a threaded Ray actor): workers, placement by load, failure detection, the event log.

- Placement: a new stream goes to the live worker with the fewest streams (ties: the oldest worker).
  ``add_worker`` rebalances (streams move from the most to the least loaded worker until they differ by
  at most one); ``remove_worker`` moves its streams away first. A move flushes the stream's memory on
  the old worker and resumes it from its memory directory on the new one.
- Failure: a monitor thread polls every worker (``FleetWorker.poll``, also the event feed) every
  ``health_interval_s``. A worker whose actor died, or that missed ``max_missed`` polls, is declared
  dead and killed (fencing: its memory locks are released and it can write nothing more); the events
  in its streams' outboxes are replayed into the log (de-duplicated by id) and its streams are re-placed
  on live workers with ``resume=True``. With no live worker the streams wait for the next ``add_worker``.
- Events: this actor is the only writer of the fleet's event log (vstream.serve.journal.Journal).
- Durability: streams (source, options, memory dir, placement) and the worker count asked for are kept in
  ``STORAGE/registry.json`` (vstream.serve.registry) and reloaded at start, stale outboxes replayed; a
  controller restarted by Ray starts its workers again; with ``respawn`` a dead worker is replaced.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from vstream.serve.journal import Journal, safe_name
from vstream.serve.rayutil import gather as _gather
from vstream.serve.rayutil import unwrap
from vstream.serve.registry import REGISTRY_NAME, Registry

logger = logging.getLogger(__name__)

CONTROLLER_NAME = "vstream-controller"


@dataclass
class _Stream:
    id: str
    source: str
    options: dict[str, Any]
    memory_dir: str
    worker: str | None = None
    epoch: int = 0
    moves: int = 0
    resumes: int = 0
    resumed_at_s: float = 0.0


@dataclass
class _Worker:
    name: str
    handle: Any
    cursor: int = -1
    missed: int = 0
    alive: bool = True
    pid: int | None = None
    streams: set[str] = field(default_factory=set)
    started_at: float = field(default_factory=time.time)


class Controller:
    """Holds the workers and the placement; see the module docstring. All public methods are actor calls."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = dict(spec)
        self.storage = Path(spec["storage"])
        self.storage.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(spec.get("event_log") or self.storage / "events.jsonl")
        self.webhook = None
        if spec.get("webhook"):
            from vstream.fleet.events import Webhook

            self.webhook = Webhook(spec["webhook"], **(spec.get("webhook_options") or {}))
            self.journal.log.add_listener(self.webhook.send)
        self._lock = threading.RLock()
        self._workers: dict[str, _Worker] = {}
        self._streams: dict[str, _Stream] = {}
        self._names = itertools.count()
        self._epochs = itertools.count(int(time.time() * 1000) % 10**9)  # unique across controller restarts
        self._stop = threading.Event()
        self.deaths = 0
        self._t0 = time.monotonic()
        self._spawning = 0  # replacement workers being started
        self.registry = Registry(self.storage / REGISTRY_NAME)
        self._wanted = 0  # workers asked for (add_workers minus remove_worker)
        self._recover()
        self._monitor = threading.Thread(target=self._watch, name="vstream-controller-monitor", daemon=True)
        self._monitor.start()

    def _recover(self) -> None:
        """Register the streams of the registry again (waiting for a worker) and replay stale outboxes."""
        for sid, r in self.registry.snapshot().items():
            self._streams[sid] = _Stream(sid, r["source"], dict(r.get("options") or {}), r["memory_dir"],
                                         epoch=int(r.get("epoch") or 0))
        n = self.journal.replay_dir(self.storage / "outbox")  # events a dead controller never polled
        if self._streams or n:
            logger.warning("controller: %d stream(s) reloaded from the registry, %d event(s) recovered from outboxes",
                           len(self._streams), n)
        if _reconstructed() and self.registry.workers_wanted:
            want = self.registry.workers_wanted
            logger.warning("controller restarted: starting its %d worker(s) again", want)
            threading.Thread(target=self._respawn, args=(want,), name="vstream-controller-recover",
                             daemon=True).start()

    # ---- workers ------------------------------------------------------------------------------
    def add_worker(self, rebalance: bool = True) -> str:
        """Start a worker actor (loads the model; returns when it is ready) and rebalance onto it."""
        return self.add_workers(1, rebalance)[0]

    def add_workers(self, n: int, rebalance: bool = True, _replace: bool = False) -> list[str]:
        """Start ``n`` workers at once (their models load in parallel); returns their names when all are ready."""
        from vstream.serve.worker import FleetWorker

        if not _replace:
            with self._lock:
                self._wanted += int(n)
            self.registry.set_workers(self._wanted)

        sp = self.spec
        device = sp.get("device") or ("cuda" if sp.get("num_gpus") else "cpu")
        threads = int(max(1, sp.get("num_cpus") or 1)) if device == "cpu" else None
        started = []
        for _ in range(n):
            name = f"worker-{next(self._names)}"
            opts: dict[str, Any] = {"num_cpus": sp.get("num_cpus", 1), "num_gpus": sp.get("num_gpus", 0),
                                    "max_concurrency": 32, "max_restarts": 0, "name": f"vstream-{sp['tag']}-{name}"}
            handle = ray.remote(FleetWorker).options(**opts).remote(
                name, sp["model"], sp.get("config"), device=device, dtype=sp.get("dtype"),
                overrides=sp.get("overrides"), threads=threads, max_batch=sp.get("max_batch", 16))
            started.append((name, handle))
        pids = _gather([h.ping.remote() for _, h in started], timeout=sp.get("start_timeout_s", 600))
        bad = [(nm, p) for (nm, _), p in zip(started, pids) if isinstance(p, Exception)]
        if bad:
            for _, h in started:
                ray.kill(h)
            raise RuntimeError(f"worker {bad[0][0]} did not start: {unwrap(bad[0][1])}")
        with self._lock:
            if self._stop.is_set():
                for _, h in started:
                    ray.kill(h)
                raise RuntimeError("the controller is shutting down")
            for (name, handle), pid in zip(started, pids):
                self._workers[name] = _Worker(name, handle, pid=pid)
        logger.info("controller: %s ready", ", ".join(nm for nm, _ in started))
        self._place_waiting()
        if rebalance:
            self.rebalance()
        return [nm for nm, _ in started]

    def remove_worker(self, name: str | None = None) -> str:
        """Move a worker's streams to the others, then stop it. Default: the newest live worker."""
        with self._lock:
            live = [w for w in self._workers.values() if w.alive]
            if name is None:
                if not live:
                    raise ValueError("no live worker to remove")
                name = live[-1].name
            w = self._workers.get(name)
            if w is None or not w.alive:
                raise ValueError(f"no live worker {name!r}; workers: {', '.join(self.workers()) or 'none'}")
            if len(live) == 1 and w.streams:
                raise ValueError(f"{name} is the last live worker and holds streams; add a worker first")
            w.alive = False  # nothing new is placed on it
            moving = sorted(w.streams)
        for sid in moving:
            self._move(sid, self._least_loaded(exclude={name}))
        self._poll(w)  # the last events of its streams
        try:
            ray.get(w.handle.close.remote(), timeout=60)
        except Exception as e:
            logger.warning("controller: closing %s failed: %s", name, e)
        ray.kill(w.handle)
        with self._lock:
            self._workers.pop(name, None)
            self._wanted = max(0, self._wanted - 1)
        self.registry.set_workers(self._wanted)
        return name

    def _respawn(self, n: int) -> None:
        """Start ``n`` replacement workers (a death, a restart); waiting streams are placed on them."""
        try:
            self.add_workers(n, rebalance=False, _replace=True)
        except Exception as e:  # noqa: BLE001 - logged; the next death or add_worker tries again
            logger.error("controller: starting %d replacement worker(s) failed: %s", n, e)
        finally:
            with self._lock:
                self._spawning -= n

    def workers(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {w.name: {"alive": w.alive, "pid": w.pid, "streams": sorted(w.streams)}
                    for w in self._workers.values()}

    def _least_loaded(self, exclude: set[str] = frozenset()) -> str | None:
        with self._lock:
            live = [w for w in self._workers.values() if w.alive and w.name not in exclude]
            if not live:
                return None
            return min(live, key=lambda w: (len(w.streams), w.started_at)).name

    def rebalance(self) -> int:
        """Move streams from the most to the least loaded live worker until loads differ by <= 1."""
        moved = 0
        while True:
            with self._lock:
                live = [w for w in self._workers.values() if w.alive]
                if len(live) < 2:
                    return moved
                hi = max(live, key=lambda w: len(w.streams))
                lo = min(live, key=lambda w: (len(w.streams), w.started_at))
                if len(hi.streams) - len(lo.streams) <= 1:
                    return moved
                sid = sorted(hi.streams)[-1]
            self._move(sid, lo.name)
            moved += 1

    # ---- streams ------------------------------------------------------------------------------
    def add(self, stream_id: str, source: str, options: dict[str, Any] | None = None,
            memory_dir: str | None = None, max_streams: int | None = None) -> dict[str, Any]:
        """Place a new stream on the least loaded worker (``max_streams``: LimitExceeded when that many exist)."""
        with self._lock:
            if stream_id in self._streams:
                raise ValueError(f"stream {stream_id!r} already exists; remove it first or pick another id")
            if max_streams is not None and len(self._streams) >= max_streams:
                from vstream.serve.limits import LimitExceeded

                raise LimitExceeded(f"the server holds {len(self._streams)} streams, its limit; remove one first",
                                    429, "too_many_streams")
            md = memory_dir or str(self.storage / "streams" / safe_name(stream_id) / "memory")
            st = _Stream(stream_id, source, dict(options or {}), md)
            target = self._least_loaded()
            if target is None:
                raise RuntimeError("no live worker; add one with add_actor()")
            self._streams[stream_id] = st
        made = None if memory_dir else Path(md).parent  # the server's own directory for this id
        fresh = made is not None and not made.exists()
        try:
            self.registry.put(stream_id, source=source, options=st.options, memory_dir=md)
            out = self._place(st, target, resume=False)
        except BaseException:
            with self._lock:
                self._streams.pop(stream_id, None)
            self.registry.drop(stream_id)
            if fresh:  # a failed create leaves nothing behind
                import shutil

                shutil.rmtree(made, ignore_errors=True)
            raise
        return out

    def remove(self, stream_id: str) -> None:
        st = self._get(stream_id)
        with self._lock:
            w = self._workers.get(st.worker) if st.worker else None
        if w is not None and w.alive:
            ray.get(w.handle.remove.remote(stream_id))
            self._poll(w)
        with self._lock:
            self._streams.pop(stream_id, None)
            if w is not None:
                w.streams.discard(stream_id)
        self.registry.drop(stream_id)
        if st.epoch:
            p = self._outbox(st, st.epoch)
            self.journal.replay(p)  # all of it is in the log now: the placement's outbox can go
            p.unlink(missing_ok=True)

    def streams(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {s.id: {"worker": s.worker, "source": s.source, "memory_dir": s.memory_dir, "epoch": s.epoch,
                           "moves": s.moves, "resumes": s.resumes, "resumed_at_s": s.resumed_at_s,
                           "options": s.options}
                    for s in self._streams.values()}

    def locate(self, stream_id: str, timeout: float = 60.0):
        """(worker name, actor handle) of a stream, waiting up to ``timeout`` s while it is being re-placed."""
        end = time.monotonic() + timeout
        while True:
            st = self._get(stream_id)
            with self._lock:
                w = self._workers.get(st.worker) if st.worker else None
                if w is not None and w.alive:
                    return w.name, w.handle
            if time.monotonic() >= end:
                raise RuntimeError(f"stream {stream_id!r} has no live worker (waiting for one)")
            time.sleep(0.05)

    def _get(self, stream_id: str) -> _Stream:
        with self._lock:
            st = self._streams.get(stream_id)
            if st is None:
                raise ValueError(f"no stream {stream_id!r}; streams: {', '.join(sorted(self._streams)) or 'none'}")
            return st

    def _outbox(self, st: _Stream, epoch: int) -> Path:
        return self.storage / "outbox" / f"{safe_name(st.id)}.{epoch}.jsonl"

    def _place(self, st: _Stream, target: str, *, resume: bool) -> dict[str, Any]:
        epoch = next(self._epochs)
        with self._lock:
            w = self._workers[target]
            w.streams.add(st.id)  # counted now so that concurrent placements spread
        kw = dict(memory_dir=st.memory_dir, outbox=str(self._outbox(st, epoch)), epoch=epoch, resume=resume,
                  options=st.options, alert_state=self.journal.alert_state(st.id))
        out, err = None, None
        for _ in range(40):  # a killed worker's memory lock goes with its process: wait for that
            try:
                out = ray.get(w.handle.add.remote(st.id, st.source, **kw))
                break
            except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as e:
                err = e
                if not (resume and isinstance(e, ray.exceptions.RayTaskError) and "lock" in str(e).lower()):
                    break
                time.sleep(0.25)
        if out is None:
            with self._lock:
                w.streams.discard(st.id)
            raise unwrap(err) if err is not None else RuntimeError(f"placing {st.id!r} on {target} failed")
        with self._lock:
            old = st.epoch
            st.worker, st.epoch, st.resumed_at_s = target, epoch, float(out.get("resumed_at_s", 0.0))
        self.registry.place(st.id, target, epoch)
        if resume and old:
            p = self._outbox(st, old)
            self.journal.replay(p)  # anything the old placement logged but we did not poll
            p.unlink(missing_ok=True)
        logger.info("controller: %s on %s (epoch %d%s)", st.id, target, epoch, ", resumed" if resume else "")
        return out

    def _move(self, stream_id: str, target: str | None) -> None:
        if target is None:
            raise RuntimeError(f"no live worker to move {stream_id!r} to")
        st = self._get(stream_id)
        with self._lock:
            src = self._workers.get(st.worker) if st.worker else None
        if src is not None:
            try:
                ray.get(src.handle.remove.remote(stream_id, moving=True))
            except ray.exceptions.RayActorError:
                pass  # it died meanwhile: its memory is on disk all the same
            self._poll(src)
            with self._lock:
                src.streams.discard(stream_id)
        self._place(st, target, resume=True)
        st.moves += 1

    def _place_waiting(self) -> None:
        with self._lock:
            waiting = [s for s in self._streams.values() if s.worker is None]
        for st in waiting:
            target = self._least_loaded()
            if target is None:
                return
            try:
                self._place(st, target, resume=True)
                st.resumes += 1
            except Exception as e:
                logger.error("controller: re-placing %s failed: %s", st.id, e)

    # ---- failure detection and events ------------------------------------------------------------
    def _poll(self, w: _Worker) -> bool:
        """Pull a worker's new events into the log; False when the worker is dead."""
        try:
            res = ray.get(w.handle.poll.remote(w.cursor), timeout=self.spec.get("health_timeout_s", 5.0))
        except (ray.exceptions.GetTimeoutError, ray.exceptions.ActorUnavailableError):  # hung or unreachable now
            w.missed += 1
            return w.missed < self.spec.get("max_missed", 3)
        except ray.exceptions.RayActorError:  # the actor died (killed, crashed, its node lost)
            return False
        w.missed = 0
        for n, ev in res["events"]:
            self.journal.record(ev)
            w.cursor = max(w.cursor, n)
        return True

    def _watch(self) -> None:
        interval = self.spec.get("health_interval_s", 0.5)
        while not self._stop.wait(interval):
            with self._lock:
                ws = [w for w in self._workers.values() if w.alive]
            for w in ws:
                try:
                    ok = self._poll(w)
                except Exception:
                    logger.exception("controller: polling %s failed", w.name)
                    ok = True
                if not ok and not self._stop.is_set():
                    self._on_death(w)

    def _on_death(self, w: _Worker) -> None:
        with self._lock:
            if not w.alive:
                return
            w.alive = False
            orphans = sorted(w.streams)
            w.streams.clear()
            self.deaths += 1
            self._workers.pop(w.name, None)
        logger.warning("controller: %s (pid %s) is dead; re-placing %s", w.name, w.pid, ", ".join(orphans) or "nothing")
        try:
            ray.kill(w.handle)  # fence a hung worker; a dead one: no-op
        except Exception:
            pass
        for sid in orphans:
            with self._lock:
                st = self._streams.get(sid)
            if st is None:
                continue
            p = self._outbox(st, st.epoch)
            self.journal.replay(p)  # events it logged that we never polled
            p.unlink(missing_ok=True)
            st.worker = None
        if self.spec.get("respawn") and not self._stop.is_set():
            with self._lock:
                live = sum(x.alive for x in self._workers.values())
                missing = self._wanted - live - self._spawning
                self._spawning += max(0, missing)
            if missing > 0:
                logger.warning("controller: starting %d replacement worker(s)", missing)
                threading.Thread(target=self._respawn, args=(missing,), name="vstream-controller-respawn",
                                 daemon=True).start()
        self._place_waiting()

    # ---- fan-out ------------------------------------------------------------------------------
    def ask_all(self, question: str, top: int = 3, evidence: int = 3, since: Any = None,
                until: Any = None) -> list[dict[str, Any]]:
        with self._lock:
            ws = [w for w in self._workers.values() if w.alive and w.streams]
        refs = [w.handle.ask_all.remote(question, top, evidence, since, until) for w in ws]
        hits = [h for r in ray.get(refs) for h in r]
        hits.sort(key=lambda h: -h["score"])
        return hits[:top]

    def stats(self) -> dict[str, Any]:
        """``{"streams": {id: stats + "worker"}, "workers": {...}, "total": {...}}`` gathered from the workers."""
        from vstream.serve.stats import gather_stats

        with self._lock:
            ws = [w for w in self._workers.values() if w.alive]
            placement = {s.id: s.worker for s in self._streams.values()}
        return gather_stats(ws, placement, self.deaths, self.journal, self.webhook, time.monotonic() - self._t0)

    def events_since(self, since: int = 0, timeout: float = 1.0, limit: int = 1000) -> list[dict]:
        """Logged events with ``seq >= since`` (waits up to ``timeout`` s for the first one). Events older than
        those kept in memory (e.g. logged before a restart) are read from the log file."""
        return self.journal.events_since(since, timeout, limit)

    def event_log_path(self) -> str | None:
        p = self.journal.log.path
        return str(p) if p is not None else None

    def health(self) -> dict[str, Any]:
        with self._lock:
            live = sum(w.alive for w in self._workers.values())
            waiting = sum(s.worker is None for s in self._streams.values())
        return {"ok": live > 0 and waiting == 0, "workers_alive": live, "streams": len(self._streams),
                "streams_waiting": waiting, "model": self.spec["model"]}

    def shutdown(self) -> None:
        """Stop every worker (memories flushed), then the log. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._monitor.join(5)
        with self._lock:
            ws = list(self._workers.values())
        for w in ws:
            self._poll(w)
        _gather([w.handle.close.remote() for w in ws if w.alive], timeout=60)
        for w in ws:
            self._poll(w)
            try:
                ray.kill(w.handle)
            except Exception:
                pass
        with self._lock:
            self._workers.clear()
        if self.webhook is not None:
            self.webhook.close(5.0)
        self.journal.close()



def _reconstructed() -> bool:
    """True in an actor that Ray restarted after its process died."""
    try:
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # noqa: BLE001 - not inside an actor
        return False
