"""accelerate placement on CPU: a tiny preset with part of the model offloaded to disk still streams exactly."""
from __future__ import annotations

import pytest
import torch

from conftest import make_chunks
from vstream.config import from_name
from vstream.engine.core import Engine
from vstream.models.registry import load_model

TOL = 1e-4
QUESTION = "What happened in the video?"


def _model_bytes(name: str) -> int:
    a = load_model(name, device="cpu", dtype="float32", seed=0)
    return sum(p.numel() * p.element_size() for p in a.model.parameters())


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def test_disk_offload_streams_like_one_full_forward(name, tmp_path):
    budget = _model_bytes(name) // 2  # half the weights fit in "CPU memory": the rest must go to disk
    a = load_model(name, device="cpu", dtype="float32", seed=0, max_memory={"cpu": budget},
                   offload_folder=str(tmp_path / "offload"))
    placed = set(a.model.hf_device_map.values())
    assert "disk" in placed and a.placed, a.model.hf_device_map
    assert any((tmp_path / "offload").iterdir())  # accelerate really wrote the offloaded weights there
    assert a.device == torch.device("cpu")
    eng = Engine(a, from_name("tiny").replace(**{"memory.window_chunks": 100, "memory.long_term": False}))
    eng.start()
    chunks = make_chunks(3, frames=2, seed=1)
    for ch in chunks:
        eng.ingest(ch)
    _, _, logits, _, _ = eng.prepare(QUESTION, eng.snapshot())
    assert a.layer_devices() == [torch.device("cpu")] * a.num_layers  # disk layers execute on the CPU
    for layer, dev in zip(eng.memory.cache.layers, a.layer_devices()):  # each cache layer lives where its layer ran
        assert layer.keys.device == dev
    pieces = [a.system_text(eng.config.system_prompt)] + [(c.marker, c.frames) for c in chunks] \
        + [a.question_text(QUESTION)]
    ref = a.reference_logits(pieces)
    assert (logits[0] - ref).abs().max().item() <= TOL
    # the same weights loaded on one device give the same logits: offloading changed nothing
    plain = load_model(name, device="cpu", dtype="float32", seed=0)
    assert (plain.reference_logits(pieces) - ref).abs().max().item() <= TOL


def test_placement_needs_a_folder_when_it_overflows():
    with pytest.raises(ValueError) as e:
        load_model("tiny-qwen2.5-vl", device="cpu", dtype="float32", max_memory={"cpu": 10_000})
    assert "offload" in str(e.value) and "\n" not in str(e.value)


def test_device_auto_uses_accelerate_for_checkpoints_on_gpus(monkeypatch):
    """--device auto on CUDA loads checkpoints with device_map="auto"; several GPUs spread presets too."""
    from vstream.models import registry

    seen = {}

    class Fake:
        @classmethod
        def from_pretrained(cls, name, device, dtype, **kwargs):
            seen["checkpoint"] = (str(device), kwargs)
            return "adapter"

        @classmethod
        def random(cls, size, device, dtype, seed, name):
            seen["preset_device"] = str(device)
            return "preset"

    monkeypatch.setattr(registry, "_family_of_checkpoint", lambda name: "qwen2.5-vl")
    monkeypatch.setattr(registry, "adapter_class", lambda family: Fake)
    monkeypatch.setattr(registry, "place", lambda adapter, max_memory, folder: ("placed", adapter, max_memory))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert registry.load_model("org/some-checkpoint", device="auto") == "adapter"
    assert seen["checkpoint"] == ("cuda", {"device_map": "auto", "max_memory": None, "offload_folder": None})
    assert registry.load_model("org/some-checkpoint", device="cuda:0") == "adapter"
    assert seen["checkpoint"] == ("cuda:0", {})  # an explicit device: one device, no accelerate
    assert registry.load_model("tiny-qwen2.5-vl", device="auto") == "preset"  # one GPU: presets stay whole
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert registry.load_model("tiny-qwen2.5-vl", device="auto") == ("placed", "preset", None)
    assert seen["preset_device"] == "cpu"  # built on the CPU, then dispatched
