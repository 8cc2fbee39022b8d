"""The trainer's data contract and the one place that turns `config.data` into batches.

Any iterator of batch dicts with a JSON-able `get_state()`/`set_state()` can feed the trainer
(`BatchIterator`); the state is saved in every checkpoint so a resumed run sees the same batches.
Each process yields only its rows of every global batch; `global_batch` assembles the global array.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from teacherlm_jax.data.quality import check_filter
from teacherlm_jax.errors import ConfigError
from teacherlm_jax.sharding import LogicalRules, batch_sharding
from teacherlm_jax.train.step import BATCH_KEYS


@runtime_checkable
class BatchIterator(Protocol):
    """Yields this process's rows of each global batch: int32 `input_ids`, `attention_mask`,
    `loss_mask` of shape [batch_size // process_count, seq_len]; `seq_len` says how long (the records
    source may derive it from the data)."""

    seq_len: int

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...

    def __next__(self) -> dict[str, np.ndarray]: ...

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...


class SyntheticLM:
    """Arithmetic progressions of token ids: row = 1 + (a + i*d) mod vocab, random a and d.

    The next token is predictable from the two before it, so a small model's loss visibly falls.
    Rows have random lengths in [seq_len/2, seq_len], right-padded with 0. `loss_on="target"` trains
    only the second half of each row (a completion-only mask). Row r of batch k depends only on
    (seed, k, r): each process builds just its rows, and the state is the batch counter.
    """

    def __init__(self, *, batch_size: int, seq_len: int, vocab: int, seed: int, loss_on: str = "all",
                 process_index: int = 0, process_count: int = 1):
        if loss_on not in ("all", "target"):
            raise ConfigError(f"config.data.loss_on={loss_on!r}; expected 'all' or 'target'")
        if seq_len < 4:
            raise ConfigError(f"config.data.seq_len={seq_len}: synthetic_lm needs at least 4 tokens")
        self.rows = batch_size // process_count
        self.first_row = process_index * self.rows
        self.seq_len, self.vocab, self.seed, self.loss_on = seq_len, vocab, seed, loss_on
        self.batch_index = 0

    def __iter__(self) -> SyntheticLM:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = {k: np.zeros((self.rows, self.seq_len), np.int32) for k in BATCH_KEYS}
        for i in range(self.rows):
            rng = np.random.default_rng([self.seed, self.batch_index, self.first_row + i])
            length = int(rng.integers(self.seq_len // 2, self.seq_len + 1))
            start, stride = rng.integers(0, self.vocab), rng.integers(1, 4)
            batch["input_ids"][i, :length] = 1 + (start + stride * np.arange(length)) % self.vocab
            batch["attention_mask"][i, :length] = 1
            batch["loss_mask"][i, length // 2 if self.loss_on == "target" else 0:length] = 1
        self.batch_index += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"batch_index": self.batch_index}

    def set_state(self, state: dict[str, Any]) -> None:
        self.batch_index = int(state["batch_index"])


def make_train_data(config: ml_collections.ConfigDict, tokenizer, process_index: int, process_count: int, *,
                    split: str = "train", report: dict | None = None,
                    max_positions: int | None = None) -> BatchIterator:
    """This process's batch iterator for `config.data` (`split="eval"`: the held-out stream); `report` (if
    given) receives what the records source read (datasets, examples, filter counts, seq_len). An unset
    config.data.seq_len is derived from the records, capped at the model's `max_positions`."""
    data = config.data
    try:
        check_filter(data.get("filter", "none"))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if config.batch_size % process_count:
        raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by the {process_count} processes")
    if data.source == "synthetic_lm":
        if not data.seq_len:
            raise ConfigError("config.data.seq_len: synthetic_lm needs a length (only the records source derives "
                              "it from the data)")
        if not data.get("vocab"):
            raise ConfigError("config.data.vocab: synthetic_lm needs the number of symbols (ids 1..vocab)")
        seed = config.seed + (0 if split == "train" else 1_000_003)
        return SyntheticLM(batch_size=config.batch_size, seq_len=data.seq_len, vocab=data.vocab, seed=seed,
                           loss_on=data.loss_on, process_index=process_index, process_count=process_count)
    if data.source == "records":
        from teacherlm_jax.data.training import make_records_iterator

        return make_records_iterator(config, tokenizer, process_index, process_count, split=split, report=report,
                                     max_positions=max_positions)
    raise ConfigError(f"config.data.source={data.source!r}; known sources: synthetic_lm, records")


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, rules: LogicalRules, batch_size: int,
                 seq_len: int) -> dict[str, jax.Array]:
    """The global [batch_size, seq_len] arrays, from every process's own rows."""
    rows = batch_size // jax.process_count()
    out = {}
    for key in BATCH_KEYS:
        if key not in local:
            raise ValueError(f"data batch has no {key!r} (keys: {sorted(local)})")
        x = np.asarray(local[key], np.int32)
        if x.shape != (rows, seq_len):
            raise ValueError(f"data batch {key!r} has shape {x.shape}; expected this process's "
                             f"({rows}, {seq_len}) = (batch_size / processes, seq_len)")
        out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, rules), x, (batch_size, seq_len))
    return out
