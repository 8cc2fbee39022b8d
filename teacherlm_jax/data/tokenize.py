"""Text pairs -> token ids + loss mask, with TeacherLM's keep-the-last-N truncation.

`prompt + target` is tokenized as ONE string with the tokenizer's own special tokens (as TeacherLM's
finetune.py does: `tokenizer(text)`), so ids equal theirs; the loss mask is read off the offset
mapping, so it needs a fast tokenizer (BLOOM and OPT ship one). A token is a target token when it
covers any character of `target` (a token straddling the boundary counts as target).

Mask convention: `loss_mask[t] = 1` when predicting token `t` from the tokens before it is trained;
the trainer scores `logits[:, :-1]` against `input_ids[:, 1:]` weighted by `loss_mask[:, 1:]`
(the Hugging Face `labels` convention, where masked labels are -100).
`loss_on="all"`: every token (TeacherLM's student training); `"target"`: the target's tokens only
(Fine-tune-CoT, instruction tuning).
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

LossOn = Literal["all", "target"]


@dataclasses.dataclass(frozen=True)
class Example:
    """One training sequence: int32 `input_ids`, int32 0/1 `loss_mask`, and how many tokens
    truncation dropped from the front."""

    id: str
    input_ids: np.ndarray
    loss_mask: np.ndarray
    truncated: int = 0


def encode(tokenizer: PreTrainedTokenizerBase, prompt: str, target: str, *, max_length: int,
           loss_on: LossOn = "all", add_eos: bool = False, id: str = "") -> Example:
    """Tokenize `prompt + target`; keep the last `max_length` tokens. `add_eos` appends the
    tokenizer's EOS as a target token (TeacherLM does not; a teacher that must stop needs it)."""
    if loss_on not in ("all", "target"):
        raise ValueError(f"loss_on must be 'all' or 'target', got {loss_on!r}")
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer; the loss mask needs "
                        f"offset mappings (load it with use_fast=True)")
    enc = tokenizer(prompt + target, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    boundary = len(prompt)
    is_target = [end > boundary and end > start for start, end in enc["offset_mapping"]]
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("add_eos=True but the tokenizer has no eos_token_id")
        ids.append(tokenizer.eos_token_id)
        is_target.append(True)
    mask = np.ones(len(ids), np.int32) if loss_on == "all" else np.asarray(is_target, np.int32)
    dropped = max(0, len(ids) - max_length)
    ids_arr, mask = np.asarray(ids[dropped:], np.int32), mask[dropped:]
    if not mask.any():
        raise ValueError(f"example {id!r}: no tokens to train on (empty target?)")
    return Example(id=id, input_ids=ids_arr, loss_mask=mask, truncated=dropped)


def num_truncated(examples: Sequence[Example]) -> int:
    """How many examples lost tokens to truncation (report it in the run summary)."""
    return sum(1 for e in examples if e.truncated)
