"""Layering: memory/ imports nothing from vstream/ (it knows tensors, not models); vstream maps onto it."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, tiny_adapter

MEMORY_DIR = REPO / "memory"
MEMORY_MODULES = sorted(f"memory.{p.stem}" for p in MEMORY_DIR.glob("*.py") if p.stem != "__init__")


def test_memory_modules_exist():
    """The list below is not empty by accident (the checks would then pass vacuously)."""
    assert {"memory.store", "memory.journal", "memory.longterm", "memory.types", "memory.index"} <= set(MEMORY_MODULES)


def test_memory_imports_load_no_vstream_module():
    """Importing every memory module in a fresh interpreter loads no vstream module."""
    code = ("import importlib, json, sys\n"
            f"for name in {MEMORY_MODULES!r}:\n"
            "    importlib.import_module(name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'vstream' or m.startswith('vstream.'))))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_memory_sources_name_no_vstream_import():
    """No import statement under memory/ (module level or inside a function) names vstream."""
    bad = []
    for path in sorted(MEMORY_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            bad += [f"{path.name}:{node.lineno} {n}" for n in names if n == "vstream" or n.startswith("vstream.")]
    assert bad == []


def test_long_term_config_from_memory_config():
    """Every long-term setting of MemoryConfig reaches LongTermConfig under the same meaning."""
    from memory.longterm import LongTermConfig
    from vstream.config import MemoryConfig
    from vstream.engine.longterm import long_term_config

    mc = MemoryConfig(ram_bytes=12345, quantize="int8", retriever="both", per_layer=True, exact_index_max=7,
                      ocr=True, window_chunks=3, retrieve_k=9)
    assert long_term_config(mc) == LongTermConfig(ram_bytes=12345, quantize="int8", retriever="both",
                                                  per_layer=True, exact_index_max=7, ocr=True)


def test_store_meta_from_adapter_matches_hf_config():
    """The adapter's StoreMeta describes the model's own text config (layers, kv heads, head_dim)."""
    from vstream.engine.longterm import store_meta

    adapter = tiny_adapter("tiny-qwen2.5-vl")
    tc = adapter.model.config.get_text_config()
    m = store_meta(adapter)
    assert (m.model, m.num_layers, m.num_kv_heads) == ("tiny-qwen2.5-vl", tc.num_hidden_layers,
                                                       tc.num_key_value_heads)
    assert m.head_dim == tc.hidden_size // tc.num_attention_heads
    assert m.pos_dims == 3 and m.dtype == "float32"  # M-RoPE (t, h, w); fp32 on CPU


def test_long_term_create_rejects_an_adapter():
    """LongTerm.create takes a StoreMeta; passing a model adapter is a one-line ValueError."""
    from memory.longterm import LongTerm, LongTermConfig

    with pytest.raises(ValueError, match="StoreMeta") as e:
        LongTerm.create(tiny_adapter("tiny-smolvlm"), LongTermConfig())
    assert "\n" not in str(e.value)
