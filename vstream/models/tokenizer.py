"""An offline byte-level tokenizer built in code, for the random-weight presets.

Every byte is one token (no merges), so any text round-trips; the family's special tokens are added
as single tokens (ids 256, 257, ... as before), then common English words (``offline_words``), each
with its leading space, so that random weights print words. Decoding drops what cannot be shown
(a lone byte of a multi-byte character, control characters). Nothing is downloaded.
"""
from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from vstream.models.offline_words import WORDS

#: what decoding drops: U+FFFD (an incomplete UTF-8 sequence) and control characters but tab and newline
_UNPRINTABLE = Regex("[\x00-\x08\x0b-\x1f\x7f\ufffd]")


def _byte_alphabet() -> list[str]:
    return sorted(pre_tokenizers.ByteLevel.alphabet())


def build_offline_tokenizer(special_tokens: list[str], *, eos_token: str, pad_token: str | None = None,
                            bos_token: str | None = None) -> PreTrainedTokenizerFast:
    """Build a byte-level tokenizer: ids 0..255 are bytes, then the special tokens in the given order, then
    one token per common English word (" the", " person", ...)."""
    vocab = {ch: i for i, ch in enumerate(_byte_alphabet())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace(_UNPRINTABLE, "")])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token, pad_token=pad_token or eos_token,
                                   bos_token=bos_token)
    missing = [t for t in special_tokens if t not in fast.get_vocab()]
    fast.add_special_tokens({"additional_special_tokens": missing})
    # the words come after the specials; as many as make the size a multiple of 64 (the presets round their
    # vocab_size up to one: every id a random model can pick then decodes to something)
    n = max(len(WORDS) - (len(fast) + len(WORDS)) % 64, 0)
    fast.add_tokens([AddedToken(" " + w, normalized=False, single_word=False) for w in WORDS[:n]])
    return fast
