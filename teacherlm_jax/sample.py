"""Batched generation: `generate` continues left-padded prompts over the decode slots of
`teacherlm_jax.decode_slots` (one prefill program, one `lax.while_loop` decode program per shape).

Prompts are padded further on the left to a length bucket, so a dataset-scale job compiles a handful
of programs; extra left padding does not change the result because models take positions from the
attention mask. Randomness is keyed per row and per step (`fold_in(fold_in(fold_in(key(seed_b),
index_b), sample), step)`, the step counted per row), so a row's tokens do not depend on its batch
mates, its bucket or the device mesh. The augment job's continuous-batching engine
(`teacherlm_jax.augment.engine`) runs the same slots, so its rows are `generate`'s.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from teacherlm_jax.decode_slots import CACHE_AXES, DecodeSlots, num_traces, row_keys, slot_count
from teacherlm_jax.sharding import LogicalRules, logical_to_spec

__all__ = ["CACHE_AXES", "GenerateOutput", "Sampler", "bucket_length", "decoding_layout", "generate", "num_traces"]

MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Picks the next token from logits: greedy at temperature 0, else temperature -> top-k -> top-p.

    The order and the top-p rule are those of transformers' logits warpers: top-p keeps the most
    likely tokens until their probability mass reaches `top_p` (always at least one). Top-k keeps
    exactly `top_k` tokens (ties at the k-th logit are broken towards the lower token id, where
    transformers keeps every tied token); `top_k` >= the vocabulary keeps all. Top-k and top-p always
    keep the most likely token, so at temperature 0 they change nothing. Frozen and hashable: it is a
    static argument of the compiled program.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.temperature, numbers.Real) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise ValueError(f"temperature={self.temperature!r}; expected a finite number >= 0 (0 is greedy)")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise ValueError(f"top_k={self.top_k!r}; expected an integer >= 0 (0 turns top-k off)")
        if not (isinstance(self.top_p, numbers.Real) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p={self.top_p!r}; expected a number in (0, 1] (1 turns top-p off)")
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_k", int(self.top_k))
        object.__setattr__(self, "top_p", float(self.top_p))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def candidates(self, logits: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """Warped logits [..., n] of the candidate tokens and their ids (None: the whole vocabulary).

        Removed tokens get -inf. With top-k only k candidates are kept, so top-p sorts k values, not
        the vocabulary (the tokens top-k removed have probability 0 and change no cumulative sum).
        """
        x = logits.astype(jnp.float32) / (self.temperature or 1.0)
        ids = None
        vocab = x.shape[-1]
        if 0 < self.top_k < vocab:
            x, ids = jax.lax.top_k(x, self.top_k)  # sorted, largest first
        if self.top_p < 1.0:
            if ids is None:
                x, ids = jax.lax.top_k(x, vocab)
            probs = jax.nn.softmax(x, axis=-1)
            mass_before = jnp.cumsum(probs, axis=-1) - probs
            x = jnp.where(mass_before < self.top_p, x, -jnp.inf)
        return x, ids

    def __call__(self, logits: jax.Array, keys: jax.Array) -> jax.Array:
        """Next tokens [rows] from logits [rows, vocab], one PRNG key per row (unused when greedy)."""
        if self.greedy:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        x, ids = self.candidates(logits)
        choice = jax.vmap(jax.random.categorical)(keys, x)
        if ids is not None:
            choice = jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0]
        return choice.astype(jnp.int32)


class GenerateOutput(NamedTuple):
    """What `generate` returns, as host numpy arrays; row `r * num_samples + s` is sample s of prompt r.

    tokens: int32 [rows, max_new_tokens], the pad id after a row's end.
    logprobs: float32 [rows, max_new_tokens], log p(token) under the model's own distribution
      (log_softmax of the raw logits: before temperature, top-k and top-p), 0 after a row's end.
    lengths: int32 [rows], tokens generated per row, counting the EOS that ended it.
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    lengths: np.ndarray


def bucket_length(length: int, buckets: Sequence[int] | None = None) -> int:
    """The smallest bucket >= `length`; default buckets are powers of two from 16. Beyond the largest
    given bucket the length itself is used."""
    if buckets is None:
        return max(MIN_BUCKET, 1 << max(0, length - 1).bit_length())
    return min((b for b in buckets if b >= length), default=length)


def generate(
    model: nnx.Module,
    input_ids: Any,
    attention_mask: Any,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_samples: int = 1,
    eos_token_id: int | Sequence[int] | None = None,
    stop_at_eos: bool = True,
    seed: int | Sequence[int] = 0,
    mesh: Mesh | None = None,
    rules: LogicalRules | None = None,
    prompt_buckets: Sequence[int] | None = None,
) -> GenerateOutput:
    """Continues left-padded prompts `input_ids`/`attention_mask` [batch, length] (numpy or jax).

    Each prompt is sampled `num_samples` times (rows `r * num_samples + s`), with independent
    randomness. A row ends at `eos_token_id` (an id or several) when `stop_at_eos`; `eos_token_id=None`
    or `stop_at_eos=False` generates exactly `max_new_tokens`. The loop stops once every row has ended.
    `seed` is one int (prompt b then uses key `fold_in(key(seed), b)`) or one int per prompt (key
    `fold_in(key(seed_b), 0)`, so a prompt's samples do not depend on its position in the batch).
    `prompt_buckets` lists allowed padded prompt lengths (default: powers of two from 16).

    With `mesh` and `rules`, rows are sharded over the mesh axes that logical axis `batch` maps to
    (idle slots round them up to a multiple of that size) and parameters over the rest (e.g. heads,
    mlp and vocab over `tensor`), placed by their logical axis names (a no-op when the model was
    loaded onto the mesh).

    Generation runs the model's decode layout (`decoding_layout`: listed layers). A model loaded with
    `scan_layers=False` shares its weights with it (held once); a scanned model's blocks are copied for
    the call.
    """
    sampler = Sampler(temperature, top_k, top_p)
    config = model.config
    ids, mask = _check_prompts(input_ids, attention_mask, getattr(config, "vocab_size", None))
    batch = ids.shape[0]
    _check_positive("max_new_tokens", max_new_tokens)
    _check_positive("num_samples", num_samples)
    seeds, offsets = _prompt_seeds(seed, batch)
    # Not stopping is stopping at no token (-1): one program serves every EOS setting.
    eos = _eos_ids(eos_token_id) if stop_at_eos and eos_token_id is not None else np.array([-1], np.int32)

    longest = int(mask.sum(axis=1).max())
    max_positions = config.max_position_embeddings
    if longest + max_new_tokens > max_positions:
        raise ValueError(f"the longest prompt ({longest} tokens) plus max_new_tokens={max_new_tokens} exceeds the "
                         f"model's max_position_embeddings={max_positions}; truncate the prompts or ask for fewer "
                         f"new tokens")
    width = max(longest, min(bucket_length(longest, prompt_buckets), max_positions - max_new_tokens))
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    ids, mask = _left_pad_to(ids, mask, width, pad_id)

    rows = batch * num_samples
    slots = slot_count(rows, mesh, rules)
    if mesh is not None:
        model = nnx.merge(*_place(nnx.split(model), mesh, rules))
    engine = DecodeSlots(decoding_layout(model), slots=slots, prompt_width=width, max_new_tokens=int(max_new_tokens),
                         sampler=sampler, eos_ids=eos, pad_id=int(pad_id), mesh=mesh, rules=rules)
    keys = row_keys(np.repeat(seeds, num_samples), np.repeat(offsets, num_samples),
                    np.tile(np.arange(num_samples), batch))
    engine.insert(ids, mask, np.arange(rows).reshape(batch, num_samples), keys)
    engine.run(int(max_new_tokens), until_all=True)
    return GenerateOutput(*engine.rows(range(rows)))


def decoding_layout(model: nnx.Module) -> nnx.Module:
    """The model as generation runs it (`for_decoding`): made here unless `model` already is one."""
    return model if getattr(model, "decode_layout", False) else model.for_decoding()


def _check_prompts(input_ids: Any, attention_mask: Any, vocab_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = np.asarray(input_ids), np.asarray(attention_mask)
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty [batch, length] array; got shape {ids.shape}")
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} differs from input_ids shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must hold integer token ids; got dtype {ids.dtype}")
    if not np.isin(mask, (0, 1)).all():
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
    empty = np.flatnonzero(mask.sum(axis=1) == 0)
    if empty.size:
        raise ValueError(f"prompt rows {empty[:10].tolist()} have no tokens (attention_mask all 0)")
    right_padded = np.flatnonzero((np.diff(mask.astype(np.int8), axis=1) < 0).any(axis=1))
    if right_padded.size:
        raise ValueError(f"prompt rows {right_padded[:10].tolist()} are not left-padded (a 0 follows a 1 in "
                         f"attention_mask); pad on the left, e.g. tokenizer padding_side='left'")
    real = ids[mask == 1]
    if real.min() < 0 or (vocab_size is not None and real.max() >= vocab_size):
        raise ValueError(f"input_ids hold token ids outside [0, {vocab_size}): min {real.min()}, max {real.max()}")
    return ids.astype(np.int32), mask.astype(np.int32)


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}; expected an integer >= 1")


def _prompt_seeds(seed: int | Sequence[int], batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(seed, index) per prompt: one seed and the prompt's index, or the prompt's own seed and 0."""
    seeds = np.asarray(seed)
    if not np.issubdtype(seeds.dtype, np.integer) or seeds.ndim > 1:
        raise ValueError(f"seed must be an int or one int per prompt; got {seed!r}")
    if seeds.ndim == 1 and seeds.shape != (batch,):
        raise ValueError(f"seed holds {seeds.shape[0]} per-prompt seeds for {batch} prompts")
    if seeds.size and (seeds.min() < 0 or seeds.max() >= 2**32):
        raise ValueError(f"seeds must lie in [0, 2**32); got {seed!r}")
    if seeds.ndim == 0:
        return np.full(batch, seeds, np.uint32), np.arange(batch, dtype=np.int32)
    return seeds.astype(np.uint32), np.zeros(batch, np.int32)


def _eos_ids(eos_token_id: int | Sequence[int]) -> np.ndarray:
    ids = np.atleast_1d(np.asarray(eos_token_id))
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0:
        raise ValueError(f"eos_token_id={eos_token_id!r}; expected None, a token id or a sequence of token ids")
    return ids.astype(np.int32)


def _left_pad_to(ids: np.ndarray, mask: np.ndarray, width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompts exactly `width` wide: left padding added, or all-padding columns on the left cut off."""
    extra = width - ids.shape[1]
    if extra <= 0:
        return ids[:, -extra:], mask[:, -extra:]
    return (np.pad(ids, ((0, 0), (extra, 0)), constant_values=pad_id),
            np.pad(mask, ((0, 0), (extra, 0)), constant_values=0))


def _place(split: tuple[nnx.GraphDef, nnx.State], mesh: Mesh, rules: LogicalRules | None):
    """Parameters placed on the mesh by their logical axis names (a no-op when loaded onto it)."""
    graphdef, state = split
    specs = nnx.get_partition_spec(state)
    shardings = jax.tree.map(lambda spec: NamedSharding(mesh, logical_to_spec(tuple(spec), rules or ())), specs,
                             is_leaf=lambda x: isinstance(x, PartitionSpec))
    return graphdef, jax.device_put(state, shardings)
