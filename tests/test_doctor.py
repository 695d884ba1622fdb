"""`vstream doctor`: runs offline on the tiny presets, prints the table, exits non-zero when a check fails."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO, tiny_adapter


def _doctor(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "vstream", "doctor", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("model", ["tiny-qwen3-vl", "tiny-smolvlm"])
def test_doctor_passes_on_tiny_presets(model):
    out = _doctor(model)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {line.split()[0]: line.split()[1] for line in out.stdout.splitlines()[2:] if line.strip()}
    assert set(rows) == {"load", "processor", "prompt", "streaming", "answer", "memory", "latency"}
    assert set(rows.values()) == {"PASS"}
    assert "max |dlogit|" in out.stdout and "KiB/token" in out.stdout
    assert "past_key_values" not in out.stderr and "deprecated" not in out.stderr.lower()


def test_doctor_fails_with_nonzero_exit(tmp_path):
    out = _doctor("tiny-qwen2.5-vl", "--video", str(tmp_path / "missing.mp4"), "--json")
    assert out.returncode == 1
    assert '"check": "answer", "ok": false' in out.stdout


def test_doctor_checks_catch_broken_adapters(monkeypatch):
    """A prompt that drifts from the template, or preprocessing that drifts from HF, fails its row."""
    from vstream.cli import doctor
    from vstream.config import from_name

    a = tiny_adapter("tiny-qwen2.5-vl")
    cfg = from_name("tiny")
    assert doctor.check_prompt(a, cfg).ok and doctor.check_processor(a).ok
    monkeypatch.setattr(a, "question_text", lambda q: f"<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n")
    assert not doctor.check_prompt(a, cfg).ok
    monkeypatch.undo()
    published = {"image_mean": a.image_mean.tolist(), "image_std": a.image_std.tolist(), "patch_size": 14}
    assert doctor.check_processor(a, published).ok
    monkeypatch.setattr(a, "image_std", a.image_std * 1.01)  # an adapter that misread the checkpoint's std
    row = doctor.check_processor(a, published)
    assert not row.ok and "max |dpixel|" in row.detail


def test_bf16_tolerance_is_relative_to_the_logit_scale():
    import torch

    from vstream.cli.doctor import streaming_tolerance

    ref = torch.tensor([10.0, -40.0])
    assert streaming_tolerance(torch.float32, ref) == 1e-4
    assert streaming_tolerance(torch.bfloat16, ref) == pytest.approx(1.2)
    assert streaming_tolerance(torch.float16, torch.tensor([0.1])) == pytest.approx(3e-2)
