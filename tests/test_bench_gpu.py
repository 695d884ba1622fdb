"""`vstream bench gpu`: the smoke run (tiny presets on CPU, the same code paths as the GPU suite) writes real
figures; steps fail, run out of budget and get skipped without stopping the others; bad input is one line;
real-size random presets are created on the target device, never on CPU first."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import psutil
import pytest

from conftest import REPO
from vstream.bench.gpu import BF16_BOUND, Step, SuiteConfig, run_suite, suite_config
from vstream.cli.main import main

STEPS = ["realtime", "ingest", "memory", "fleet", "bf16", "pipeline", "decode"]
HAS_PIPELINE = importlib.util.find_spec("vstream.bench.pipeline") is not None


def _pos(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_smoke")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    # the budgets are sized for a quiet 2-core machine; the suite's test runs share theirs, hence the scale
    p = subprocess.run([sys.executable, "-m", "vstream", "bench", "gpu", "--smoke", "--budget-scale", "4",
                        "--out", str(out)], capture_output=True, text=True, timeout=1100, cwd=REPO, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out, json.loads(p.stdout), json.loads((out / "summary.json").read_text())


@pytest.mark.timeout(1200)
def test_smoke_every_step_ok_and_files_real(smoke):
    out, printed, summary = smoke
    assert summary["smoke"] is True and list(summary["steps"]) == STEPS
    dev = summary["device"]
    for key in ("device", "driver", "torch", "cuda", "transformers", "commit"):
        assert key in dev
    assert dev["device"] and dev["torch"] and dev["commit"]
    for name, e in summary["steps"].items():
        if name == "pipeline" and not HAS_PIPELINE:
            assert e["status"] == "skipped" and "pipeline" in e["reason"]
            continue
        assert e["status"] == "ok", (name, e)
        assert printed["steps"][name]["status"] == "ok"
        res = json.loads((out / e["json"]).read_text())
        assert res["status"] == "ok" and res["env"]["commit"]
        png = (out / e["png"]).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
        assert e["headline"] == res["headline"] and e["goal_met"] is None  # tiny presets: no anchor verdict
    h = {k: v["headline"] for k, v in summary["steps"].items() if v["status"] == "ok"}
    rt = h["realtime"]
    assert all(_pos(rt[k]) for k in ("sustained_fps", "per_token_latency_early_s", "per_token_latency_late_s",
                                     "per_token_late_over_early", "chunk_s_p50", "ttft_idle_p50_s"))
    assert rt["within_cap"] and 1 <= rt["visual_tokens_per_chunk"] <= 768
    realtime = json.loads((out / "gpu_realtime.json").read_text())
    rows = realtime["rows"]
    assert len(rows) == 24 and all(r["tokens_out"] == 20 for r in rows)  # 20 commentary tokens every chunk
    assert realtime["settings"]["window"] == 16 and realtime["settings"]["fps"] == 2.0
    ing = h["ingest"]
    assert all(_pos(ing[k]) for k in ("ingest_fps", "chunk_s_p50", "split_vision_s_p50", "split_prefill_s_p50"))
    assert ing["split_bookkeeping_s_p50"] >= 0
    for r in json.loads((out / "gpu_ingest.json").read_text())["rows"]:
        assert r["vision_s"] + r["prefill_s"] <= r["total_s"] * 1.001 + 1e-4  # parts of the chunk's time
    mem = h["memory"]
    assert mem["entries"] == 300 and _pos(mem["ttft_none_ms"]) and _pos(mem["ttft_1h_ms"])
    store = json.loads((out / "gpu_memory.json").read_text())["store"]
    assert store["entries"] == 300 and store["disk_bytes"] > store["ram_bytes"] > 0  # most entries on disk only
    fl = h["fleet"]
    assert all(_pos(fl[f"speedup_{n}"]) and _pos(fl[f"batched_chunks_per_s_{n}"]) for n in (1, 4, 16))
    bf = h["bf16"]
    assert bf["bound"] == BF16_BOUND and bf["within_bound"] and bf["top1_agrees"]
    assert 0 <= bf["relative_error"] < BF16_BOUND and _pos(bf["max_abs_logit"])
    built = json.loads((out / "gpu_bf16.json").read_text())["build"]
    assert built["dtype"] == "torch.bfloat16" and built["weights_on"] == ["cpu"]
    if HAS_PIPELINE:
        pl = h["pipeline"]
        assert _pos(pl["ingest_s"]) and _pos(pl["decode_s"]) and _pos(pl["ratio"]) and _pos(pl["ratio_noref"])
        assert pl["decoded_on"] == "cpu"  # the smoke suite's model is on the CPU: so is decoding
    dc = h["decode"]
    assert all(_pos(dc[k]) for k in ("dynamic_ms_per_token", "static_ms_per_token", "graphs_ms_per_token"))
    assert not dc["graph_captured"]  # no CUDA: graphs fall back to the static steps
    assert dc["static_words_agree"] == dc["graphs_words_agree"] == dc["tokens"] == 8  # fp32: the same greedy words


def test_failed_and_over_budget_steps_do_not_stop_the_others(tmp_path):
    real = {s.name: s.settings for s in suite_config(True, "cpu").steps}
    bad = Step("bf16", 300, {**real["bf16"], "model": "no-such-preset"})
    slow = Step("ingest", 0.5, real["ingest"])  # stopped while importing
    after = Step("memory", 300, {**real["memory"], "model": "also-not-a-preset"})
    summary = run_suite(SuiteConfig([bad, slow, after], total_budget_s=900, device="cpu", smoke=True), tmp_path)
    st = summary["steps"]
    assert st["bf16"]["status"] == "failed" and "no-such-preset" in st["bf16"]["error"]
    assert "\n" not in st["bf16"]["error"]
    assert st["ingest"]["status"] == "skipped" and "budget" in st["ingest"]["reason"]
    assert st["memory"]["status"] == "failed" and "also-not-a-preset" in st["memory"]["error"]  # still ran
    assert summary["counts"] == {"ok": 0, "skipped": 1, "failed": 2}
    assert json.loads((tmp_path / "summary.json").read_text())["counts"] == summary["counts"]


def test_spent_suite_budget_skips_without_starting(tmp_path):
    cfg = SuiteConfig([Step("realtime", 60, {}), Step("fleet", 60, {})], total_budget_s=5, device="cpu",
                      smoke=True, min_start_s=10)
    summary = run_suite(cfg, tmp_path)
    for e in summary["steps"].values():
        assert e["status"] == "skipped" and "budget is spent" in e["reason"]
    assert not (tmp_path / "logs").exists()  # no step process was started


def test_bad_input_is_one_line(capsys, tmp_path):
    code = main(["bench", "gpu", "--smoke", "--only", "realtime,warp", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code != 0 and "--only" in err and "warp" in err and len(err.strip().splitlines()) == 1
    code = main(["bench", "gpu", "--smoke", "--budget-scale", "0", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code != 0 and "--budget-scale" in err
    if not __import__("torch").cuda.is_available():
        code = main(["bench", "gpu", "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert code != 0 and "--smoke" in err and "CUDA" in err
    assert not (tmp_path / "summary.json").exists()  # nothing ran


@pytest.mark.parametrize("preset,billions", [("qwen2.5-vl-7b-random", 8.29), ("llava-onevision-7b-random", 8.03)])
def test_real_size_presets_are_created_on_the_target_device(preset, billions):
    """On the meta device nothing is allocated: a 7B preset built there in seconds with every parameter on
    meta shows the weights are created where they go (a CUDA build takes the same path), never on CPU first."""
    from vstream.models.registry import load_model

    rss0 = psutil.Process().memory_info().rss
    adapter = load_model(preset, device="meta", dtype="bfloat16")
    params = list(adapter.model.parameters())
    assert {p.device.type for p in params} == {"meta"}
    assert abs(sum(p.numel() for p in params) / 1e9 - billions) < 0.05
    assert psutil.Process().memory_info().rss - rss0 < 1 << 30  # a CPU copy would be 16 GB
