"""A byte-level tokenizer that needs no download: for tiny CPU runs, tests and the demo.

256 byte tokens after BLOOM's special-token ids (`<unk>` 0, `<s>` 1, `</s>` 2, `<pad>` 3), as a
`PreTrainedTokenizerFast`, so it saves, loads (`AutoTokenizer`) and gives offset mappings like a
checkpoint's own tokenizer. `load_tokenizer("builtin:bytes")` returns it.
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
BUILTIN_NAME = "builtin:bytes"
VOCAB_SIZE = len(SPECIAL_TOKENS) + 256


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
