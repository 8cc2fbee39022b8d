"""The KV cache: per-layer keys and values, a pool of shared prefixes stored once, and a step's cache write."""
from __future__ import annotations

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct
from jax import export

from teacherlm_jax.sharding import target_platform


@struct.dataclass
class KVCache:
    """Keys and values, one `[batch, heads, max_length, head_dim]` array per layer.

    One buffer per layer (not one stacked array), so that a decode step updates each layer's cache in
    place: slicing a layer out of a stacked cache and stacking it back made XLA CPU copy the whole
    cache several times per step. Heads before positions, so that attention's batched dots read
    contiguous [length, head_dim] tiles (the [length, heads] order made XLA CPU's decode step many times
    slower at hundreds of slots: benchmarks/engine_overhead.py).

    `index` is the slot the next token is written to: a scalar shared by all rows (left padding keeps
    prompts aligned on the right), or one per row [batch] (the decode slots of
    `teacherlm_jax.generation.slots`, where each row is at its own step).
    """

    key: tuple[jax.Array, ...]
    value: tuple[jax.Array, ...]
    index: jax.Array
    prefix: PrefixPool | None = None  # rows whose leading keys live once in a pool (decode steps only)

    @classmethod
    def zeros(cls, num_layers: int, batch: int, max_length: int, num_heads: int, head_dim: int, dtype) -> KVCache:
        shape = (batch, num_heads, max_length, head_dim)
        return cls(tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
                   tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)), jnp.zeros((), jnp.int32))

    @property
    def max_length(self) -> int:
        return self.key[0].shape[2]


@struct.dataclass
class PrefixPool:
    """Shared prefixes stored once: a row's keys are its prefix's (here) followed by its own (the KVCache's rows).

    key, value: one `[prefixes, heads, width, head_dim]` array per layer, a prefix right-aligned in its pool
    slot; mask: int32 [prefixes, width], 1 on a prefix's tokens. `row` [batch] is each cache row's pool
    slot (`prefixes`: none), `member` [batch] its place among that prefix's rows, below `members`: a decode
    step attends the queries of a prefix's rows, laid out [prefixes, members], to its keys in one read
    (`attend_with_prefix`). Two live rows never share a (row, member) pair.
    """

    key: tuple[jax.Array, ...]
    value: tuple[jax.Array, ...]
    mask: jax.Array
    row: jax.Array
    member: jax.Array
    members: int = struct.field(pytree_node=False)

    @property
    def prefixes(self) -> int:
        return self.mask.shape[0]

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def lengths(self) -> jax.Array:
        """Tokens in each cache row's prefix, [batch] int32 (0 for a row without one): where its own
        positions (ALiBi's, OPT's) start."""
        return self.mask.sum(axis=1).at[self.row].get(mode="fill", fill_value=0)

    def layer(self, i: int) -> tuple[jax.Array, jax.Array]:
        return self.key[i], self.value[i]


# Caches are outputs of programs serialized with `jax.export` (`generation.program_store`): their trees must be too.
for _node in (KVCache, PrefixPool):
    export.register_pytree_node_serialization(
        _node, serialized_name=f"teacherlm_jax.{_node.__name__}",
        serialize_auxdata=lambda aux: json.dumps(list(aux)).encode(), deserialize_auxdata=lambda data: tuple(json.loads(data)))


class SharedPrefix(NamedTuple):
    """What one layer's decode step reads from a `PrefixPool`: its keys and values, which of them each prefix
    attends to (`allowed` bool [prefixes, 1, 1, width]) with what bias ([prefixes, heads, 1, width] or None),
    and the rows' places (`PrefixPool.row`, `.member`, `.members`)."""

    key: jax.Array
    value: jax.Array
    allowed: jax.Array
    bias: jax.Array | None
    row: jax.Array
    member: jax.Array
    members: int

    @staticmethod
    def of(pool: PrefixPool, bias: jax.Array | None, layer: tuple[jax.Array, jax.Array]) -> SharedPrefix:
        allowed = (pool.mask > 0)[:, None, None, :]
        return SharedPrefix(*layer, allowed, bias, pool.row, pool.member, pool.members)


def keys_values(k: jax.Array, v: jax.Array, cache_k: jax.Array | None, cache_v: jax.Array | None,
                index: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None, jax.Array | None]:
    """(keys, values) to attend over, [batch, heads, length, hd], and the layer's updated cache.

    k, v: this step's, [batch, q_len, heads, hd]. Without a cache they are all there is; with one they
    are written at slot `index` and the whole cache is attended over. One index per row (decode slots) is
    written by `write_rows`, which clamps an index past the cache to its last column (see
    `teacherlm_jax.generation.slots` for why that is harmless for a decode slot without a live row).
    """
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    if cache_k is None:
        return k, v, None, None
    if jnp.ndim(index) == 0:
        start = (0, 0, index, 0)
        cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start)
        cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
    else:
        cache_k = write_rows(cache_k, k.astype(cache_k.dtype), index)
        cache_v = write_rows(cache_v, v.astype(cache_v.dtype), index)
    return cache_k, cache_v, cache_k, cache_v


def write_rows(cache: jax.Array, x: jax.Array, index: jax.Array) -> jax.Array:
    """`cache` [batch, heads, length, hd] with each row's `x` [batch, heads, q_len, hd] written from its own
    column `index` [batch] (clamped into the cache).

    A batched dynamic_update_slice writes in place, which XLA CPU does with it (a scatter made the decode step
    slower). XLA's TPU compiler lowers it to a loop over the rows that carries the whole cache, and the loop
    keeps the cache's read out of the attention's fusion: the decode step then moves many times the cache's
    bytes (docs/scaling.md, from `benchmarks/tpu_compile.py`'s compiles). For a step's one new column a TPU
    program therefore selects it into the cache: one pass over the cache, fused with the attention that reads it.
    """
    if x.shape[2] == 1 and target_platform() == "tpu":
        column = jnp.arange(cache.shape[2]) == jnp.clip(index, 0, cache.shape[2] - 1)[:, None]
        return jnp.where(column[:, None, :, None], x, cache)
    return jax.vmap(lambda c, u, i: jax.lax.dynamic_update_slice(c, u, (0, i, 0)))(cache, x, index)
