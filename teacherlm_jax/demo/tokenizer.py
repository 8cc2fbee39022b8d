"""A small word-level tokenizer trained on the demo's own texts, so the demo needs no download.

Byte-level BPE (GPT-2's pre-tokenizer, exact round trip, no unknown token) trained on the suite until
every word is one token: the synthetic suite's vocabulary is a few hundred words, so sequences are
about 4x shorter than with one token per byte, which is what lets the demo train on a laptop CPU.
Special tokens take BLOOM's ids (`<unk>` 0, `<s>` 1, `</s>` 2, `<pad>` 3), matching `BloomConfig`'s
defaults. Saved with `save_pretrained`, it loads with `AutoTokenizer` like a checkpoint's tokenizer.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, *, vocab_size: int) -> Path:
    """Trains on `texts`, saves to `out_dir` (tokenizer.json + config) and returns `out_dir`."""
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size={vocab_size}: a byte-level tokenizer needs at least "
                         f"{len(SPECIAL_TOKENS) + 256} (specials + the 256 bytes)")
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>", padding_side="left")
    out = Path(out_dir)
    tokenizer.save_pretrained(str(out))
    return out
