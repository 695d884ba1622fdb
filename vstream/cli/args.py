"""Command-line options -> agent configuration, shared by ``vstream watch|ask`` and ``vstream eval ...``.

Each parser defines the options it offers; an option a parser lacks is simply absent from ``args``.
"""
from __future__ import annotations

import argparse
import json
from typing import Any


def _value(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (8, 0.5, true, null, "x"), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted config overrides (``{"memory.window_chunks": 8, ...}``) from the options present in ``args``.

    ``--set KEY=VALUE`` comes first, so the named options below win over it; ``--ocr`` and ``--asr [MODEL]``
    turn the text retriever on (``memory.retriever="both"``) unless ``--retriever`` names one.
    """
    overrides: dict[str, Any] = {}
    for kv in getattr(args, "set", None) or []:
        key, sep, value = kv.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {kv!r} is not KEY=VALUE; write e.g. --set memory.retrieve_k=8")
        overrides[key.strip()] = _value(value.strip())
    if getattr(args, "window", None):
        overrides["memory.window_chunks"] = args.window
    if getattr(args, "max_new_tokens", None):
        overrides["generation.max_new_tokens"] = args.max_new_tokens
    if getattr(args, "ocr", False):
        overrides["memory.ocr"] = True
        overrides["memory.retriever"] = "both"  # OCR text is only useful to the text retriever
    if getattr(args, "asr", None):
        overrides["memory.asr"] = True
        overrides["asr.model"] = args.asr
        overrides["memory.retriever"] = "both"  # speech is found by the text retriever
    if getattr(args, "retriever", None):
        overrides["memory.retriever"] = args.retriever
    if getattr(args, "top_k", None) is not None:
        overrides["memory.retrieve_k"] = args.top_k
    if getattr(args, "no_long_term", False):
        overrides["memory.long_term"] = False
    if getattr(args, "token_drop", None) is not None:
        overrides["memory.token_drop"] = args.token_drop
    if getattr(args, "commentary_tokens", None):
        overrides["responder.commentary_tokens"] = args.commentary_tokens
    return overrides


def agent_from_args(args: argparse.Namespace) -> Any:
    """``Agent.from_pretrained`` with ``--model/--config/--device/--dtype`` and :func:`config_overrides`."""
    from vstream.api import Agent

    return Agent.from_pretrained(args.model, config=args.config, device=args.device, dtype=args.dtype,
                                 **config_overrides(args))
