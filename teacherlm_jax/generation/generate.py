"""Batched generation: `generate` continues left-padded prompts over the decode slots of
`teacherlm_jax.generation.slots` (one prefill program, one `lax.while_loop` decode program per shape).

Prompts are padded further on the left to a length bucket, so a dataset-scale job compiles a handful
of programs; extra left padding does not change the result because models take positions from the
attention mask. Randomness is keyed per row and per step (`fold_in(fold_in(fold_in(key(seed_b),
index_b), sample), step)`, the step counted per row), so a row's tokens do not depend on its batch
mates, its bucket or the device mesh. The continuous-batching engine (`teacherlm_jax.generation.scheduler`)
runs the same slots, so its rows are `generate`'s.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from teacherlm_jax.config_checks import require_int
from teacherlm_jax.data.padding import left_pad, pad_token_id
from teacherlm_jax.generation.sampler import PROMPT_BUCKETS, Sampler, bucket_length
from teacherlm_jax.generation.slots import DecodeSlots, RowSeeds, slot_count
from teacherlm_jax.sharding import LogicalRules, logical_to_spec


class GenerateOutput(NamedTuple):
    """What `generate` returns, as host numpy arrays; row `r * num_samples + s` is sample s of prompt r.

    tokens: int32 [rows, max_new_tokens], the pad id after a row's end.
    logprobs: float32 [rows, max_new_tokens], log p(token) under the model's own distribution
      (log_softmax of the raw logits: before temperature, top-k and top-p), 0 after a row's end;
      None when `generate` was called with `logprobs=False` (no log-softmax per step).
    lengths: int32 [rows], tokens generated per row, counting the EOS that ended it.
    """

    tokens: np.ndarray
    logprobs: np.ndarray | None
    lengths: np.ndarray


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
    logprobs: bool = True,
) -> GenerateOutput:
    """Continues left-padded prompts `input_ids`/`attention_mask` [batch, length] (numpy or jax).

    Each prompt is sampled `num_samples` times (rows `r * num_samples + s`), with independent
    randomness. A row ends at `eos_token_id` (an id or several) when `stop_at_eos`; `eos_token_id=None`
    or `stop_at_eos=False` generates exactly `max_new_tokens`. The loop stops once every row has ended.
    `seed` is one int (prompt b then uses key `fold_in(key(seed), b)`) or one int per prompt (key
    `fold_in(key(seed_b), 0)`, so a prompt's samples do not depend on its position in the batch).
    `prompt_buckets` lists allowed padded prompt lengths (default: `sampler.PROMPT_BUCKETS`).
    `logprobs=False` skips the per-step log-softmax (callers that only want the text).

    With `mesh` and `rules`, rows are sharded over the mesh axes that logical axis `batch` maps to
    (idle slots round them up to a multiple of that size) and parameters over the rest (e.g. heads,
    mlp and vocab over `tensor`), placed by their logical axis names (a no-op when the model was
    loaded onto the mesh).

    Generation runs the model's decode layout (`model.for_decoding()`: listed layers). A model loaded with
    `scan_layers=False` shares its weights with it (held once); a scanned model's blocks are copied for
    the call.
    """
    sampler = Sampler(temperature, top_k, top_p)
    config = model.config
    ids, mask = _check_prompts(input_ids, attention_mask, getattr(config, "vocab_size", None))
    batch = ids.shape[0]
    require_int("max_new_tokens", max_new_tokens, 1)
    require_int("num_samples", num_samples, 1)
    seeds, offsets = _prompt_seeds(seed, batch)
    # Not stopping is stopping at no token (-1): one program serves every EOS setting.
    eos = _eos_ids(eos_token_id) if stop_at_eos and eos_token_id is not None else np.array([-1], np.int32)

    longest = int(mask.sum(axis=1).max())
    max_positions = config.max_position_embeddings
    if longest + max_new_tokens > max_positions:
        raise ValueError(f"the longest prompt ({longest} tokens) plus max_new_tokens={max_new_tokens} exceeds the "
                         f"model's max_position_embeddings={max_positions}; truncate the prompts or ask for fewer "
                         f"new tokens")
    width = max(longest, min(bucket_length(longest, prompt_buckets or PROMPT_BUCKETS), max_positions - max_new_tokens))
    pad_id = pad_token_id(model_config=config)
    ids, mask = left_pad([row[m == 1] for row, m in zip(ids, mask)], width, pad_id)

    rows = batch * num_samples
    if mesh is not None:
        model = nnx.merge(*_place(nnx.split(model), mesh, rules))
    decode_slots = DecodeSlots(model.for_decoding(), size=slot_count(rows, mesh, rules), prompt_width=width,
                               max_new_tokens=int(max_new_tokens), sampler=sampler, eos_ids=eos, pad_id=pad_id,
                               mesh=mesh, rules=rules, logprobs=logprobs)
    seeds = RowSeeds.of(np.repeat(seeds, num_samples), np.repeat(offsets, num_samples),
                        np.tile(np.arange(num_samples), batch))
    decode_slots.insert(ids, mask, np.arange(rows).reshape(batch, num_samples), seeds)
    view = decode_slots.run(int(max_new_tokens)).result()
    return GenerateOutput(view.tokens[:rows], view.logprobs[:rows] if logprobs else None, view.steps[:rows])


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


def _place(split: tuple[nnx.GraphDef, nnx.State], mesh: Mesh, rules: LogicalRules | None):
    """Parameters placed on the mesh by their logical axis names (a no-op when loaded onto it)."""
    graphdef, state = split
    specs = nnx.get_partition_spec(state)
    shardings = jax.tree.map(lambda spec: NamedSharding(mesh, logical_to_spec(tuple(spec), rules or ())), specs,
                             is_leaf=lambda x: isinstance(x, PartitionSpec))
    return graphdef, jax.device_put(state, shardings)
