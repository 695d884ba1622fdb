"""`vstream serve`: a RayFleet behind the HTTP API on Ray Serve, until SIGINT / SIGTERM.

Without --ray-address a local Ray is started (and stopped at the end). Binds 127.0.0.1 unless --host
says otherwise; with --token-file every route but /v1/health wants ``Authorization: Bearer <token>``.
File sources are refused unless --allow-dir names the one directory they may come from.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

logger = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="HTTP API (streams, ask, events, search, OpenAI chat) over Ray actors")
    p.add_argument("--model", default=None, help="preset, hub id or local directory (default: by device)")
    p.add_argument("--config", default=None, help="config preset: default, streamingvlm, rekv, tiny")
    p.add_argument("--dtype", default=None, help="auto, float32, bfloat16, float16")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-file", default=None, help="file holding the bearer token clients must send")
    p.add_argument("--allow-dir", default=None,
                   help="the directory file sources may come from (default: none, only URLs and synthetic:)")
    p.add_argument("--actors", type=int, default=1, help="worker actors, one model each")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor (1: one GPU each)")
    p.add_argument("--storage", default=None, help="shared directory for memories and the event log "
                                                   "(default: ./vstream-serve)")
    p.add_argument("--webhook", default=None, help="POST every event as JSON to this URL")
    p.add_argument("--json", action="store_true", help="print where it listens as one JSON line")
    from vstream.serve.limits import ServeLimits

    d = ServeLimits()
    p.add_argument("--max-streams", type=int, default=d.max_streams, help=f"streams per server ({d.max_streams})")
    p.add_argument("--max-followers-per-token", type=int, default=d.max_followers_per_token,
                   help=f"open /v1/events followers per token ({d.max_followers_per_token})")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                   help=f"request body size ({d.max_body_bytes})")
    p.add_argument("--max-question-tokens", type=int, default=d.max_question_tokens,
                   help=f"tokens in a question ({d.max_question_tokens})")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                   help=f"cap on max_new_tokens / max_tokens ({d.max_new_tokens})")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import ray
    from ray import serve

    from vstream.serve.client import RayFleet
    from vstream.serve.http import deploy

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1..65535, got {args.port}")
    from vstream.serve.limits import ServeLimits

    limits = ServeLimits(max_streams=args.max_streams, max_followers_per_token=args.max_followers_per_token,
                         max_body_bytes=args.max_body_bytes, max_question_tokens=args.max_question_tokens,
                         max_new_tokens=args.max_new_tokens).validate()  # ValueError before Ray starts
    token = read_token(args.token_file) if args.token_file else None
    allow = None
    if args.allow_dir is not None:
        allow = Path(args.allow_dir).resolve()
        if not allow.is_dir():
            raise ValueError(f"--allow-dir {args.allow_dir} is not a directory")
    if args.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        logger.warning("binding %s without --token-file: anyone who can reach it can use it", args.host)
    owns = not ray.is_initialized()
    if owns:
        from vstream.serve.client import _worker_env

        kw = {"include_dashboard": False, "log_to_driver": False, "namespace": "vstream"}
        if args.ray_address is None:
            kw["runtime_env"] = {"env_vars": _worker_env()}
            if args.host in ("127.0.0.1", "localhost"):  # Ray's own addresses on loopback too
                kw["_node_ip_address"] = "127.0.0.1"
        ray.init(address=args.ray_address, **kw)
    storage = Path(args.storage or "vstream-serve").resolve()
    fleet = RayFleet(actors=args.actors, model=args.model, config=args.config, dtype=args.dtype,
                     num_cpus=args.num_cpus, num_gpus=args.num_gpus, storage=storage, webhook=args.webhook,
                     respawn=True)
    stop = threading.Event()
    try:
        url = deploy(fleet.controller_name, token=token, allow_dir=str(allow) if allow else None, host=args.host,
                     port=args.port, limits=limits)
        info = {"type": "listening", "url": url, "model": fleet.model, "actors": args.actors,
                "auth": token is not None, "allow_dir": str(allow) if allow else None, "storage": str(storage)}
        if args.json:
            print(json.dumps(info), flush=True)
        else:
            print(f"vstream serve: listening on {url} (model {fleet.model}, {args.actors} actor(s), "
                  f"{'bearer token' if token else 'no auth'}, file sources: {allow or 'none'})", flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0):
            pass
    finally:
        try:
            serve.shutdown()
        finally:
            fleet.close()
            if owns:
                ray.shutdown()
    print("vstream serve: stopped", file=sys.stderr)
    return 0


def read_token(path: str | os.PathLike) -> str:
    """The token in a file (surrounding whitespace removed); ValueError when the file is empty."""
    tok = Path(path).read_text(encoding="utf-8").strip()
    if not tok:
        raise ValueError(f"token file {path} is empty; put a secret on its first line")
    return tok
