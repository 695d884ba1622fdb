"""``vstream.RayFleet``: the Fleet API over Ray actors (see vstream.serve.controller for how it works).

    with RayFleet(actors=2, model="tiny-smolvlm", num_cpus=1) as fleet:
        fleet.add("cam-1", "rtsp://10.0.0.5/stream", notify=["a person enters"])
        fleet.ask("cam-1", "Who came in?")
        fleet.ask_all("Which camera saw a red car?")
        for event in fleet.events(): ...

Sources are strings (a network URL, a file every worker can read, or ``synthetic:...``): a stream must
be reopenable on another worker after a failure. Memory directories and the event log live under
``storage`` (default: a new temporary directory), which must be shared by every node of the cluster.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from vstream.types import Answer, Evidence

logger = logging.getLogger(__name__)

__all__ = ["RayFleet"]

_OPTION_KEYS = ("notify", "fps", "realtime", "chunk_seconds", "config")


def answer_from_dict(d: dict[str, Any]) -> Answer:
    """An ``Answer`` back from its ``to_dict`` form (thumbnails are not sent)."""
    ev = [Evidence(**e) for e in d.get("evidence", [])]
    known = {k: v for k, v in d.items() if k in Answer.__dataclass_fields__ and k != "evidence"}
    return Answer(evidence=ev, **known)


def _worker_env() -> dict[str, str]:
    """Environment for workers of a local Ray: this copy of vstream first on their path, offline hub flags."""
    root = str(Path(__file__).resolve().parents[2])
    env = {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    return env


class RayFleet:
    """Streams on a pool of Ray actors, each one model and one Fleet; the same calls as ``vstream.Fleet``.

    address: a Ray cluster ("auto", "ray://host:10001"); None: the running Ray of this process, else a
    local one (``ray_init`` kwargs). actors: workers to start. num_cpus / num_gpus: per worker.
    model / config / device / dtype / overrides: as ``Agent.from_pretrained``. storage: shared directory for
    memories, outboxes, the event log and the stream registry (a new RayFleet on the same storage resumes
    the registered streams). health_interval_s / max_missed: failure detection. respawn: replace a dead
    worker by a new one. controller_restarts: how often Ray restarts a dead controller (its state comes
    back from the registry and the event log).
    """

    def __init__(self, address: str | None = None, *, actors: int = 1, model: str | None = None,
                 config: str | None = None, num_cpus: float = 1, num_gpus: float = 0, device: str | None = None,
                 dtype: str | None = None, overrides: dict[str, Any] | None = None, storage: str | Path | None = None,
                 event_log: str | Path | None = None, webhook: str | None = None,
                 webhook_options: dict | None = None, health_interval_s: float = 0.5, health_timeout_s: float = 5.0,
                 max_missed: int = 3, max_batch: int = 16, ray_init: dict[str, Any] | None = None,
                 namespace: str = "vstream", name: str | None = None, respawn: bool = False,
                 controller_restarts: int = 20) -> None:
        if actors < 0:
            raise ValueError(f"actors must be >= 0, got {actors}")
        if num_cpus <= 0 and not num_gpus:
            raise ValueError("each actor needs num_cpus > 0 or num_gpus > 0")
        if not health_interval_s > 0 or max_missed < 1:
            raise ValueError("health_interval_s must be > 0 and max_missed >= 1")
        import ray

        from vstream.models.registry import DEFAULT_CPU_MODEL, DEFAULT_GPU_MODEL

        self._ray = ray
        self._owns_ray = False
        if not ray.is_initialized():
            kw = {"include_dashboard": False, "log_to_driver": False, **(ray_init or {})}
            kw.setdefault("runtime_env", {"env_vars": _worker_env()})
            ray.init(address=address, namespace=namespace, **kw)
            self._owns_ray = True
        self._tmp = None
        if storage is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="vstream-rayfleet-")
            storage = self._tmp.name
        self.storage = Path(storage).resolve()
        self.model = model or (DEFAULT_GPU_MODEL if num_gpus else DEFAULT_CPU_MODEL)
        tag = name or uuid.uuid4().hex[:8]
        spec = {"storage": str(self.storage), "model": self.model, "config": config, "num_cpus": num_cpus,
                "num_gpus": num_gpus, "device": device, "dtype": dtype, "overrides": overrides or {},
                "event_log": str(event_log) if event_log else None, "webhook": webhook,
                "webhook_options": webhook_options, "health_interval_s": health_interval_s,
                "health_timeout_s": health_timeout_s, "max_missed": max_missed, "max_batch": max_batch, "tag": tag,
                "respawn": bool(respawn)}
        from vstream.serve.controller import CONTROLLER_NAME, Controller

        self.controller_name = f"{CONTROLLER_NAME}-{tag}"
        self.controller = ray.remote(Controller).options(
            name=self.controller_name, num_cpus=0, max_concurrency=64,
            max_restarts=int(controller_restarts)).remote(spec)
        self._closed = False
        try:
            if actors:
                self._call("add_workers", actors)
        except BaseException:
            self.close()
            raise

    @classmethod
    def attach(cls, controller_name: str, namespace: str = "vstream") -> "RayFleet":
        """A client for a controller that runs already (e.g. from a Ray Serve replica)."""
        import ray

        self = cls.__new__(cls)
        self._ray, self._owns_ray, self._tmp, self._closed = ray, False, None, False
        self.controller_name = controller_name
        self.controller = ray.get_actor(controller_name, namespace=namespace)
        self.model = ray.get(self.controller.health.remote())["model"]
        self.storage = None
        return self

    def _call(self, method: str, *args, timeout: float | None = None, **kw):
        from vstream.serve.rayutil import unwrap

        if self._closed:
            raise RuntimeError("the RayFleet is closed; open a new one")
        try:
            return self._ray.get(getattr(self.controller, method).remote(*args, **kw), timeout=timeout)
        except self._ray.exceptions.RayTaskError as e:
            raise unwrap(e) from None

    # ---- actors -------------------------------------------------------------------------------
    def add_actor(self, n: int | None = None) -> str | list[str]:
        """Start one more worker (or ``n``; returns when the models are loaded); streams are rebalanced."""
        return self._call("add_worker") if n is None else self._call("add_workers", int(n))

    def remove_actor(self, name: str | None = None) -> str:
        """Move a worker's streams to the others and stop it (default: the newest)."""
        return self._call("remove_worker", name)

    def rebalance(self) -> int:
        """Move streams until the live actors' loads differ by at most one; returns how many moved."""
        return self._call("rebalance")

    def actors(self) -> dict[str, dict[str, Any]]:
        """``{worker name: {"alive", "pid", "streams"}}``."""
        return self._call("workers")

    def actor_of(self, stream_id: str, timeout: float = 60.0):
        """(worker name, Ray actor handle) serving a stream now (waits up to ``timeout`` s for a re-placement)."""
        return self._call("locate", stream_id, timeout)

    # ---- streams ------------------------------------------------------------------------------
    def add(self, stream_id: str, source: str | os.PathLike, *, memory_dir: str | Path | None = None, notify=(),
            fps: float | None = None, realtime: bool | None = None, chunk_seconds: float | None = None,
            config: dict[str, Any] | None = None, max_streams: int | None = None) -> dict[str, Any]:
        """Place a stream on the least loaded actor; returns where it went. Arguments as ``Fleet.add``;
        ``max_streams``: refuse (LimitExceeded) when the fleet holds that many streams already."""
        if not isinstance(stream_id, str) or not stream_id.strip():
            raise ValueError("stream_id must be a non-empty string, e.g. 'cam-1'")
        if not isinstance(source, (str, os.PathLike)):
            raise ValueError(f"a RayFleet source is a string (URL, file, 'synthetic:...'), got {type(source).__name__}"
                             "; an object cannot be reopened on another actor")
        options = {"notify": [notify] if isinstance(notify, (str, dict)) else list(notify or ()), "fps": fps,
                   "realtime": realtime, "chunk_seconds": chunk_seconds, "config": config}
        options = {k: v for k, v in options.items() if v not in (None, [], {})}
        return self._call("add", stream_id, str(source), options, str(memory_dir) if memory_dir else None,
                          max_streams=max_streams)

    def remove(self, stream_id: str) -> None:
        """Stop a stream; its memory stays in its directory."""
        self._call("remove", stream_id)

    @property
    def streams(self) -> list[str]:
        return list(self._call("streams"))

    def placement(self) -> dict[str, dict[str, Any]]:
        """``{stream id: {"worker", "source", "memory_dir", "epoch", "moves", "resumes", "options"}}``."""
        return self._call("streams")

    def wait_chunks(self, stream_id: str, n: int, timeout: float = 60.0) -> bool:
        """Wait until the stream's current placement ingested ``n`` chunks (retries across a re-placement)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            _, h = self.actor_of(stream_id)
            try:
                got = self._ray.get(h.wait_chunks.remote(stream_id, n, max(0.0, min(2.0, end - time.monotonic()))))
            except (self._ray.exceptions.RayActorError, self._ray.exceptions.RayTaskError):
                time.sleep(0.1)
                continue
            if got >= n:
                return True
        return False

    # ---- questions ----------------------------------------------------------------------------
    def ask(self, stream_id: str, question: str, *, stream: bool = False, max_new_tokens: int | None = None,
            history: bool = True, timeout: float | None = None, retries: int = 1, request_id: str | None = None,
            max_question_tokens: int | None = None, since: Any = None, until: Any = None) -> Answer | Iterator[str]:
        """Ask one stream (as ``Session.ask``). A plain ask whose actor dies is retried on the new placement.
        ``request_id``: a name for ``cancel``; ``max_question_tokens``: refuse longer questions (LimitExceeded)."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty; ask something about the stream")
        if stream:
            return (p for p in self.ask_stream(stream_id, question, max_new_tokens=max_new_tokens, history=history,
                                               since=since, until=until) if isinstance(p, str))
        from vstream.serve.rayutil import unwrap

        for attempt in range(retries + 1):
            _, h = self.actor_of(stream_id)
            try:
                d = self._ray.get(h.ask.remote(stream_id, question, max_new_tokens, history, timeout, request_id,
                                               max_question_tokens, since, until), timeout=timeout)
                return answer_from_dict(d)
            except self._ray.exceptions.RayActorError:
                if attempt == retries:
                    raise RuntimeError(f"the actor of {stream_id!r} died while answering; ask again") from None
            except self._ray.exceptions.RayTaskError as e:
                raise unwrap(e) from None

    def ask_stream(self, stream_id: str, question: str, *, max_new_tokens: int | None = None,
                   history: bool = True, request_id: str | None = None, max_question_tokens: int | None = None,
                   since: Any = None, until: Any = None) -> Iterator[str | Answer]:
        """Pieces (str) as they are decoded, then the ``Answer``."""
        from vstream.serve.rayutil import unwrap

        _, h = self.actor_of(stream_id)
        gen = h.ask_stream.options(num_returns="streaming").remote(stream_id, question, max_new_tokens, history,
                                                                   request_id, max_question_tokens, since, until)
        try:
            for ref in gen:
                item = self._ray.get(ref)
                yield answer_from_dict(item) if isinstance(item, dict) else item
        except self._ray.exceptions.RayTaskError as e:
            raise unwrap(e) from None

    def cancel(self, stream_id: str, request_id: str) -> bool:
        """Stop decoding the question ``request_id`` of a stream (its asker went away); False when unknown."""
        try:
            _, h = self.actor_of(stream_id, timeout=5.0)
            return bool(self._ray.get(h.cancel.remote(request_id), timeout=10))
        except Exception as e:  # the stream or its worker is gone: nothing decodes any more
            logger.info("RayFleet: cancel %s on %s: %s", request_id, stream_id, e)
            return False

    def ask_all(self, question: str, *, top: int = 3, evidence: int = 3, since: Any = None, until: Any = None) -> list:
        """The ``top`` streams whose memory best matches ``question`` (``StreamHit``), across every actor."""
        from vstream.fleet.core import StreamHit

        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty; say what to look for")
        if top < 1 or evidence < 1:
            raise ValueError("top and evidence must be >= 1")
        return [StreamHit(stream=h["stream"], score=h["score"], evidence=[Evidence(**e) for e in h["evidence"]])
                for h in self._call("ask_all", question.strip(), top, evidence, since, until)]

    # ---- events and stats ---------------------------------------------------------------------
    def events(self, since: int = 0, *, follow: bool = True, timeout: float | None = None) -> Iterator[dict]:
        """Logged events (each once, with ``seq`` and ``id``) from ``since`` on; with ``follow``, new ones
        until the fleet closes or none came for ``timeout`` seconds."""
        nxt = since
        idle_since = time.monotonic()
        while not self._closed:
            batch = self._call("events_since", nxt, 0.0 if not follow else 1.0)
            for e in batch:
                nxt = e["seq"] + 1
                yield e
            if batch:
                idle_since = time.monotonic()
            elif not follow or (timeout is not None and time.monotonic() - idle_since >= timeout):
                return

    def stats(self) -> dict[str, Any]:
        """``{"streams": {id: stats + "worker"}, "workers": {...}, "total": {...}}``."""
        return self._call("stats")

    def health(self) -> dict[str, Any]:
        return self._call("health")

    @property
    def event_log(self) -> str | None:
        return self._call("event_log_path")

    # ---- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every actor (memories flushed) and the controller; shut Ray down if this object started it."""
        if self._closed:
            return
        try:
            self._ray.get(self.controller.shutdown.remote(), timeout=120)
        except Exception as e:
            logger.warning("RayFleet: controller shutdown failed: %s", e)
        self._closed = True
        try:
            self._ray.kill(self.controller)
        except Exception:
            pass
        if self._owns_ray:
            self._ray.shutdown()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> "RayFleet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


from vstream.serve.realtime_client import RealtimeClient  # noqa: E402,F401 - ``vstream.serve.client.RealtimeClient``
