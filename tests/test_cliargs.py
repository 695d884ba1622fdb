"""One mapping from command-line options to config overrides, for `vstream watch|ask` and `vstream eval`.

Arguments are parsed by the real `vstream` parser; the expected overrides are written out by hand.
"""
from __future__ import annotations

import pytest

from vstream.cli.main import build_parser
from vstream.cli.args import agent_from_args, config_overrides


def _parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_watch_options():
    args = _parse("watch", "clip.mp4", "--window", "5", "--max-new-tokens", "12", "--top-k", "0", "--ocr")
    assert config_overrides(args) == {"memory.window_chunks": 5, "generation.max_new_tokens": 12,
                                      "memory.ocr": True, "memory.retriever": "both", "memory.retrieve_k": 0}
    args = _parse("watch", "clip.mp4", "--ocr", "--retriever", "text")  # a named retriever wins over --ocr's
    assert config_overrides(args) == {"memory.ocr": True, "memory.retriever": "text"}
    assert config_overrides(_parse("watch", "clip.mp4")) == {}
    args = _parse("watch", "clip.mp4", "--set", "generation.decode=graphs", "--set", "sampler.decode=cpu",
                  "--window", "4")  # any config field, as in eval; the named --window still wins
    assert config_overrides(args) == {"generation.decode": "graphs", "sampler.decode": "cpu",
                                      "memory.window_chunks": 4}


def test_ask_options():
    args = _parse("ask", "mem", "What?", "--retriever", "internal", "--window", "3")
    assert config_overrides(args) == {"memory.window_chunks": 3, "memory.retriever": "internal"}
    args = _parse("ask", "mem", "What?", "--set", "generation.decode=static")
    assert config_overrides(args) == {"generation.decode": "static"}


def test_eval_options():
    args = _parse("eval", "ovobench", "b.json", "--out", "o", "--set", "memory.retrieve_k=8",
                  "--set", "memory.window_chunks=2", "--set", "memory.retriever=text", "--set", "x.flag=true",
                  "--window", "6", "--no-long-term")
    # --set values are JSON when they parse, else text; the named --window wins over --set
    assert config_overrides(args) == {"memory.retrieve_k": 8, "memory.window_chunks": 6, "memory.retriever": "text",
                                      "x.flag": True, "memory.long_term": False}


@pytest.mark.parametrize("bad", ["memory.retrieve_k", "=8"])
def test_bad_set_is_a_one_line_value_error(bad):
    args = _parse("eval", "ovobench", "b.json", "--out", "o", "--set", bad)
    with pytest.raises(ValueError, match="is not KEY=VALUE"):
        config_overrides(args)


def test_agent_gets_the_overrides():
    args = _parse("eval", "rvs", "b.json", "--out", "o", "--model", "tiny-smolvlm", "--device", "cpu",
                  "--set", "memory.retrieve_k=7", "--window", "3", "--no-long-term")
    args.commentary_tokens = 5  # no parser offers --commentary-tokens today; a caller may set the attribute
    cfg = agent_from_args(args).config
    assert (cfg.memory.retrieve_k, cfg.memory.window_chunks, cfg.memory.long_term) == (7, 3, False)
    assert cfg.responder.commentary_tokens == 5 and cfg.model == "tiny-smolvlm"


def test_bad_decode_settings_stop_before_the_model_loads(monkeypatch):
    import vstream.models.registry as registry

    monkeypatch.setattr(registry, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    for kv, msg in (("generation.decode=turbo", "generation.decode must be dynamic, static or graphs"),
                    ("sampler.decode=gpu", "sampler.decode must be auto, cpu or cuda")):
        args = _parse("watch", "clip.mp4", "--model", "tiny-smolvlm", "--device", "cpu", "--set", kv)
        with pytest.raises(ValueError, match=msg):
            agent_from_args(args)
