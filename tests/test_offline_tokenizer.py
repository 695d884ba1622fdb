"""The random-weight presets print readable words (issue 10, item 12), with the special tokens' ids unchanged."""
from __future__ import annotations

import re

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from conftest import REPO, TINY_PRESETS, tiny_adapter

SAMPLE = str(REPO / "data" / "sample.mp4")


def byte_only_reference(special_tokens, *, eos_token, pad_token=None, bos_token=None):
    """The tokenizer as it was: 256 byte tokens, then the special tokens (the ids the models were built with)."""
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token, pad_token=pad_token or eos_token,
                                   bos_token=bos_token)
    fast.add_special_tokens({"additional_special_tokens": [t for t in special_tokens if t not in fast.get_vocab()]})
    return fast


def test_special_token_ids_are_unchanged_and_text_round_trips():
    from vstream.models.smolvlm import END_OF_UTTERANCE, SPECIAL_TOKENS
    from vstream.models.tokenizer import build_offline_tokenizer

    kw = dict(eos_token=END_OF_UTTERANCE, pad_token="<|im_end|>")
    new, old = build_offline_tokenizer(SPECIAL_TOKENS, **kw), byte_only_reference(SPECIAL_TOKENS, **kw)
    for t in SPECIAL_TOKENS + [END_OF_UTTERANCE, "<|im_end|>"]:
        assert new.convert_tokens_to_ids(t) == old.convert_tokens_to_ids(t)
    assert len(new) > len(old) + 300  # the words come after the special tokens
    for text in ["Time=1.0-2.0s ok", "What is on the board? The person théory, 3 €.", "  two  spaces\nnew line"]:
        assert new.decode(new(text)["input_ids"]) == text


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_random_weights_print_words(name):
    from vstream.api import Agent
    from vstream.config import from_name
    from vstream.models.offline_words import WORDS

    adapter = tiny_adapter(name)
    agent = Agent(adapter, from_name("tiny").replace(model=adapter.name, device="cpu", dtype="float32"))
    texts = []
    with agent.watch(SAMPLE, background=False) as s:
        s.advance_to(4)
        for q in ("What is on the screen?", "What changed?", "Who is there?"):
            texts.append(s.ask(q, max_new_tokens=24, history=False).text)
    joined = " ".join(texts)
    assert "\ufffd" not in joined and not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", joined), joined
    words = re.findall(r"[a-z]+", joined.lower())
    english = set(WORDS)
    assert sum(w in english for w in words) >= 10, joined  # mostly words of the vocabulary
