"""Tokenizers: a checkpoint's own (`load_tokenizer`), or a byte-level one that needs no download.

Its own module, beside the models rather than in them or in data/, so models never import data and every
job loads tokenizers the same way. The byte-level tokenizer (tiny CPU runs, tests and the demo) has
256 byte tokens after BLOOM's special-token ids (`<unk>` 0, `<s>` 1, `</s>` 2, `<pad>` 3), as a
`PreTrainedTokenizerFast`, so it saves, loads (`AutoTokenizer`) and gives offset mappings like a
checkpoint's own tokenizer. `load_tokenizer("builtin:bytes")` returns it.

`load_tokenizer` picks the class AutoTokenizer would pick for BLOOM's and OPT's tokenizers itself, from
tokenizer_config.json: AutoTokenizer reads the model config through transformers' config classes, which
import torch (seconds of every job's start). Any other tokenizer goes through AutoTokenizer.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from teacherlm_jax.models.hf import resolve_checkpoint_dir

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
BUILTIN_NAME = "builtin:bytes"
# tokenizer_config.json's tokenizer_class -> the class AutoTokenizer (transformers 5) loads for a BLOOM or OPT
# checkpoint (or a folder with no model config) naming it; BLOOM's names are the tokenizers-backed class.
OWN_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast", "PreTrainedTokenizerFast": "PreTrainedTokenizerFast",
               "BloomTokenizer": "PreTrainedTokenizerFast", "BloomTokenizerFast": "PreTrainedTokenizerFast",
               "GPT2Tokenizer": "GPT2Tokenizer", "GPT2TokenizerFast": "GPT2Tokenizer"}
OWN_MODEL_TYPES = (None, "bloom", "opt")


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
    own_class = _own_class(Path(directory))
    try:
        if own_class is not None:
            tokenizer = own_class.from_pretrained(str(directory), padding_side=padding_side)
        else:
            from transformers import AutoTokenizer

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


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}  # AutoTokenizer reads it again and names what is wrong


def _own_class(directory: Path) -> type | None:
    """The transformers class AutoTokenizer would load `directory`'s tokenizer with, where it is one of
    OWN_CLASSES and no config names code of its own (`auto_map`); None: ask AutoTokenizer."""
    tokenizer_config, model_config = _json(directory / "tokenizer_config.json"), _json(directory / "config.json")
    name = tokenizer_config.get("tokenizer_class")
    if (name not in OWN_CLASSES or "auto_map" in tokenizer_config or "auto_map" in model_config
            or model_config.get("model_type") not in OWN_MODEL_TYPES):
        return None
    import transformers

    return getattr(transformers, OWN_CLASSES[name])
