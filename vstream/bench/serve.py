"""`vstream bench serve`: RayFleet throughput and answer TTFT with 1 vs 2 actors, and the cost of the HTTP path.

- scale: ``--streams`` synthetic streams (not paced, ``--chunks`` chunks each) on a RayFleet of 1, then
  2 actors; aggregate chunks/s from the first add to the last chunk, and answer TTFT as a client sees
  it (round trip of an ask with one new token) for questions asked while the streams ingest.
- http: one finished stream; the same question (no history, ``--tokens`` new tokens) asked through an
  in-process ``Fleet.ask``, ``RayFleet.ask`` (an actor call) and ``POST /v1/streams/{id}/ask`` on Ray
  Serve, alternating, ``--repeats`` times each; medians and ratios to the direct call.

Writes ``serve.json`` and ``serve.png`` to ``--out``. Ratios come from one run on one machine.
"""
from __future__ import annotations

import json
import logging
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _pct(xs, q):
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if len(xs) else None


def _spec(seed: int, chunks: int, size: int) -> str:
    return f"synthetic:seed={seed},duration={chunks},fps=4,size={size}x{size}"


def _scale(actors: int, *, model: str, streams: int, chunks: int, size: int, num_cpus: float, storage: Path,
           questions: int) -> dict[str, Any]:
    from vstream.serve.client import RayFleet

    with RayFleet(actors=actors, model=model, config="tiny" if model.startswith("tiny-") else None,
                  num_cpus=num_cpus, storage=storage / f"scale-{actors}") as fleet:
        ttfts: list[float] = []
        stop = threading.Event()

        def asker() -> None:  # questions while perception runs, round-robin over the streams
            k = 0
            while not stop.is_set() and k < questions:
                sid = f"s{k % streams}"
                t0 = time.perf_counter()
                try:
                    fleet.ask(sid, "What is on screen?", max_new_tokens=1, history=False, timeout=120)
                    ttfts.append(time.perf_counter() - t0)
                except (ValueError, RuntimeError) as e:
                    logger.warning("bench ask failed: %s", e)
                k += 1

        t0 = time.perf_counter()
        for i in range(streams):
            fleet.add(f"s{i}", _spec(i, chunks, size))
        th = threading.Thread(target=asker, daemon=True)
        th.start()
        for i in range(streams):
            if not fleet.wait_chunks(f"s{i}", chunks, timeout=3600):
                raise RuntimeError(f"stream s{i} did not finish")
        wall = time.perf_counter() - t0
        stop.set()
        th.join(300)
        st = fleet.stats()
    return {"actors": actors, "streams": streams, "chunks": st["total"]["chunks"], "wall_s": wall,
            "chunks_per_s": st["total"]["chunks"] / wall, "ttft_p50_s": _pct(ttfts, 50), "ttft_p95_s": _pct(ttfts, 95),
            "questions": len(ttfts)}


def _http_cost(*, model: str, chunks: int, size: int, num_cpus: float, storage: Path, repeats: int,
               tokens: int) -> dict[str, Any]:
    import httpx
    from ray import serve

    from vstream.api import Agent
    from vstream.fleet.core import Fleet
    from vstream.serve.client import RayFleet
    from vstream.serve.http import deploy

    import torch

    torch.set_num_threads(max(1, int(num_cpus)))  # the in-process Fleet gets what one actor gets
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    q = "What is on screen?"
    cfg = "tiny" if model.startswith("tiny-") else None
    times: dict[str, list[float]] = {"fleet": [], "rayfleet": [], "http": []}
    with RayFleet(actors=1, model=model, config=cfg, num_cpus=num_cpus, storage=storage / "http") as rf:
        url = deploy(rf.controller_name, port=port)
        try:
            with Fleet(Agent.from_pretrained(model, config=cfg)) as local:
                rf.add("h", _spec(0, chunks, size))
                local.add("h", _spec(0, chunks, size))
                assert rf.wait_chunks("h", chunks, timeout=600) and local.stream("h").wait_chunks(chunks, 600)
                client = httpx.Client(base_url=url, timeout=120)
                calls = {
                    "fleet": lambda: local.ask("h", q, max_new_tokens=tokens, history=False, timeout=120),
                    "rayfleet": lambda: rf.ask("h", q, max_new_tokens=tokens, history=False, timeout=120),
                    "http": lambda: client.post("/v1/streams/h/ask", json={"question": q, "history": False,
                                                                           "max_new_tokens": tokens}).raise_for_status(),
                }
                for fn in calls.values():  # warm-up
                    fn()
                for _ in range(repeats):
                    for name, fn in calls.items():
                        t0 = time.perf_counter()
                        fn()
                        times[name].append(time.perf_counter() - t0)
                client.close()
        finally:
            serve.shutdown()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"repeats": repeats, "tokens": tokens, "median_s": med,
            "p95_s": {k: _pct(v, 95) for k, v in times.items()},
            "ratio_http_over_fleet": med["http"] / med["fleet"],
            "ratio_rayfleet_over_fleet": med["rayfleet"] / med["fleet"],
            "ratio_http_over_rayfleet": med["http"] / med["rayfleet"]}


def bench_serve(model: str = "tiny-smolvlm", streams: int = 4, chunks: int = 40, size: int = 64,
                num_cpus: float = 1.0, questions: int = 20, repeats: int = 20, tokens: int = 8,
                ray_cpus: int | None = None) -> dict[str, Any]:
    """Run both parts on a fresh local Ray; returns the result dict (see the module docstring)."""
    import tempfile

    import ray

    from vstream.bench.common import environment
    from vstream.serve.client import _worker_env

    ray.init(num_cpus=ray_cpus or max(2, int(2 * num_cpus)), include_dashboard=False, log_to_driver=False,
             namespace="vstream", runtime_env={"env_vars": _worker_env()})
    try:
        with tempfile.TemporaryDirectory(prefix="vstream-bench-serve-") as tmp:
            storage = Path(tmp)
            kw = dict(model=model, streams=streams, chunks=chunks, size=size, num_cpus=num_cpus, storage=storage,
                      questions=questions)
            one = _scale(1, **kw)
            two = _scale(2, **kw)
            http = _http_cost(model=model, chunks=min(chunks, 8), size=size, num_cpus=num_cpus, storage=storage,
                              repeats=repeats, tokens=tokens)
    finally:
        ray.shutdown()
    return {"bench": "serve", "env": environment(), "model": model,
            "scale": {"1": one, "2": two,
                      "ratio_chunks_per_s_2_over_1": two["chunks_per_s"] / one["chunks_per_s"],
                      "ratio_ttft_p50_2_over_1": (two["ttft_p50_s"] / one["ttft_p50_s"]
                                                  if one["ttft_p50_s"] and two["ttft_p50_s"] else None)},
            "http": http}


def plot_serve(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    sc = res["scale"]
    ax[0].bar(["1 actor", "2 actors"], [sc["1"]["chunks_per_s"], sc["2"]["chunks_per_s"]], color=["#888", "#37a"])
    ax[0].set_ylabel("aggregate chunks/s")
    ax[0].set_title(f"{sc['1']['streams']} streams, {res['model']}")
    x = np.arange(2)
    for j, (key, lab) in enumerate((("ttft_p50_s", "p50"), ("ttft_p95_s", "p95"))):
        ax[1].bar(x + (j - 0.5) * 0.38, [1e3 * (sc[k][key] or 0) for k in ("1", "2")], 0.38, label=lab)
    ax[1].set_xticks(x, ["1 actor", "2 actors"])
    ax[1].set_ylabel("answer TTFT, client side (ms)")
    ax[1].legend()
    h = res["http"]
    names = ["fleet", "rayfleet", "http"]
    ax[2].bar(["Fleet.ask", "RayFleet.ask", "HTTP /ask"], [1e3 * h["median_s"][n] for n in names],
              color=["#888", "#7a3", "#a37"])
    ax[2].set_ylabel(f"ask latency, median (ms), {h['tokens']} tokens")
    ax[2].set_title(f"HTTP / direct = {h['ratio_http_over_fleet']:.2f}x")
    fig.suptitle("vstream bench serve (2 shared CPU cores: noisy)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_parser(bs) -> None:
    p = bs.add_parser("serve", help="RayFleet: chunks/s and TTFT with 1 vs 2 actors; HTTP cost over Fleet.ask")
    p.add_argument("--model", default="tiny-smolvlm")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--chunks", type=int, default=40, help="chunks per stream (scale part)")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor")
    p.add_argument("--questions", type=int, default=20, help="questions asked during ingestion")
    p.add_argument("--repeats", type=int, default=20, help="asks per path (HTTP part)")
    p.add_argument("--tokens", type=int, default=8, help="new tokens per answer (HTTP part)")
    p.add_argument("--out", default="docs/bench")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    res = bench_serve(args.model, args.streams, args.chunks, args.size, args.num_cpus, args.questions, args.repeats,
                      args.tokens)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps(res, indent=1))
    plot_serve(res, out / "serve.png")
    print(json.dumps({"json": str(out / "serve.json"), "png": str(out / "serve.png"),
                      "chunks_per_s": {k: res["scale"][k]["chunks_per_s"] for k in ("1", "2")},
                      "ratio_2_over_1": res["scale"]["ratio_chunks_per_s_2_over_1"],
                      "ttft_ms": {k: [1e3 * (res["scale"][k]["ttft_p50_s"] or 0), 1e3 * (res["scale"][k]["ttft_p95_s"] or 0)]
                                  for k in ("1", "2")},
                      "ratio_http_over_fleet": res["http"]["ratio_http_over_fleet"]}, indent=1))
    return 0
