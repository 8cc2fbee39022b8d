"""Left padding and the pad id: one rule for every job that batches prompts (generation, scoring, lm-eval)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def pad_token_id(tokenizer: Any = None, model_config: Any = None) -> int:
    """The tokenizer's pad id, else the model config's, else 0. Padding is masked wherever it is read, so
    the id only shows where it is returned (generated rows are padded with it after their end)."""
    for source in (tokenizer, model_config):
        pad = getattr(source, "pad_token_id", None)
        if pad is not None:
            return int(pad)
    return 0


def left_pad(rows: Sequence[Sequence[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask), int32 [len(rows), width]: each row's tokens at the right end, `pad_id` (mask 0) before.

    Models take positions from the mask, so left padding changes no logit; a row longer than `width` is an
    error (cut it first: which end to keep is the caller's decision)."""
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        if len(row) > width:
            raise ValueError(f"row {i} has {len(row)} tokens, more than the padded width {width}")
        if len(row):
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
    return ids, mask
