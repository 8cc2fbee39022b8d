"""Decode slots: one KV cache of `size` rows, each row at its own step, and the programs that use it.

`insert` prefills new prompts and writes their keys and values into chosen rows (slots); `run` dispatches a
round of decode steps, one token per live row per step, inside a `lax.while_loop` that stops after
`max_steps` or once at most `stop_at_active` rows are still live, and returns at once (jax dispatches
asynchronously): the host reads the round's rows (`Round.result`) when it needs them, so it can prepare
the next round while this one decodes. A row carries its own write position, attention mask, PRNG key
and step count, and its token at step t is drawn with `fold_in(row_key, t)`: what a row generates depends
only on the model, its prompt and its key, never on its slot, its slot mates or when it was inserted.

Layout of a slot's cache row (prompt width P, L = P + max_new_tokens - 1 positions): a prompt of
bucketed width w puts its first w - 1 tokens, left-padded, in columns [P - w, P - 1) (when w > P, its
first w - P columns, padding, are not kept); its last token is the first step's input, written at
column P - 1; generated token i is fed back at column P + i. The row's mask is 0 on padding and stale
columns, so keys left there by the slot's previous row are never attended to, and BLOOM's ALiBi and
OPT's positions (counted over the mask) are those of the row alone.

A slot without a live row (never filled, or its row ended at EOS or at max_new_tokens) has its write
column set to L, past the cache, and writes no token. Its steps still compute: OPT's position lookup
clamps that column into its table (an index past it would read NaN in JAX, not fail), and its key and
value land, clamped, in its own last column L - 1, finite and never read: a row inserted later attends
only to columns up to its own write column, and writes column L - 1 itself before it reaches it. So a
slot can idle for any number of steps and a prompt inserted later reads nothing it left.

Every step attends over all L columns, and P is kept as small as the prompts allow. A round could attend
over the live rows' window only (from the longest live prompt's start to the oldest row's column): on
TeacherLM's workload that window covers most of L, and on XLA CPU attention over a slice of the cache,
static or dynamic, is slower than over the whole cache (benchmarks/decode_window.py), and skipping per row
needs a ragged kernel.

Pooled slots (`pool`: the engine's units of several rows) store each unit's shared prefix once, in a pool
of `PoolShape.prefixes` prefixes (`kv_cache.PrefixPool`), and a row's cache holds only its own columns: its
kind's prompt tokens (right-aligned in `prompt_width` columns) and its generated tokens. A decode step reads
each live prefix once for all its rows (their queries laid out [prefixes, members], Hydragen's batched
matmul) and merges that part with the row's own by log-sum-exp (`attention.attend_with_prefix`); positions
count the row's mask over its prefix then its own columns, so ALiBi and OPT's positions are those of the
whole row. A row ending leaves its place in the pool (its pool slot set past the pool); its prefix stays
until the host, which assigns pool slots, sees its last row end.

`shrink` moves rows to a smaller cache (the end of a job), `compile_ahead` compiles programs in the
background. The programs are `program_store.StoredProgram`s: with a persistent compilation cache, a later job
loads each one exported rather than tracing it again. JetStream's and MaxText's offline engines are the
references.

Arguments from the host are numpy arrays (jit places them replicated on the mesh), and what the host
reads comes back replicated, so the same calls run on a mesh that spans processes.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import export
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from teacherlm_jax.generation.compiles import compiled_programs
from teacherlm_jax.generation.program_store import StoredProgram
from teacherlm_jax.generation.sampler import Sampler
from teacherlm_jax.models.graph_key import GraphKey
from teacherlm_jax.models.kv_cache import KVCache, PrefixPool
from teacherlm_jax.sharding import LogicalRules, activation_sharding, logical_to_spec

# Logical axes of each layer's key (and value) cache buffer.
CACHE_AXES = ("batch", "heads", "length", "kv")
# ... and of the prefix pool's: its prefixes are not split over the data axes.
POOL_AXES = (None, "heads", "length", "kv")
# The jitted functions of this module, whose compiles `num_traces` counts.
PROGRAMS = ("_insert", "_run", "_gather")


def num_traces() -> int:
    """How many generation programs (inserts, rounds, shrinks) this process has compiled so far."""
    return compiled_programs(PROGRAMS)


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


# A prefix pool holds this many times the units that fill the slots at once: a unit's prefix stays until its
# last row ends, so live prefixes outnumber the units of one fill.
POOL_FILLS = 2


def pool_prefixes(rows: int, rows_per_prefix: int, slots: int) -> int:
    """Pool slots for `rows` rows in units of `rows_per_prefix` rows: POOL_FILLS fills' units, at most `slots`."""
    return min(slots, -(-POOL_FILLS * rows // rows_per_prefix))


class PoolShape(NamedTuple):
    """The prefix pool of pooled slots: `prefixes` pool slots of `width` columns, each prefix read once a step
    for at most `members` rows (`kv_cache.PrefixPool`)."""

    prefixes: int
    width: int
    members: int


class PoolPlaces(NamedTuple):
    """Where an insert's prefixes and rows go in the pool, as host arrays: each prefix's pool slot [k] (the pool's
    size: none) and each inserted row's member number [m * copies]."""

    prefix_slots: np.ndarray
    members: np.ndarray


class RowSeeds(NamedTuple):
    """Each inserted row's key, `fold_in(fold_in(key(seed), offset), sample)`, as host arrays [rows]."""

    seed: np.ndarray
    offset: np.ndarray
    sample: np.ndarray

    @staticmethod
    def of(seeds: Sequence[int], offsets: Sequence[int], samples: Sequence[int]) -> RowSeeds:
        return RowSeeds(np.asarray(seeds, np.uint32), np.asarray(offsets, np.int32), np.asarray(samples, np.int32))


class SlotState(NamedTuple):
    """Everything a decode step reads and writes, one row per slot (donated through the programs)."""

    cache: KVCache  # per layer [slots, heads, L, head_dim]; index [slots]: next write column (L: no live row);
    # pooled slots: prefix holds the shared prefixes, a row's cache only its own columns
    mask: jax.Array  # int32 [slots, L]
    token: jax.Array  # int32 [slots]: the next step's input
    keys: jax.Array  # PRNG keys [slots]: the row's own key
    steps: jax.Array  # int32 [slots]: tokens the row has generated (its length once it ends)
    active: jax.Array  # bool [slots]: the slot holds a row that has not ended
    tokens: jax.Array  # int32 [slots, max_new_tokens]: the row's tokens, pad after its end
    logprobs: jax.Array  # float32 [slots, max_new_tokens], or [slots, 0] when not asked for


export.register_namedtuple_serialization(SlotState, serialized_name="teacherlm_jax.SlotState")  # stored programs


class RowsView(NamedTuple):
    """A round's end, as the host reads it: which slots are live, and every slot's tokens so far."""

    active: np.ndarray  # bool [slots]
    steps: np.ndarray  # int32 [slots]
    tokens: np.ndarray  # int32 [slots, max_new_tokens]
    logprobs: np.ndarray  # float32 [slots, max_new_tokens or 0]


def row_keys(seeds: Any, offsets: Any, samples: Any) -> jax.Array:
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
class Round:
    """A dispatched round of decode steps; `result()` waits for it and reads its rows (once)."""

    slots: DecodeSlots
    outputs: tuple[jax.Array, ...]
    count: int  # slots of the round
    view: RowsView | None = None

    def result(self) -> RowsView:
        if self.view is None:
            steps, kept, *rows = (np.asarray(x.addressable_data(0)) for x in self.outputs)
            self.view = RowsView(*rows)
            self.slots.decode_steps += int(steps)
            self.slots.slot_steps += int(steps) * self.count
            self.slots.kept_tokens += int(kept)
            self.outputs = ()
        return self.view


@dataclasses.dataclass(kw_only=True)
class SlotLayout:
    """What the decode slots' programs are made for besides their shapes; `graphdef` is the subclass's."""

    prompt_width: int
    max_new_tokens: int
    sampler: Sampler
    eos_ids: np.ndarray
    pad_id: int
    mesh: Mesh | None = None
    rules: LogicalRules | None = None
    logprobs: bool = False
    pool: PoolShape | None = None

    @property
    def length(self) -> int:
        """The cache's columns: the prompt's and the new tokens', less the last new token (never fed back)."""
        return self.prompt_width + self.max_new_tokens - 1

    def _static(self) -> dict[str, Any]:
        return dict(graphdef=self.graphdef, pad_id=self.pad_id, mesh=self.mesh, rules=self.rules)


@dataclasses.dataclass
class DecodeSlots(SlotLayout):
    """`size` decode rows (slots) over `model` (its decode layout: `CausalLM.for_decoding`) and their state.

    `prompt_width` bounds the (bucketed) width of every prompt inserted; `eos_ids` end a row (empty:
    rows always run `max_new_tokens`); `logprobs` also records log p(token) of each generated token (a
    full-vocabulary log-softmax per step, skipped when not asked for). `mesh`/`rules` shard the slots over
    the mesh axes of logical axis `batch` and the cache's heads as the model's; programs are compiled
    once per shape.
    """

    model: nnx.Module
    size: int

    def __post_init__(self):
        self.rules = None if self.rules is None else tuple(
            (name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in self.rules)
        graphdef, self.params = nnx.split(self.model)
        self.graphdef = GraphKey(graphdef)
        self.eos_ids = (np.asarray(self.eos_ids, np.int32).reshape(-1) if len(self.eos_ids)
                        else np.array([-1], np.int32))  # -1: no token ends a row
        self.full_size = self.size
        self.state = self._empty(self.size)
        self._compiling: list[concurrent.futures.Future] = []
        self._ahead: dict[tuple, concurrent.futures.Future] = {}  # program -> its compile, in a background thread
        self.decode_steps = 0  # steps run (each decodes every slot)
        self.slot_steps = 0  # slots decoded, summed over steps
        self.kept_tokens = 0  # slot-steps that produced a kept token (occupancy = kept / slot_steps)
        self.prefill_tokens = 0  # tokens prefilled, padding included
        self.rounds = 0  # rounds dispatched: host round trips

    def _empty(self, slots: int) -> SlotState:
        state = _empty_state(self.params, slots=slots, length=self.length, max_new=self.max_new_tokens,
                             logprobs=self.logprobs, pool=self.pool, **self._static())
        # Committed to the parameters' device, as every program's output from it is: one input layout, one
        # program each (on a mesh, `_placed` lays it out).
        devices = jax.tree.leaves(self.params)[0].sharding.device_set
        if self.mesh is not None or len(devices) != 1:
            return state
        return jax.device_put(state, jax.sharding.SingleDeviceSharding(next(iter(devices))))

    def reset(self, slots: int | None = None) -> None:
        """Empty slots, `slots` of them (default: `size` as made, before any `shrink`)."""
        self.size = self.full_size if slots is None else slots
        self.state = self._empty(self.size)

    def relayout(self, prompt_width: int, pool: PoolShape | None) -> None:
        """Empty slots laid out anew: rows of `prompt_width` prompt columns (with a pool: a row's own tokens
        after its prefix), and a prefix pool or none. Programs compiled ahead for the old layout are dropped."""
        if (prompt_width, pool) != (self.prompt_width, self.pool):
            self.join()
            self.prompt_width, self.pool, self._ahead = prompt_width, pool, {}
        self.reset()

    def compile_ahead(self, slot_counts: Sequence[int], inserts: Sequence[InsertShape] = ()) -> None:
        """Compiles `run` for these slot counts, `shrink` from each to every smaller one, and `insert` for these
        shapes (in this order, each wanted before the next) in background threads: XLA compiles a program on
        one core, and a prefill program can take seconds to compile on a GPU, so compiling while other
        programs run keeps compiles off the decode loop. Uses a quarter of the cores (one to four threads)."""
        programs = self.programs()
        counts = sorted(set(slot_counts), reverse=True)
        tasks = {}
        for i, slots in enumerate(counts):
            tasks["run", slots] = lambda s=slots: programs.lower_run(s).compile()
            for smaller in counts[i + 1:]:
                tasks["gather", slots, smaller] = lambda s=slots, t=smaller: programs.lower_gather(s, t).compile()
        for shape in inserts:
            tasks["insert", shape] = lambda s=shape: programs.lower_insert(s, self.size).compile()
        pool = concurrent.futures.ThreadPoolExecutor(max(1, min(4, (os.cpu_count() or 1) // 4)),
                                                     thread_name_prefix="compile_ahead")
        for key, task in tasks.items():
            if key not in self._ahead:
                self._ahead[key] = pool.submit(task)
                self._compiling.append(self._ahead[key])
        pool.shutdown(wait=False)

    def programs(self) -> SlotPrograms:
        """The slots' programs, to lower for their exact shapes and layouts."""
        layout = {field.name: getattr(self, field.name) for field in dataclasses.fields(SlotLayout)}
        return SlotPrograms(self.params, graphdef=self.graphdef, **layout)

    def _wait_ahead(self, *key) -> None:
        """Waits for this program's compile if one is under way ahead (a call now would compile it again)."""
        future = self._ahead.get(key)
        if future is not None:
            future.result()

    def join(self) -> None:
        """Waits for `compile_ahead`'s threads (so that they do not outlive the job), raising their errors."""
        futures, self._compiling = self._compiling, []
        for future in futures:
            future.result()

    def insert(self, ids: np.ndarray, mask: np.ndarray, slot_ids: np.ndarray, seeds: RowSeeds,
               prefix: tuple[np.ndarray, np.ndarray] | None = None, parent: np.ndarray | None = None,
               places: PoolPlaces | None = None) -> None:
        """Prefills left-padded prompts into slots `slot_ids` [m, copies] (a row's copies share its
        prefill); `seeds` [m * copies] are the rows' keys; a slot id of `slots` or more writes nowhere.

        Without `prefix`, `ids`/`mask` [m, w] are whole prompts. With `prefix` = (ids, mask) [k, wp],
        rows share prefixes: row j is `prefix[parent[j]]` followed by its own `ids[j]` (left-padded too),
        and each prefix is prefilled once. Columns past `prompt_width` (wp + w may be up to the cache's
        length, so that a prefill's bucket need not widen every slot) must be the prefixes' left padding.
        Pooled slots (`pool`) take `places`: each prefix goes once into its pool slot (wp at most the pool's
        width), each row's own tokens (w at most `prompt_width`) into its slot.
        """
        ids, mask = np.asarray(ids, np.int32), np.asarray(mask, np.int32)
        if prefix is None:  # all but the last token are a prefix of the row's own
            prefix = (ids[:, :-1], mask[:, :-1])
            ids, mask, parent = ids[:, -1:], mask[:, -1:], np.arange(len(ids))
        (prefix_ids, prefix_mask), (m, width) = prefix, ids.shape
        prefix_ids, prefix_mask = np.asarray(prefix_ids, np.int32), np.asarray(prefix_mask, np.int32)
        parent = np.asarray(parent, np.int32)
        slot_ids = np.asarray(slot_ids, np.int32).reshape(m, -1)
        self._check_fits(prefix_mask, mask, parent, places, slot_ids.size)
        self._wait_ahead("insert", InsertShape(*prefix_ids.shape, m, width, slot_ids.shape[1]))
        if places is not None:
            places = PoolPlaces(np.asarray(places.prefix_slots, np.int32), np.asarray(places.members, np.int32))
        self.state = _insert(self.params, self.state, prefix_ids, prefix_mask, ids, mask, parent,
                             slot_ids.reshape(-1), RowSeeds(*(np.asarray(x) for x in seeds)), places,
                             prompt_width=self.prompt_width, copies=slot_ids.shape[1], **self._static())
        self.prefill_tokens += prefix_ids.size + m * (width - 1)

    def _check_fits(self, prefix_mask: np.ndarray, mask: np.ndarray, parent: np.ndarray,
                    places: PoolPlaces | None, rows: int) -> None:
        if (places is None) != (self.pool is None):
            raise ValueError("pooled slots take `places` (each prefix's pool slot, each row's member), others none")
        if self.pool is not None:
            if prefix_mask.shape[1] > self.pool.width or mask.shape[1] > self.prompt_width:
                raise ValueError(f"prefixes of width {prefix_mask.shape[1]} and own prompts of width {mask.shape[1]} "
                                 f"do not fit the pool's width {self.pool.width} and prompt_width={self.prompt_width}")
            members = np.asarray(places.members)
            if len(places.prefix_slots) != len(prefix_mask) or members.shape != (rows,) or not (
                    0 <= members).all() or not (members < self.pool.members).all():
                raise ValueError(f"places: one pool slot per prefix ({len(prefix_mask)}) and one member below "
                                 f"{self.pool.members} per row ({rows})")
            return
        row_mask = np.concatenate([prefix_mask[parent], mask], axis=1)
        total = row_mask.shape[1]
        if total > self.length or row_mask[:, :max(0, total - self.prompt_width)].any():
            raise ValueError(f"prompts of width {total} (padding included) do not fit the slots' prompt_width="
                             f"{self.prompt_width}: only left padding may go past it")

    def run(self, max_steps: int, stop_at_active: int = 0, stop_at_prefixes: int | None = None) -> Round:
        """Dispatches at most `max_steps` decode steps, ending once at most `stop_at_active` rows are live
        (0: once every row has ended) and, with a pool, at most `stop_at_prefixes` prefixes have live rows
        (default: no condition); returns without waiting for them."""
        self._wait_ahead("run", self.size)
        prefixes = self.pool.prefixes if self.pool is not None and stop_at_prefixes is None else stop_at_prefixes
        self.state, outputs = _run(self.params, self.state, self.eos_ids, np.int32(max_steps),
                                   np.int32(stop_at_active), np.int32(prefixes or 0), sampler=self.sampler,
                                   logprobs=self.logprobs, **self._static())
        self.rounds += 1
        return Round(self, outputs, self.size)

    def shrink(self, keep: Sequence[int], slots: int) -> None:
        """Moves the rows in slots `keep` to slots 0, 1, ... of `slots` (fewer) slots, the others idle.

        For the end of a job, when no prompt waits: its last rows then decode in steps that cost less.
        A row's tokens are the same wherever it decodes.
        """
        if not len(keep) <= slots <= self.size:
            raise ValueError(f"cannot move {len(keep)} rows of {self.size} slots to {slots} slots")
        index = np.zeros(slots, np.int32)
        index[:len(keep)] = keep
        self._wait_ahead("gather", self.size, slots)
        self.state = _gather(self.state, index, np.arange(slots) < len(keep), mesh=self.mesh, rules=self.rules)
        self.size = slots

    def rows(self, slot_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, logprobs, lengths) of the rows in `slot_ids`, as host arrays (logprobs [n, 0] when the
        slots do not record them)."""
        state = _replicated((self.state.tokens, self.state.logprobs, self.state.steps), mesh=self.mesh)
        index = np.asarray(slot_ids, np.int64)
        return tuple(np.asarray(x.addressable_data(0))[index] for x in state)


@dataclasses.dataclass
class SlotPrograms(SlotLayout):
    """The decode slots' programs, lowered for given shapes without running anything: `params` may be arrays
    or sharded `jax.ShapeDtypeStruct`s, so the same programs lower for the job's devices (compiled ahead) or
    for devices that are not attached (the compile job's TPU slices)."""

    params: Any
    graphdef: GraphKey

    def state_shapes(self, slots: int) -> SlotState:
        """The state of `slots` slots as a real one is laid out, shardings included: a program compiled
        ahead for other input shardings than the call's would not be the one the call runs."""
        empty = _empty_state.lower(self.params, slots=slots, length=self.length, max_new=self.max_new_tokens,
                                   logprobs=self.logprobs, pool=self.pool, **self._static()).compile()
        return jax.tree.map(lambda info, sharding: jax.ShapeDtypeStruct(info.shape, info.dtype, sharding=sharding),
                            empty.out_info, empty.output_shardings)

    def lower_run(self, slots: int) -> jax.stages.Lowered:
        """A round of decode steps over `slots` slots."""
        return _run.lower(self.params, self.state_shapes(slots), self.eos_ids, np.int32(0), np.int32(0), np.int32(0),
                          sampler=self.sampler, logprobs=self.logprobs, **self._static())

    def lower_gather(self, slots: int, smaller: int) -> jax.stages.Lowered:
        """The tail's shrink from `slots` slots to `smaller`."""
        rows = lambda dtype: jax.ShapeDtypeStruct((smaller,), dtype)
        return _gather.lower(self.state_shapes(slots), rows(jnp.int32), rows(jnp.bool_), mesh=self.mesh,
                             rules=self.rules)

    def lower_insert(self, shape: InsertShape, slots: int) -> jax.stages.Lowered:
        """A prefill of `shape` into `slots` slots."""
        ints = lambda *dims: jax.ShapeDtypeStruct(dims, jnp.int32)
        n = shape.rows * shape.copies
        seeds = RowSeeds(jax.ShapeDtypeStruct((n,), jnp.uint32), ints(n), ints(n))
        places = None if self.pool is None else PoolPlaces(ints(shape.prefixes), ints(n))
        return _insert.lower(self.params, self.state_shapes(slots), ints(shape.prefixes, shape.prefix_width),
                             ints(shape.prefixes, shape.prefix_width), ints(shape.rows, shape.width),
                             ints(shape.rows, shape.width), ints(shape.rows), ints(n), seeds, places,
                             prompt_width=self.prompt_width, copies=shape.copies, **self._static())


def _mesh_context(mesh: Mesh | None, rules) -> Any:
    return activation_sharding(mesh, rules) if mesh is not None else contextlib.nullcontext()


def _placed(state: SlotState, mesh: Mesh | None, rules) -> SlotState:
    """The state laid out on the mesh: rows over the data axes, the caches' heads as the model's."""
    if mesh is None:
        return state
    rows = logical_to_spec(("batch",), rules or ())[0]
    cache_spec = logical_to_spec(CACHE_AXES, rules or ())

    def place(x, spec=None):
        if spec is None and x.ndim == len(CACHE_AXES):
            spec = cache_spec
        elif spec is None:
            spec = PartitionSpec(rows, *(None,) * (x.ndim - 1)) if x.ndim else PartitionSpec()
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    pool = state.cache.prefix
    state = jax.tree.map(place, state._replace(cache=state.cache.replace(prefix=None)))
    if pool is not None:  # every data shard reads the whole pool (its rows' prefixes are anywhere in it)
        pool_spec = logical_to_spec(POOL_AXES, rules or ())
        pool = pool.replace(key=tuple(place(x, pool_spec) for x in pool.key),
                            value=tuple(place(x, pool_spec) for x in pool.value), mask=place(pool.mask, PartitionSpec()),
                            row=place(pool.row), member=place(pool.member))
    return state._replace(cache=state.cache.replace(prefix=pool))


def _replicated(arrays, *, mesh: Mesh | None):
    """`arrays` as every process can read them: one full copy on each device (a copy, never donated)."""
    if mesh is None:
        return arrays
    return _replicate(arrays, mesh=mesh)


@functools.partial(jax.jit, static_argnames=("mesh",))
def _replicate(arrays, *, mesh: Mesh):
    return jax.lax.with_sharding_constraint(arrays, NamedSharding(mesh, PartitionSpec()))


@functools.partial(jax.jit, static_argnames=("graphdef", "slots", "length", "max_new", "logprobs", "pool", "pad_id",
                                             "mesh", "rules"))
def _empty_state(params, *, graphdef, slots, length, max_new, logprobs, pool, pad_id, mesh, rules) -> SlotState:
    """Slots holding no row, made on the mesh (where it spans processes, no process holds it all)."""
    with _mesh_context(mesh, rules):
        model = graphdef.merge(params)
        cache = model.init_cache(slots, length)
        cache = cache.replace(index=jnp.full((slots,), length, jnp.int32))  # past the cache: no live row
        if pool is not None:
            shared = model.init_cache(pool.prefixes, pool.width)
            cache = cache.replace(prefix=PrefixPool(
                shared.key, shared.value, jnp.zeros((pool.prefixes, pool.width), jnp.int32),
                jnp.full((slots,), pool.prefixes, jnp.int32), jnp.zeros((slots,), jnp.int32), pool.members))
        zeros = lambda *shape: jnp.zeros(shape, jnp.int32)
        return _placed(SlotState(cache, zeros(slots, length), zeros(slots), row_keys(*(zeros(slots),) * 3),
                                 zeros(slots), jnp.zeros((slots,), bool), jnp.full((slots, max_new), pad_id, jnp.int32),
                                 jnp.zeros((slots, max_new if logprobs else 0), jnp.float32)), mesh, rules)


@functools.partial(StoredProgram, static_argnames=("mesh", "rules"))
def _gather(state: SlotState, index: jax.Array, live: jax.Array, *, mesh, rules) -> SlotState:
    """Rows `index` of every slot array; rows where `live` is False hold no row."""
    with _mesh_context(mesh, rules):
        pool = state.cache.prefix
        state = jax.tree.map(lambda x: x[index] if x.ndim else x, state._replace(cache=state.cache.replace(prefix=None)))
        cache = state.cache.replace(index=jnp.where(live, state.cache.index, state.mask.shape[1]))
        if pool is not None:
            cache = cache.replace(prefix=pool.replace(row=jnp.where(live, pool.row[index], pool.prefixes),
                                                      member=pool.member[index]))
        return _placed(state._replace(cache=cache, active=state.active & live), mesh, rules)


@functools.partial(StoredProgram, donate_argnums=(1,),
                   static_argnames=("graphdef", "prompt_width", "copies", "pad_id", "mesh", "rules"))
def _insert(params, state: SlotState, prefix_ids, prefix_mask, ids, mask, parent, slot_ids, seeds: RowSeeds,
            places: PoolPlaces | None, *, graphdef, prompt_width, copies, pad_id, mesh, rules) -> SlotState:
    """Prefill the prefixes, then each row's own tokens but its last after its prefix, into caches of
    their own widths; then scatter the rows into their slots, less any leading (padding) columns that
    go past the slots' prompt width; pooled slots take each prefix once into its pool slot and the rows'
    own columns only.

    The prefills' logits are unused, so XLA drops them: no [rows, width, vocab] array is built.
    """
    with _mesh_context(mesh, rules):
        (k, wp), (m, ws) = prefix_ids.shape, ids.shape
        model = graphdef.merge(params)
        drop = dict(mode="drop")  # slot ids past the last slot are padding rows
        row_mask = jnp.concatenate([prefix_mask[parent], mask], axis=1)  # [m, wp + ws]
        prefixes = model(prefix_ids, prefix_mask, cache=model.init_cache(k, wp))[1] if wp else None
        rows = None  # the rows' keys and values for their first wp + ws - 1 tokens
        if wp:
            rows = KVCache(tuple(x[parent] for x in prefixes.key), tuple(x[parent] for x in prefixes.value),
                           prefixes.index)
        if ws > 1:
            cache = model.init_cache(m, wp + ws - 1)
            if rows is not None:
                fill = lambda buf, x: buf.at[:, :, :wp].set(x)
                cache = KVCache(tuple(map(fill, cache.key, rows.key)), tuple(map(fill, cache.value, rows.value)),
                                jnp.int32(wp))
            _, rows = model(ids[:, :-1], row_mask[:, :-1], cache=cache)
        if places is None:
            cache, row_mask = _put_rows(state.cache, rows, row_mask, slot_ids, prompt_width, copies,
                                        state.mask.shape[1])
        else:
            cache, row_mask = _put_pooled(state.cache, prefixes, prefix_mask, rows, mask, parent, slot_ids, places,
                                          prompt_width, copies, state.mask.shape[1])
        cache = cache.replace(index=cache.index.at[slot_ids].set(prompt_width - 1, **drop))
        rep = lambda x: jnp.repeat(x, copies, axis=0)
        n, logged = state.tokens.shape[1], state.logprobs.shape[1]
        return _placed(SlotState(
            cache, state.mask.at[slot_ids].set(rep(row_mask), **drop),
            state.token.at[slot_ids].set(rep(ids[:, -1]), **drop),
            state.keys.at[slot_ids].set(row_keys(*seeds), **drop),
            state.steps.at[slot_ids].set(0, **drop), state.active.at[slot_ids].set(True, **drop),
            state.tokens.at[slot_ids].set(jnp.full((m * copies, n), pad_id, jnp.int32), **drop),
            state.logprobs.at[slot_ids].set(jnp.zeros((m * copies, logged), jnp.float32), **drop)), mesh, rules)


def _put_rows(cache: KVCache, rows: KVCache | None, row_mask, slot_ids, prompt_width: int, copies: int,
              length: int) -> tuple[KVCache, jax.Array]:
    """Whole rows (prefix and own columns) into their slots; (the cache, the rows' masks [m, length])."""
    m, width = row_mask.shape
    clip = max(0, width - prompt_width)  # leading columns past the slot's prompt width: padding only
    if rows is not None:
        first = prompt_width - width + clip
        put = lambda buf, x: buf.at[slot_ids, :, first:first + width - 1 - clip].set(
            jnp.repeat(x[:, :, clip:], copies, axis=0).astype(buf.dtype), mode="drop")
        cache = cache.replace(key=tuple(map(put, cache.key, rows.key)), value=tuple(map(put, cache.value, rows.value)))
    return cache, jnp.concatenate([jnp.zeros((m, prompt_width - width + clip), jnp.int32), row_mask[:, clip:],
                                   jnp.ones((m, length - prompt_width), jnp.int32)], axis=1)


def _put_pooled(cache: KVCache, prefixes: KVCache | None, prefix_mask, rows: KVCache | None, mask, parent, slot_ids,
                places: PoolPlaces, prompt_width: int, copies: int, length: int) -> tuple[KVCache, jax.Array]:
    """Each prefix into its pool slot (right-aligned), each row's own columns into its slot, and the rows'
    places in the pool; (the cache, the rows' own masks [m, length])."""
    pool = cache.prefix
    (k, wp), (m, ws) = prefix_mask.shape, mask.shape
    drop = dict(mode="drop")
    if wp:
        put = lambda buf, x: buf.at[places.prefix_slots, :, pool.width - wp:].set(x.astype(buf.dtype), **drop)
        pool = pool.replace(key=tuple(map(put, pool.key, prefixes.key)),
                            value=tuple(map(put, pool.value, prefixes.value)))
    pool = pool.replace(
        mask=pool.mask.at[places.prefix_slots].set(
            jnp.concatenate([jnp.zeros((k, pool.width - wp), jnp.int32), prefix_mask], axis=1), **drop),
        row=pool.row.at[slot_ids].set(jnp.repeat(places.prefix_slots[parent], copies), **drop),
        member=pool.member.at[slot_ids].set(places.members, **drop))
    if ws > 1:
        first = prompt_width - ws
        put = lambda buf, x: buf.at[slot_ids, :, first:prompt_width - 1].set(
            jnp.repeat(x[:, :, wp:], copies, axis=0).astype(buf.dtype), **drop)
        cache = cache.replace(key=tuple(map(put, cache.key, rows.key)), value=tuple(map(put, cache.value, rows.value)))
    return cache.replace(prefix=pool), jnp.concatenate(
        [jnp.zeros((m, prompt_width - ws), jnp.int32), mask, jnp.ones((m, length - prompt_width), jnp.int32)], axis=1)


@functools.partial(StoredProgram, donate_argnums=(1,),
                   static_argnames=("graphdef", "sampler", "logprobs", "pad_id", "mesh", "rules"))
def _run(params, state: SlotState, eos_ids, max_steps, stop_at_active, stop_at_prefixes, *, graphdef, sampler,
         logprobs, pad_id, mesh, rules):
    """(state, (steps run, kept tokens, *RowsView replicated)) after decoding every live row until `max_steps`
    steps, or until at most `stop_at_active` rows are live and (pooled slots) at most `stop_at_prefixes`
    prefixes have a live row."""
    del pad_id
    with _mesh_context(mesh, rules):
        slots, max_new = state.tokens.shape
        length = state.mask.shape[1]
        rows = jnp.arange(slots)

        def cond(carry):
            t, st, _ = carry
            return (t < max_steps) & ((jnp.sum(st.active) > stop_at_active)
                                      | (_live_prefixes(st) > stop_at_prefixes))

        def body(carry):
            t, st, kept = carry
            logits, cache = graphdef.merge(params)(st.token[:, None], st.mask, cache=st.cache)
            logits = logits[:, -1]
            token = sampler(logits, jax.vmap(jax.random.fold_in)(st.keys, st.steps))
            live = st.active
            column = jnp.where(live, st.steps, max_new)  # past the end: the write is dropped
            tokens = st.tokens.at[rows, column].set(token, mode="drop")
            logged = st.logprobs
            if logprobs:
                logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
                logged = logged.at[rows, column].set(logprob, mode="drop")
            steps = st.steps + live.astype(jnp.int32)
            going = live & ~jnp.isin(token, eos_ids) & (steps < max_new)
            # A row that ended (or was never live) sits at column `length`, past the cache (module docstring).
            cache = cache.replace(index=jnp.where(going, st.cache.index + 1, length))
            if cache.prefix is not None:  # an ended row leaves its place among its prefix's rows
                cache = cache.replace(prefix=cache.prefix.replace(
                    row=jnp.where(going, cache.prefix.row, cache.prefix.prefixes)))
            new = SlotState(cache, st.mask, jnp.where(going, token, st.token), st.keys, steps, going, tokens, logged)
            return t + 1, _placed(new, mesh, rules), kept + jnp.sum(live)

        t, state, kept = jax.lax.while_loop(cond, body, (jnp.int32(0), state, jnp.int32(0)))
        state = _placed(state, mesh, rules)  # as every program leaves it: one layout, one compiled program each
        view = (t, kept, state.active, state.steps, state.tokens, state.logprobs)
        if mesh is not None:
            view = jax.lax.with_sharding_constraint(view, NamedSharding(mesh, PartitionSpec()))
        else:  # outputs of their own: the state is donated to the next round while the host reads these
            view = jax.tree.map(jnp.copy, view)
        return state, view


def _live_prefixes(state: SlotState) -> jax.Array:
    """Pool slots that hold a live row's prefix (0 without a pool)."""
    pool = state.cache.prefix
    if pool is None:
        return jnp.int32(0)
    held = jnp.zeros((pool.prefixes,), bool).at[pool.row].max(state.active, mode="drop")
    return jnp.sum(held).astype(jnp.int32)
