"""The forward calls use transformers' current API: one ingest + answer warns about nothing deprecated."""
from __future__ import annotations

import logging
import warnings

import pytest

from conftest import make_chunks, tiny_adapter
from vstream.config import from_name
from vstream.engine.core import Engine


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-qwen3-vl", "tiny-llava-onevision", "tiny-smolvlm"])
def test_ingest_and_answer_raise_no_deprecation_warning(name, caplog):
    adapter = tiny_adapter(name)
    eng = Engine(adapter, from_name("tiny").replace(**{"memory.long_term": False}))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # the warning transformers 5.x prints for `past_key_values=` (removed in 5.40) becomes an error
        warnings.filterwarnings("error", message=r".*past_key_values.*")
        warnings.filterwarnings("error", category=FutureWarning)
        warnings.filterwarnings("error", category=DeprecationWarning, module=r"transformers.*")
        with caplog.at_level(logging.WARNING, logger="transformers"):
            eng.start()
            eng.ingest(make_chunks(1, frames=2, seed=5)[0])
            ans = eng.answer("What happened?", eng.snapshot(), max_new_tokens=3)
    assert ans.tokens >= 0
    assert not [r for r in caplog.records if "deprecat" in r.getMessage().lower()]


def test_the_check_can_fail():
    """The old keyword really warns here, so the test above would catch a call site that still uses it."""
    adapter = tiny_adapter("tiny-qwen2.5-vl")
    tokens = adapter.embed_text("hi")
    with pytest.warns(FutureWarning, match="past_key_values"):
        adapter.language_model()(inputs_embeds=tokens.inputs_embeds,
                                 position_ids=adapter.position_ids(tokens.rel_pos, 0),
                                 past_key_values=adapter.new_cache(), use_cache=True)
