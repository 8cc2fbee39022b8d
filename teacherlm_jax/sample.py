"""Batched generation: one jitted program per shape, prefill then a `lax.while_loop` over the KV cache.

`generate` is what the augment job, benchmarks and notebooks call. Prompts are left-padded and
padded further on the left to a length bucket, so a dataset-scale job compiles a handful of programs
(one per bucket, batch size and sampling setting); extra left padding does not change the result
because models take positions from the attention mask. Randomness is keyed per row and per step
(`fold_in(fold_in(fold_in(key(seed_b), index_b), sample), step)`), so a row's tokens do not depend on
its batch mates, its bucket or the device mesh.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from teacherlm_jax.sharding import LogicalRules, activation_sharding, logical_to_spec

# Logical axes of each layer's key (and value) cache buffer.
CACHE_AXES = ("batch", "heads", "length", "kv")
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


_traces = 0


def num_traces() -> int:
    """How many generation programs have been traced in this process (each trace is a compile)."""
    return _traces


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

    With `mesh` and `rules`, rows are sharded over the mesh axes that logical axis `batch` maps to;
    prompts are padded to a multiple of that size with copies of the last prompt, whose rows are
    dropped from the output. Parameters are placed by their logical axis names (a no-op when the
    model was loaded onto the mesh).

    The decode loop runs `model.for_decoding()`, made once per call: the blocks' weights are held
    twice while generating.
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

    shards = _data_parallel_size(mesh, rules)
    extra = -batch % shards
    if extra:
        ids, mask, seeds, offsets = (np.concatenate([a, np.repeat(a[-1:], extra, axis=0)])
                                     for a in (ids, mask, seeds, offsets))

    graphdef, state = nnx.split(model)
    inputs = (ids, mask, seeds, offsets)
    rules = None if rules is None else tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                                             for name, axes in rules)
    if mesh is not None:
        state = _place_state(state, mesh, rules)
        spec = logical_to_spec(("batch",), rules or ())
        inputs = tuple(_put_rows(a, NamedSharding(mesh, PartitionSpec(spec[0], *(None,) * (a.ndim - 1))))
                       for a in inputs)
    # The decode loop's layout, made here so that its new arrays reach the loop as arguments (see
    # `decoding_blocks`) and the arrays it shares with the model are not copied.
    decoder_graphdef, decoder_state = nnx.split(nnx.merge(graphdef, state).for_decoding())
    tokens, logprobs, lengths = _program(
        state, decoder_state, *inputs, eos, graphdef=graphdef, decoder_graphdef=decoder_graphdef,
        max_new_tokens=int(max_new_tokens), sampler=sampler, pad_id=int(pad_id), num_samples=int(num_samples),
        mesh=mesh, rules=rules)
    rows = batch * num_samples
    return GenerateOutput(*(_to_host(x)[:rows] for x in (tokens, logprobs, lengths)))


@functools.partial(jax.jit, static_argnames=("graphdef", "decoder_graphdef", "max_new_tokens", "sampler", "pad_id",
                                             "num_samples", "mesh", "rules"))
def _program(state, decoder_state, ids, mask, seeds, offsets, eos, *, graphdef, decoder_graphdef, max_new_tokens,
             sampler, pad_id, num_samples, mesh, rules):
    """Prefill all prompt tokens but the last, repeat the cache per sample, then decode until every row ends.

    The prefill runs the model as it is (a scanned stack compiles one block); the decode loop runs its
    `for_decoding` layout (`decoder_*`). The last prompt token is the loop's first input, so the
    prefill's logits are unused and XLA drops them: no [batch, prompt, vocab] array is ever built (2 GB
    per 8 prompts of 256 tokens for BLOOM).
    """
    global _traces
    _traces += 1
    with activation_sharding(mesh, rules) if mesh is not None else contextlib.nullcontext():
        batch, width = ids.shape
        steps, rows = max_new_tokens, batch * num_samples
        # Cache slots: the prompt, then the new tokens that are fed back (all but the last).
        full_mask = jnp.concatenate([mask, jnp.ones((batch, steps - 1), mask.dtype)], axis=1)
        model = nnx.merge(graphdef, state)
        cache = _constrain_cache(model.init_cache(batch, width + steps - 1), mesh, rules)
        if width > 1:
            _, cache = model(ids[:, :-1], full_mask, cache=cache)
        # Every sample of a prompt shares its prefill.
        repeat = lambda x: jnp.repeat(x, num_samples, axis=0)
        cache = jax.tree.map(lambda x: x if x.ndim == 0 else repeat(x), cache)
        full_mask = repeat(full_mask)
        row_keys = jax.vmap(lambda s, o, i: jax.random.fold_in(jax.random.fold_in(jax.random.key(s), o), i))(
            repeat(seeds), repeat(offsets), jnp.tile(jnp.arange(num_samples), batch))

        def cond(carry):
            t, _, _, _, _, done, _ = carry
            return (t < steps) & ~jnp.all(done)

        def body(carry):
            t, cache, token, tokens, logprobs, done, lengths = carry
            logits, cache = nnx.merge(decoder_graphdef, decoder_state)(token[:, None], full_mask, cache=cache)
            logits = logits[:, -1]
            token = sampler(logits, jax.vmap(jax.random.fold_in, (0, None))(row_keys, t))
            logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
            token = jnp.where(done, pad_id, token)
            tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, t))
            logprobs = jax.lax.dynamic_update_slice(logprobs, jnp.where(done, 0.0, logprob)[:, None], (0, t))
            lengths = lengths + (~done).astype(jnp.int32)
            done = done | jnp.isin(token, eos)
            return t + 1, _constrain_cache(cache, mesh, rules), token, tokens, logprobs, done, lengths

        start = (jnp.int32(0), _constrain_cache(cache, mesh, rules), repeat(ids[:, -1]),
                 jnp.full((rows, steps), pad_id, jnp.int32), jnp.zeros((rows, steps), jnp.float32),
                 jnp.zeros((rows,), bool), jnp.zeros((rows,), jnp.int32))
        _, _, _, tokens, logprobs, _, lengths = jax.lax.while_loop(cond, body, start)
        if mesh is not None:  # replicated, so every process can read the whole result
            tokens, logprobs, lengths = (jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec()))
                                         for x in (tokens, logprobs, lengths))
        return tokens, logprobs, lengths


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


def _data_parallel_size(mesh: Mesh | None, rules: LogicalRules | None) -> int:
    if mesh is None:
        return 1
    axes = logical_to_spec(("batch",), rules or ())[0]
    if axes is None:
        return 1
    return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


def _place_state(state: nnx.State, mesh: Mesh, rules: LogicalRules | None) -> nnx.State:
    specs = nnx.get_partition_spec(state)
    shardings = jax.tree.map(lambda spec: NamedSharding(mesh, logical_to_spec(tuple(spec), rules or ())), specs,
                             is_leaf=lambda x: isinstance(x, PartitionSpec))
    return jax.device_put(state, shardings)


def _put_rows(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A host array (the same on every process) as a global array, each device taking its rows."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _constrain_cache(cache, mesh: Mesh | None, rules: LogicalRules | None):
    if mesh is None:
        return cache
    sharding = NamedSharding(mesh, logical_to_spec(CACHE_AXES, rules or ()))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding) if x.ndim == len(CACHE_AXES) else x,
                        cache)


def _to_host(x: jax.Array) -> np.ndarray:
    """Host copy of a replicated (or single-device) result; works on every process of a multi-host mesh."""
    return np.asarray(x.addressable_data(0))
