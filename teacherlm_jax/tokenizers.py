"""Tokenizers: a checkpoint's own (`load_tokenizer`), or a byte-level one that needs no download.

Its own module, beside the models rather than in them or in data/, so models never import data and every
job loads tokenizers the same way. The byte-level tokenizer (tiny CPU runs, tests and the demo) has
256 byte tokens after BLOOM's special-token ids (`<unk>` 0, `<s>` 1, `</s>` 2, `<pad>` 3), as a
`PreTrainedTokenizerFast`, so it saves, loads (`AutoTokenizer`) and gives offset mappings like a
checkpoint's own tokenizer. `load_tokenizer("builtin:bytes")` returns it.
"""
from __future__ import annotations

import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from teacherlm_jax.models.hf import resolve_checkpoint_dir

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
BUILTIN_NAME = "builtin:bytes"


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Every UTF-8 byte is one token; no merges, so any text round-trips exactly."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>", padding_side="left")


def load_tokenizer(path_or_hub_id: str | os.PathLike, *, padding_side: str = "left"):
    """The checkpoint's own tokenizer (AutoTokenizer, never trust_remote_code), left-padding by default.

    `builtin:bytes` is the project's byte-level tokenizer (tiny CPU configs and the demo).
    """
    if str(path_or_hub_id) == BUILTIN_NAME:
        tokenizer = byte_tokenizer()
        tokenizer.padding_side = padding_side
        return tokenizer
    directory = resolve_checkpoint_dir(path_or_hub_id)
    try:
        # False, not the default None: None asks on a terminal, and a "y" runs the folder's .py files.
        tokenizer = AutoTokenizer.from_pretrained(str(directory), padding_side=padding_side,
                                                  trust_remote_code=False)
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        raise ValueError(
            f"{directory}: the tokenizer names its own code (`auto_map` in tokenizer_config.json or "
            f"config.json) and no built-in transformers class; teacherlm_jax never runs a checkpoint's "
            f"code: use a tokenizer whose `tokenizer_class` is a transformers class") from e
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
