"""Examples -> fixed-shape batches, shuffled per epoch, sharded per process, resumable.

    it = make_batch_iterator(examples, batch_size=64, seq_len=2048, pad_id=tok.pad_token_id, seed=0)
    batch = next(it)          # {"input_ids", "attention_mask", "loss_mask"}: int32 [rows, seq_len]
    state = it.get_state()    # small JSON-able dict; save it with the checkpoint
    it.set_state(state)       # a fresh iterator resumes exactly where `state` was taken

- `batch_size` is GLOBAL; process `p` of `n` yields rows `[p*b, (p+1)*b)` of each global batch
  (`b = batch_size // n`) and reads only those examples. The global batches are the same for any
  process count.
- Order: the stream of examples is epoch 0, 1, ... each permuted by grain's index shuffle with seed
  `seed + epoch` (deterministic in seed and epoch); `shuffle=False` keeps the given order.
  Batches are cut from that stream (they may span an epoch boundary); with `num_epochs` set the
  iterator yields `num_epochs * len(examples) // batch_size` batches (the rest make no batch).
- Each row is one example, RIGHT-padded with `pad_id` to `seq_len` (training needs no left
  padding: with causal attention padding after a sequence cannot change its logits). Rows are
  not packed because the model has no segment ids. An example longer than `seq_len` is an error:
  truncate it in `encode(max_length=seq_len)`, which counts truncation.
"""
from __future__ import annotations

import sys
from typing import Sequence

import grain
import numpy as np

from teacherlm_jax.data.tokenize import Example


def collate(examples: Sequence[Example], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    rows = len(examples)
    batch = {"input_ids": np.full((rows, seq_len), pad_id, np.int32),
             "attention_mask": np.zeros((rows, seq_len), np.int32),
             "loss_mask": np.zeros((rows, seq_len), np.int32)}
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        batch["input_ids"][i, :n] = e.input_ids
        batch["attention_mask"][i, :n] = 1
        batch["loss_mask"][i, :n] = e.loss_mask
    return batch


def make_batch_iterator(examples: Sequence[Example], *, batch_size: int, seq_len: int, pad_id: int,
                        seed: int, shuffle: bool = True, num_epochs: int | None = None,
                        process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
    """A checkpointable iterator of this process's share of each global batch (see module doc)."""
    if not examples:
        raise ValueError("no examples to batch")
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by process_count {process_count}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    too_long = [(i, len(e.input_ids)) for i, e in enumerate(examples) if len(e.input_ids) > seq_len]
    if too_long:
        i, n = too_long[0]
        raise ValueError(f"{len(too_long)} examples are longer than seq_len={seq_len} "
                         f"(first: #{i} {examples[i].id!r}, {n} tokens); "
                         f"encode with max_length<={seq_len}")
    stream = grain.MapDataset.source(examples)
    if shuffle:
        stream = stream.shuffle(seed=seed)
    stream = stream.repeat(num_epochs)
    rows = batch_size // process_count
    first = process_index * rows
    num_batches = sys.maxsize if num_epochs is None else len(stream) // batch_size
    if num_batches == 0:
        raise ValueError(f"{len(stream)} examples x epochs make no batch of {batch_size}")

    def batch(k: int) -> dict[str, np.ndarray]:
        start = k * batch_size + first
        return collate([stream[start + j] for j in range(rows)], seq_len, pad_id)

    batches = grain.MapDataset.range(num_batches).map(batch)
    return iter(batches.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))
