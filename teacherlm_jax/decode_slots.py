"""Decode slots: one KV cache of `slots` rows, each row at its own step, and the two programs that use it.

`insert` prefills new prompts and writes their keys and values into chosen rows (slots); `run` decodes
every slot, one token per step, inside a `lax.while_loop` that stops after `max_steps`, when any row
ends (so a host loop can refill the freed slots: continuous batching) or when every row has ended
(`generate`). A row carries its own write position, attention mask, PRNG key and step count, and its
token at step t is drawn with `fold_in(row_key, t)`: what a row generates depends only on the model,
its prompt and its key, never on its slot, its slot mates or when it was inserted.

Layout of a slot's cache row (prompt width P, L = P + max_new_tokens - 1 positions): a prompt of
bucketed width w puts its first w - 1 tokens, left-padded, in columns [P - w, P - 1) (when w > P, its
first w - P columns, padding, are not kept); its last token is the first step's input, written at
column P - 1; generated token i is fed back at column P + i. The row's mask is 0 on padding and stale
columns, so keys left there by the slot's previous row are never attended to, and BLOOM's ALiBi and
OPT's positions (counted over the mask) are those of the row alone. Every step attends over all L
columns, so P is kept as small as the prompts allow. `shrink` moves rows to a smaller cache (the end of
a job), `compile_ahead` compiles the step programs in the background. JetStream's offline engine and
EasyDeL's eSurge are the references for this insert/step design.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import math
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from teacherlm_jax.models.graph_key import GraphKey
from teacherlm_jax.models.layers import KVCache
from teacherlm_jax.sharding import LogicalRules, activation_sharding, logical_to_spec

if TYPE_CHECKING:
    from teacherlm_jax.sample import Sampler

# Logical axes of each layer's key (and value) cache buffer.
CACHE_AXES = ("batch", "heads", "length", "kv")

_traces = 0
_traces_lock = threading.Lock()  # programs are also traced by compile_ahead's threads


def num_traces() -> int:
    """How many generation programs (inserts and runs) have been traced in this process: each is a compile."""
    return _traces


def _count_trace() -> None:
    global _traces
    with _traces_lock:
        _traces += 1


class InsertShape(NamedTuple):
    """The shapes of one `insert` program: `prefixes` shared prefixes of width `prefix_width`, then `rows`
    rows of `width` own tokens each (a prompt without a shared prefix: its tokens but the last are its
    prefix), each row going to `copies` slots."""

    prefixes: int
    prefix_width: int
    rows: int
    width: int
    copies: int

    @staticmethod
    def of(ids_shape: tuple[int, int], prefix_shape: tuple[int, int] | None, copies: int) -> InsertShape:
        (m, w) = ids_shape
        return InsertShape(m, w - 1, m, 1, copies) if prefix_shape is None else InsertShape(*prefix_shape, m, w, copies)


class SlotState(NamedTuple):
    """Everything a decode step reads and writes, one row per slot (donated through the programs)."""

    cache: KVCache  # per layer [slots, heads, L, head_dim]; index [slots]: each row's next write column
    mask: jax.Array  # int32 [slots, L]
    token: jax.Array  # int32 [slots]: the next step's input
    keys: jax.Array  # PRNG keys [slots]: the row's own key
    steps: jax.Array  # int32 [slots]: tokens the row has generated (its length once it ends)
    active: jax.Array  # bool [slots]: the slot holds a row that has not ended
    tokens: jax.Array  # int32 [slots, max_new_tokens]: the row's tokens, pad after its end
    logprobs: jax.Array  # float32 [slots, max_new_tokens]: log p(token) under the model, 0 after the end


def row_keys(seeds: Sequence[int], offsets: Sequence[int], samples: Sequence[int]) -> jax.Array:
    """A row's key: `fold_in(fold_in(key(seed), offset), sample)` (what `generate` has always used)."""
    fold = lambda s, o, i: jax.random.fold_in(jax.random.fold_in(jax.random.key(s), o), i)
    return jax.vmap(fold)(jnp.asarray(seeds, jnp.uint32), jnp.asarray(offsets, jnp.int32),
                          jnp.asarray(samples, jnp.int32))


def slot_count(rows: int, mesh: Mesh | None, rules: LogicalRules | None) -> int:
    """`rows` rounded up to a multiple of the mesh's data-parallel size (the extra slots stay idle)."""
    axes = None if mesh is None else logical_to_spec(("batch",), rules or ())[0]
    shards = 1 if axes is None else math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
    return -(-rows // shards) * shards


@dataclasses.dataclass
class DecodeSlots:
    """`slots` decode rows over `model` (its decode layout: see `Model.for_decoding`) and their state.

    `prompt_width` bounds the (bucketed) width of every prompt inserted; `eos_ids` end a row (empty:
    rows always run `max_new_tokens`). `mesh`/`rules` shard the slots over the mesh axes of logical
    axis `batch` and the cache's heads as the model's; programs are compiled once per shape.
    """

    model: nnx.Module
    slots: int
    prompt_width: int
    max_new_tokens: int
    sampler: Sampler
    eos_ids: np.ndarray
    pad_id: int
    mesh: Mesh | None = None
    rules: LogicalRules | None = None

    def __post_init__(self):
        self.rules = None if self.rules is None else tuple(
            (name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in self.rules)
        graphdef, self.params = nnx.split(self.model)
        self.graphdef = GraphKey(graphdef)
        self.length = self.prompt_width + self.max_new_tokens - 1
        self.eos_ids = jnp.asarray(np.asarray(self.eos_ids, np.int32).reshape(-1) if len(self.eos_ids)
                                   else np.array([-1], np.int32))  # -1: no token ends a row
        self.state = self._empty(self.slots)
        self._compiling: list[concurrent.futures.Future] = []
        self.decode_steps = 0  # steps run (each decodes every slot)
        self.slot_steps = 0  # slots decoded, summed over steps
        self.kept_tokens = 0  # slot-steps that produced a kept token (occupancy = kept / slot_steps)
        self.prefill_tokens = 0  # tokens prefilled, padding included

    def _empty(self, slots: int) -> SlotState:
        s, n = slots, self.max_new_tokens
        cache = self.model.init_cache(s, self.length)
        cache = cache.replace(index=jnp.full((s,), self.prompt_width - 1, jnp.int32))
        state = SlotState(cache, jnp.zeros((s, self.length), jnp.int32), jnp.zeros((s,), jnp.int32),
                          row_keys(np.zeros(s), np.zeros(s), np.zeros(s)), jnp.zeros((s,), jnp.int32),
                          jnp.zeros((s,), bool), jnp.full((s, n), self.pad_id, jnp.int32),
                          jnp.zeros((s, n), jnp.float32))
        if self.mesh is not None:
            state = jax.device_put(state, self._state_shardings(state))
        return state

    def _state_shapes(self, slots: int) -> SlotState:
        shapes = jax.eval_shape(lambda: self._empty(slots))
        if self.mesh is None:
            return shapes
        return jax.tree.map(lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes,
                            self._state_shardings(shapes))

    def compile_ahead(self, slot_counts: Sequence[int], inserts: Sequence[InsertShape] = ()) -> None:
        """Compiles `run` for these slot counts, `shrink` to them and `insert` for these shapes (in this order,
        each wanted before the next) in background threads: XLA compiles a program on one core, and a
        prefill program can take seconds to compile on a GPU, so compiling while other programs run keeps
        compiles off the decode loop. Uses a quarter of the cores (at least one thread, at most four)."""
        kwargs = dict(graphdef=self.graphdef, pad_id=self.pad_id, mesh=self.mesh, rules=self.rules)
        here, rows = self._state_shapes(self.slots), lambda n, dtype: jax.ShapeDtypeStruct((n,), dtype)
        tasks = []
        for slots in slot_counts:
            tasks.append(lambda s=slots: _run.lower(self.params, self._state_shapes(s), self.eos_ids, jnp.int32(0),
                                                    sampler=self.sampler, until_all=False, **kwargs).compile())
            if slots < self.slots:
                tasks.append(lambda s=slots: _gather.lower(here, rows(s, jnp.int32), rows(s, jnp.bool_)).compile())
        for shape in dict.fromkeys(inserts):
            tasks.append(functools.partial(self._compile_insert, shape))
        pool = concurrent.futures.ThreadPoolExecutor(max(1, min(4, (os.cpu_count() or 1) // 4)),
                                                     thread_name_prefix="compile_ahead")
        self._compiling = [pool.submit(task) for task in tasks]
        pool.shutdown(wait=False)

    def _compile_insert(self, shape: InsertShape) -> None:
        ints = lambda *dims: jax.ShapeDtypeStruct(dims, jnp.int32)
        n = shape.rows * shape.copies
        keys = jax.eval_shape(lambda: row_keys(np.zeros(n), np.zeros(n), np.zeros(n)))
        _insert.lower(self.params, self._state_shapes(self.slots), ints(shape.prefixes, shape.prefix_width),
                      ints(shape.prefixes, shape.prefix_width), ints(shape.rows, shape.width),
                      ints(shape.rows, shape.width), ints(shape.rows), ints(n), keys, graphdef=self.graphdef,
                      prompt_width=self.prompt_width, copies=shape.copies, pad_id=self.pad_id, mesh=self.mesh,
                      rules=self.rules).compile()

    def join(self) -> None:
        """Waits for `compile_ahead`'s threads (so that they do not outlive the job), raising their errors."""
        for future in self._compiling:
            future.result()
        self._compiling = []

    def _state_shardings(self, state: SlotState):
        rows = logical_to_spec(("batch",), self.rules or ())[0]
        cache_spec = logical_to_spec(CACHE_AXES, self.rules or ())

        def sharding(x):
            if x.ndim == len(CACHE_AXES):
                return NamedSharding(self.mesh, cache_spec)
            return NamedSharding(self.mesh, PartitionSpec(rows, *(None,) * (x.ndim - 1)) if x.ndim else PartitionSpec())

        return jax.tree.map(sharding, state)

    def insert(self, ids: np.ndarray, mask: np.ndarray, slot_ids: np.ndarray, keys: jax.Array,
               prefix: tuple[np.ndarray, np.ndarray] | None = None, parent: np.ndarray | None = None) -> None:
        """Prefills left-padded prompts into slots `slot_ids` [m, copies] (a row's copies share its
        prefill); `keys` [m * copies] are the rows' keys; a slot id of `slots` or more writes nowhere.

        Without `prefix`, `ids`/`mask` [m, w] are whole prompts. With `prefix` = (ids, mask) [k, wp],
        rows share prefixes: row j is `prefix[parent[j]]` followed by its own `ids[j]` (left-padded too),
        and each prefix is prefilled once. Columns past `prompt_width` (wp + w may be up to the cache's
        length, so that a prefill's bucket need not widen every slot) must be the prefixes' left padding.
        """
        if prefix is None:  # all but the last token are a prefix of the row's own
            prefix = (ids[:, :-1], mask[:, :-1])
            ids, mask, parent = ids[:, -1:], mask[:, -1:], np.arange(len(ids))
        (prefix_ids, prefix_mask), (m, width) = prefix, ids.shape
        row_mask = np.concatenate([np.asarray(prefix_mask)[np.asarray(parent, np.int64)], np.asarray(mask)], axis=1)
        total = row_mask.shape[1]
        if total > self.length or row_mask[:, :max(0, total - self.prompt_width)].any():
            raise ValueError(f"prompts of width {total} (padding included) do not fit the slots' prompt_width="
                             f"{self.prompt_width}: only left padding may go past it")
        slot_ids = np.asarray(slot_ids, np.int32).reshape(m, -1)
        as_ints = lambda x: jnp.asarray(np.asarray(x), jnp.int32)
        self.state = _insert(self.params, self.state, as_ints(prefix_ids), as_ints(prefix_mask), as_ints(ids),
                             as_ints(mask), as_ints(parent), as_ints(slot_ids.reshape(-1)), keys,
                             graphdef=self.graphdef, prompt_width=self.prompt_width, copies=slot_ids.shape[1],
                             pad_id=self.pad_id, mesh=self.mesh, rules=self.rules)
        self.prefill_tokens += prefix_ids.size + m * (width - 1)

    def run(self, max_steps: int, until_all: bool) -> np.ndarray:
        """Decodes at most `max_steps` steps, stopping early once any row ends (every row, with
        `until_all`); returns the host copy of which slots are still active."""
        self.state, steps, kept = _run(self.params, self.state, self.eos_ids, jnp.int32(max_steps),
                                       graphdef=self.graphdef, sampler=self.sampler, pad_id=self.pad_id,
                                       until_all=until_all, mesh=self.mesh, rules=self.rules)
        steps, kept, active = jax.device_get((steps, kept, self.state.active))
        self.decode_steps += int(steps)
        self.slot_steps += int(steps) * self.slots
        self.kept_tokens += int(kept)
        return np.asarray(active)

    def shrink(self, keep: Sequence[int], slots: int) -> None:
        """Moves the rows in slots `keep` to slots 0, 1, ... of `slots` (fewer) slots, the others idle.

        For the end of a job, when no prompt waits: its last rows then decode in steps that cost less.
        A row's tokens are the same wherever it decodes.
        """
        if not len(keep) <= slots <= self.slots:
            raise ValueError(f"cannot move {len(keep)} rows of {self.slots} slots to {slots} slots")
        index = np.zeros(slots, np.int32)
        index[:len(keep)] = keep
        state = _gather(self.state, jnp.asarray(index), jnp.arange(slots) < len(keep))
        self.slots = slots
        self.state = jax.device_put(state, self._state_shardings(state)) if self.mesh is not None else state

    def rows(self, slot_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, logprobs, lengths) of the rows in `slot_ids`, as host arrays."""
        state = (self.state.tokens, self.state.logprobs, self.state.steps)
        if self.mesh is not None:  # replicated, so every process of a multi-host mesh can read it
            state = _replicated(state, mesh=self.mesh)
        index = np.asarray(slot_ids, np.int64)
        return tuple(np.asarray(x.addressable_data(0))[index] for x in state)


@jax.jit
def _gather(state: SlotState, index: jax.Array, live: jax.Array) -> SlotState:
    """Rows `index` of every slot array; rows where `live` is False are inactive."""
    state = jax.tree.map(lambda x: x[index] if x.ndim else x, state)
    return state._replace(active=state.active & live)


@functools.partial(jax.jit, static_argnames=("mesh",))
def _replicated(arrays, *, mesh: Mesh):
    return jax.lax.with_sharding_constraint(arrays, NamedSharding(mesh, PartitionSpec()))


def _mesh_context(mesh: Mesh | None, rules) -> Any:
    return activation_sharding(mesh, rules) if mesh is not None else contextlib.nullcontext()


def _constrain_cache(cache: KVCache, mesh: Mesh | None, rules) -> KVCache:
    if mesh is None:
        return cache
    sharding = NamedSharding(mesh, logical_to_spec(CACHE_AXES, rules or ()))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding) if x.ndim == len(CACHE_AXES) else x,
                        cache)


@functools.partial(jax.jit, donate_argnums=1,
                   static_argnames=("graphdef", "prompt_width", "copies", "pad_id", "mesh", "rules"))
def _insert(params, state: SlotState, prefix_ids, prefix_mask, ids, mask, parent, slot_ids, keys, *, graphdef,
            prompt_width, copies, pad_id, mesh, rules) -> SlotState:
    """Prefill the prefixes, then each row's own tokens but its last after its prefix, into caches of
    their own widths; then scatter the rows into their slots, less any leading (padding) columns that
    go past the slots' prompt width.

    The prefills' logits are unused, so XLA drops them: no [rows, width, vocab] array is built.
    """
    _count_trace()
    with _mesh_context(mesh, rules):
        (k, wp), (m, ws) = prefix_ids.shape, ids.shape
        model = graphdef.merge(params)
        drop = dict(mode="drop")  # slot ids past the last slot are padding rows
        row_mask = jnp.concatenate([prefix_mask[parent], mask], axis=1)  # [m, wp + ws]
        rows = None  # the rows' keys and values for their first wp + ws - 1 tokens
        if wp:
            _, rows = model(prefix_ids, prefix_mask, cache=model.init_cache(k, wp))
            rows = KVCache(tuple(x[parent] for x in rows.key), tuple(x[parent] for x in rows.value), rows.index)
        if ws > 1:
            cache = model.init_cache(m, wp + ws - 1)
            if rows is not None:
                fill = lambda buf, x: buf.at[:, :, :wp].set(x)
                cache = KVCache(tuple(map(fill, cache.key, rows.key)), tuple(map(fill, cache.value, rows.value)),
                                jnp.int32(wp))
            _, rows = model(ids[:, :-1], row_mask[:, :-1], cache=cache)
        cache, width = state.cache, wp + ws
        clip = max(0, width - prompt_width)  # leading columns past the slot's prompt width: padding only
        if rows is not None:
            first = prompt_width - width + clip
            put = lambda buf, x: buf.at[slot_ids, :, first:first + width - 1 - clip].set(
                jnp.repeat(x[:, :, clip:], copies, axis=0).astype(buf.dtype), **drop)
            cache = KVCache(tuple(map(put, cache.key, rows.key)), tuple(map(put, cache.value, rows.value)), cache.index)
        cache = cache.replace(index=cache.index.at[slot_ids].set(prompt_width - 1, **drop))
        length = state.mask.shape[1]
        row_mask = jnp.concatenate([jnp.zeros((m, prompt_width - width + clip), jnp.int32), row_mask[:, clip:],
                                    jnp.ones((m, length - prompt_width), jnp.int32)], axis=1)
        rep = lambda x: jnp.repeat(x, copies, axis=0)
        n = state.tokens.shape[1]
        return SlotState(
            _constrain_cache(cache, mesh, rules), state.mask.at[slot_ids].set(rep(row_mask), **drop),
            state.token.at[slot_ids].set(rep(ids[:, -1]), **drop), state.keys.at[slot_ids].set(keys, **drop),
            state.steps.at[slot_ids].set(0, **drop), state.active.at[slot_ids].set(True, **drop),
            state.tokens.at[slot_ids].set(jnp.full((m * copies, n), pad_id, jnp.int32), **drop),
            state.logprobs.at[slot_ids].set(jnp.zeros((m * copies, n), jnp.float32), **drop))


@functools.partial(jax.jit, donate_argnums=1, static_argnames=("graphdef", "sampler", "pad_id", "until_all", "mesh",
                                                               "rules"))
def _run(params, state: SlotState, eos_ids, max_steps, *, graphdef, sampler, pad_id, until_all, mesh, rules):
    """(state, steps run, kept tokens) after decoding every slot until `max_steps`, or any / every row ends."""
    _count_trace()
    with _mesh_context(mesh, rules):
        slots, max_new = state.tokens.shape
        rows = jnp.arange(slots)

        def cond(carry):
            t, st, ended, _ = carry
            stop = ~jnp.any(st.active) if until_all else ended | ~jnp.any(st.active)
            return (t < max_steps) & ~stop

        def body(carry):
            t, st, _, kept = carry
            logits, cache = graphdef.merge(params)(st.token[:, None], st.mask, cache=st.cache)
            logits = logits[:, -1]
            token = sampler(logits, jax.vmap(jax.random.fold_in)(st.keys, st.steps))
            logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
            live = st.active
            column = jnp.where(live, st.steps, max_new)  # past the end: the write is dropped
            tokens = st.tokens.at[rows, column].set(token, mode="drop")
            logprobs = st.logprobs.at[rows, column].set(logprob, mode="drop")
            steps = st.steps + live.astype(jnp.int32)
            finished = live & (jnp.isin(token, eos_ids) | (steps >= max_new))
            cache = cache.replace(index=jnp.where(live, st.cache.index + 1, st.cache.index))
            new = SlotState(_constrain_cache(cache, mesh, rules), st.mask, jnp.where(live, token, st.token), st.keys,
                            steps, live & ~finished, tokens, logprobs)
            return t + 1, new, jnp.any(finished), kept + jnp.sum(live)

        t, state, _, kept = jax.lax.while_loop(cond, body, (jnp.int32(0), state, jnp.bool_(False), jnp.int32(0)))
        return state, t, kept
