"""Model registry: presets (random weights, no download) and real checkpoints (hub id or local dir)."""
from __future__ import annotations

import importlib
import logging
import os
import re
from dataclasses import dataclass

import torch

from vstream.models.base import ModelAdapter

logger = logging.getLogger(__name__)

#: family name -> "module:Class" of its adapter (imported lazily).
FAMILIES: dict[str, str] = {
    "qwen2.5-vl": "vstream.models.qwen2_5_vl:Qwen25VLAdapter",
    "qwen3-vl": "vstream.models.qwen3_vl:Qwen3VLAdapter",
    "llava-onevision": "vstream.models.llava_onevision:LlavaOneVisionAdapter",
    "smolvlm": "vstream.models.smolvlm:SmolVLMAdapter",
}

#: Hugging Face config.model_type -> family.
MODEL_TYPES: dict[str, str] = {
    "qwen2_5_vl": "qwen2.5-vl",
    "qwen3_vl": "qwen3-vl",
    "llava_onevision": "llava-onevision",
    "smolvlm": "smolvlm",
    "idefics3": "smolvlm",
}


@dataclass(frozen=True)
class Preset:
    """A model that needs no download: random weights in a real architecture."""

    name: str
    family: str
    size: str  # passed to the adapter's ``random(size=...)``
    description: str


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("tiny-qwen2.5-vl", "qwen2.5-vl", "tiny", "tiny random Qwen2.5-VL (M-RoPE), for tests"),
    Preset("tiny-qwen3-vl", "qwen3-vl", "tiny", "tiny random Qwen3-VL (interleaved M-RoPE, DeepStack), for tests"),
    Preset("tiny-llava-onevision", "llava-onevision", "tiny", "tiny random LLaVA-OneVision (Qwen2 LM), for tests"),
    Preset("tiny-smolvlm", "smolvlm", "tiny", "tiny random SmolVLM (Llama LM), for tests"),
    Preset("small-llava-onevision", "llava-onevision", "small",
           "small random LLaVA-OneVision (8 layers, hidden 512), for CPU benchmarks"),
    Preset("qwen2.5-vl-3b-random", "qwen2.5-vl", "3b", "Qwen2.5-VL-3B published config, random weights (timing)"),
    Preset("qwen2.5-vl-7b-random", "qwen2.5-vl", "7b", "Qwen2.5-VL-7B published config, random weights (timing)"),
    Preset("qwen3-vl-2b-random", "qwen3-vl", "2b", "Qwen3-VL-2B published config, random weights (timing)"),
    Preset("qwen3-vl-4b-random", "qwen3-vl", "4b", "Qwen3-VL-4B published config, random weights (timing)"),
    Preset("qwen3-vl-8b-random", "qwen3-vl", "8b", "Qwen3-VL-8B published config, random weights (timing)"),
    Preset("llava-onevision-0.5b-random", "llava-onevision", "0.5b",
           "LLaVA-OneVision-0.5B published config, random weights (timing)"),
    Preset("llava-onevision-7b-random", "llava-onevision", "7b",
           "LLaVA-OneVision-7B published config, random weights (timing)"),
    Preset("smolvlm2-256m-random", "smolvlm", "256m", "SmolVLM2-256M published config, random weights (timing)"),
    Preset("smolvlm2-2.2b-random", "smolvlm", "2.2b", "SmolVLM2-2.2B published config, random weights (timing)"),
]}

#: Real checkpoints chosen when no model is named.
DEFAULT_CPU_MODEL = "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"
DEFAULT_GPU_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
OFFLINE_HINT = ("offline presets: tiny-qwen2.5-vl, tiny-qwen3-vl, tiny-llava-onevision, tiny-smolvlm "
                "(see `vstream models`)")


def adapter_class(family: str) -> type[ModelAdapter]:
    try:
        spec = FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; supported: {', '.join(FAMILIES)}") from None
    module, cls = spec.split(":")
    return getattr(importlib.import_module(module), cls)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but no CUDA GPU is available; use --device cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    try:
        return table[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


def default_model_name(device: torch.device) -> str:
    """The real checkpoint used when no model is named: small video model on CPU, Qwen2.5-VL on GPU."""
    return DEFAULT_GPU_MODEL if device.type == "cuda" else DEFAULT_CPU_MODEL


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_model_name(name_or_path: str | None) -> None:
    """Raise ValueError at once (nothing loaded, no network) unless the name is None, a preset, a local
    directory or a plausible hub id (``org/name``)."""
    if name_or_path is None or name_or_path in PRESETS or os.path.isdir(str(name_or_path)):
        return
    name = str(name_or_path)
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1]:
        raise ValueError(f"model directory {name!r} does not exist; give a hub id, a local checkpoint "
                         f"directory, or an {OFFLINE_HINT}")
    if not _HUB_ID.match(name):
        raise ValueError(f"unknown model {name!r}: not a preset, a local directory or a hub id (org/name); "
                         f"{OFFLINE_HINT}")


def load_model(name_or_path: str | None, device: str = "auto", dtype: str = "auto", seed: int = 0,
               max_memory: dict | None = None, offload_folder: str | None = None) -> ModelAdapter:
    """Load a preset (random weights) or a real checkpoint (hub id or local directory).

    Placement: ``device="auto"`` with CUDA loads checkpoints with accelerate's ``device_map="auto"``
    (one GPU when the model fits, else spread over the GPUs and CPU; presets are spread when there are
    several GPUs). ``max_memory`` (accelerate's {device: bytes or "10GiB"}, "cpu" included) forces a
    placement within those budgets on any device; what fits nowhere goes to ``offload_folder`` on disk.
    Raises ValueError with a one-line message naming the problem and the fix.
    """
    check_model_name(name_or_path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if name_or_path is None:
        name_or_path = default_model_name(dev)
        logger.info("no model named; using %s for %s", name_or_path, dev.type)
    spread = max_memory is not None or (device == "auto" and torch.cuda.device_count() > 1)
    if name_or_path in PRESETS:
        p = PRESETS[name_or_path]
        cls = adapter_class(p.family)
        if not spread:
            return cls.random(size=p.size, device=dev, dtype=dt, seed=seed, name=p.name)
        adapter = cls.random(size=p.size, device="cpu", dtype=dt, seed=seed, name=p.name)
        return place(adapter, max_memory, offload_folder)
    family = _family_of_checkpoint(name_or_path)
    auto = spread or (device == "auto" and dev.type == "cuda")
    kwargs = dict(device_map="auto", max_memory=max_memory, offload_folder=offload_folder) if auto else {}
    return adapter_class(family).from_pretrained(name_or_path, device=dev, dtype=dt, **kwargs)


def place(adapter: ModelAdapter, max_memory: dict | None = None, offload_folder: str | None = None) -> ModelAdapter:
    """Spread an adapter's model with accelerate: whole decoder/vision blocks per device within ``max_memory``
    (None: accelerate's view of the free memory), the rest offloaded to ``offload_folder`` on disk.

    The KV caches follow: a DynamicCache layer lives where its decoder layer runs.
    """
    from accelerate import dispatch_model, infer_auto_device_map

    model = adapter.model
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split,
                                       dtype=adapter.dtype)
    if "disk" in device_map.values() and offload_folder is None:
        raise ValueError(f"{adapter.name} does not fit in max_memory={max_memory}; give an offload folder for the "
                         f"rest or raise max_memory")
    adapter.model = dispatch_model(model, device_map=device_map, offload_dir=offload_folder)
    logger.info("placed %s: %s", adapter.name, dict(device_map))
    return adapter


def _family_of_checkpoint(name_or_path: str) -> str:
    from transformers import AutoConfig

    local = os.path.isdir(name_or_path)
    if not local and (name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").split("/", 1)[-1]):
        raise ValueError(f"model directory {name_or_path!r} does not exist; give a hub id, a local checkpoint "
                         f"directory, or an {OFFLINE_HINT}")
    try:
        cfg = AutoConfig.from_pretrained(name_or_path)
    except Exception as e:  # network errors, 404, bad json: all end the same way for the user
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load model {name_or_path!r} (not a preset, and its config could not be read or "
                         f"downloaded: {reason}); {OFFLINE_HINT}") from None
    mt = getattr(cfg, "model_type", None)
    if mt not in MODEL_TYPES:
        raise ValueError(f"model {name_or_path!r} has model_type {mt!r}, which vstream does not support; "
                         f"supported: {', '.join(sorted(MODEL_TYPES))}")
    return MODEL_TYPES[mt]


def describe_models() -> list[dict]:
    """Rows for `vstream models`: presets and supported families."""
    rows = [{"name": p.name, "family": p.family, "kind": "preset (random weights, offline)",
             "description": p.description} for p in PRESETS.values()]
    for mt, fam in MODEL_TYPES.items():
        rows.append({"name": f"<hub id or dir with model_type={mt}>", "family": fam, "kind": "checkpoint",
                     "description": "real weights via from_pretrained"})
    return rows
