"""An offline byte-level tokenizer built in code, for the random-weight presets.

Every byte is one token (no merges), so any text round-trips; the family's special tokens are added
as single tokens. Nothing is downloaded.
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def _byte_alphabet() -> list[str]:
    return sorted(pre_tokenizers.ByteLevel.alphabet())


def build_offline_tokenizer(special_tokens: list[str], *, eos_token: str, pad_token: str | None = None,
                            bos_token: str | None = None) -> PreTrainedTokenizerFast:
    """Build a byte-level tokenizer: ids 0..255 are bytes, then the special tokens in the given order."""
    vocab = {ch: i for i, ch in enumerate(_byte_alphabet())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token, pad_token=pad_token or eos_token,
                                   bos_token=bos_token)
    missing = [t for t in special_tokens if t not in fast.get_vocab()]
    fast.add_special_tokens({"additional_special_tokens": missing})
    return fast
