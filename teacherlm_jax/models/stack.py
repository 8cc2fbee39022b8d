"""A decoder's stack of blocks: scanned (one compiled block, optionally rematerialised) or listed, and the
listed per-layer blocks a decode loop runs."""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from teacherlm_jax.models.kv_cache import KVCache

REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,  # no rematerialisation
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class ScanSpec:
    """How a decoder runs its stack of blocks."""

    scan_layers: bool = True
    remat_policy: str = "none"

    def __post_init__(self):
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy={self.remat_policy!r}; expected one of {sorted(REMAT_POLICIES)}")


def make_block_stack(make_block: Callable[[nnx.Rngs], nnx.Module], num_layers: int, scan_layers: bool,
                     rngs: nnx.Rngs):
    """Blocks either stacked on a leading `layers` axis (for lax.scan) or as a list."""
    if not scan_layers:
        return nnx.List([make_block(rngs) for _ in range(num_layers)])

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def stacked(layer_rngs):
        return make_block(layer_rngs)

    return stacked(rngs)


def run_block_stack(blocks, x: jax.Array, layer_fn: Callable, cache: KVCache | None, spec: ScanSpec):
    """Runs `layer_fn(block, x, cache_k, cache_v) -> (x, cache_k, cache_v)` over all blocks; with a cache
    holding a `PrefixPool`, `layer_fn(block, x, cache_k, cache_v, (pool_k, pool_v))` (listed stacks only: the
    decode layout).

    Scanned stacks go through one `lax.scan` (one compiled block, whatever the depth), optionally
    rematerialised, with the layers' caches stacked for it (a copy: fine for a prefill, too slow for a
    decode loop, which runs the decode layout's listed blocks: `CausalLM.for_decoding`); listed stacks loop
    in Python. Both give the same numbers.
    """
    policy = REMAT_POLICIES[spec.remat_policy]
    if spec.scan_layers:
        graphdef, state = nnx.split(blocks)

        def body(h, layer):
            block_state, ck, cv = layer
            h, ck, cv = layer_fn(nnx.merge(graphdef, block_state), h, ck, cv)
            return h, (ck, cv)

        if policy is not None:
            body = jax.checkpoint(body, policy=policy, prevent_cse=False)
        if cache is None:
            return jax.lax.scan(body, x, (state, None, None))[0], None
        if cache.prefix is not None:
            raise ValueError("a cache with a prefix pool needs the decode layout (listed layers: `for_decoding`)")
        x, (new_k, new_v) = jax.lax.scan(body, x, (state, jnp.stack(cache.key), jnp.stack(cache.value)))
        return x, cache.replace(key=tuple(new_k), value=tuple(new_v))
    fn = layer_fn if policy is None else nnx.remat(layer_fn, policy=policy)
    new_k, new_v = [], []
    for i, block in enumerate(blocks):
        if cache is None:
            x, ck, cv = fn(block, x, None, None)
        elif cache.prefix is None:
            x, ck, cv = fn(block, x, cache.key[i], cache.value[i])
        else:
            x, ck, cv = fn(block, x, cache.key[i], cache.value[i], cache.prefix.layer(i))
        new_k.append(ck)
        new_v.append(cv)
    return x, None if cache is None else cache.replace(key=tuple(new_k), value=tuple(new_v))


def decoding_blocks(blocks, scanned: bool) -> nnx.List:
    """A block stack as a list of per-layer blocks, made once before a decode loop: XLA copies a slice
    of stacked weights every step. A scanned stack's layer i takes slice i of every parameter (a copy of
    the blocks' weights, made outside the decode program so that its arrays reach it as arguments); a
    listed stack's blocks share their weights.
    """
    if not scanned:
        return nnx.List([nnx.merge(*nnx.split(block)) for block in blocks])
    graphdef, state = nnx.split(blocks)
    num_layers = jax.tree.leaves(state)[0].shape[0]
    layout = nnx.graphdef(nnx.eval_shape(lambda s: _decoding_layer(s, jnp.int32(0), graphdef), state))
    return nnx.List([nnx.merge(layout, _decoding_layer_state(state, jnp.int32(i), graphdef=graphdef))
                     for i in range(num_layers)])


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _decoding_layer_state(state: nnx.State, index: jax.Array, *, graphdef: nnx.GraphDef) -> nnx.State:
    return nnx.state(_decoding_layer(state, index, graphdef))


def _decoding_layer(state: nnx.State, index: jax.Array, graphdef: nnx.GraphDef) -> nnx.Module:
    """Block `index` of a stacked block's state."""
    state = jax.tree.map(lambda v: _layer_slice(v, index), state, is_leaf=lambda v: isinstance(v, nnx.Variable))
    return nnx.merge(graphdef, state)


def _layer_slice(variable: nnx.Variable, index: jax.Array) -> nnx.Variable:
    """Layer `index` of a stacked variable, its logical axis names without the leading `layers`."""
    names = variable.get_metadata().get("out_sharding")
    return type(variable)(jax.lax.dynamic_index_in_dim(variable[...], index, keepdims=False),
                          out_sharding=None if names is None else tuple(names[1:]))
