"""Generation memory per chip for the compile job: what the augment job's decode engine holds, from shapes.

The augment job loads the teacher once (listed, unscanned layers; no optimizer state, no master copy)
and decodes `slots` rows against one KV cache of `prompt + max_new_tokens - 1` positions. Per chip that
is the teacher's weights in the compute dtype (`config.model.dtype`: bfloat16 for the BLOOM sizes),
sharded by the mesh's logical-axis rules, plus one key and one value buffer per layer
[slots, heads, length, head_dim] sharded as ("batch", "heads", "length", "kv"), plus one step's float32
logits [slots, vocab]. With a prefix pool (`prefix_tokens` of each prompt shared by units of
`rows_per_prefix` rows, as the engine's `prefix_pool` keeps TeacherLM's kinds of a record) a row's cache
holds only its own `prompt - prefix + max_new_tokens - 1` positions and the pool
`slots.pool_prefixes(...)` prefixes of `prefix_tokens`, sharded as POOL_AXES (whole on every data
shard). `max_slots` per chip size: the most slots that fit. Everything here is arithmetic on shapes, so it works on an `AbstractMesh` (any
mesh, no devices) as well as on the job's mesh; `decode_step_memory` also compiles one decode step for
the job's (fake) devices as a cross-check against XLA's memory analysis.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AbstractMesh, Mesh, NamedSharding

from teacherlm_jax.compile.topology import CHIPS as TPU_CHIPS
from teacherlm_jax.generation.slots import CACHE_AXES, POOL_AXES, pool_prefixes
from teacherlm_jax.errors import ConfigError
from teacherlm_jax.init_from import resolve
from teacherlm_jax.sharding import (
    LogicalRules, activation_sharding, batch_sharding, data_parallel_size, logical_to_spec, param_shardings,
    replicated,
)

# One step's logits (each layer's key/value buffer is sharded as the decode slots' CACHE_AXES).
LOGITS_AXES = ("batch", "vocab")
# Memory per chip (GiB) of the chips the augment job is sized for.
CHIPS: dict[str, float] = {name: TPU_CHIPS[name].hbm_gib for name in ("v5e", "v4")}
GIB = 2 ** 30


def generation_model(model: dict[str, Any]) -> dict[str, Any]:
    """`config.model` as the augment job holds it: listed layers, weights in the compute dtype, no remat."""
    return {**dict(model), "scan_layers": False, "param_dtype": model.get("dtype") or "float32",
            "remat_policy": "none"}


def shard_shape(shape: Sequence[int], names: Sequence[str | None], mesh: Mesh | AbstractMesh,
                rules: LogicalRules) -> tuple[int, ...]:
    """The largest per-device block of an array with logical axes `names` (a dimension the mesh does not
    divide rounds up: the engine pads rows to a multiple of the data-parallel size)."""
    spec = logical_to_spec(names, rules)
    parts = [math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ())) for axes in spec]
    return tuple(-(-size // p) for size, p in zip(shape, list(parts) + [1] * (len(shape) - len(parts))))


def _require_positive(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"config.{key}={value!r} must be an integer >= 1")
    return value


def generation_shapes(model: dict[str, Any], slots: int, prompt_tokens: int,
                      max_new_tokens: int) -> tuple[nnx.Module, Any]:
    """(abstract listed model, abstract KV cache) for `slots` rows of `prompt_tokens + max_new_tokens - 1`."""
    _require_positive("generation_batch_size", slots)
    _require_positive("generation_prompt_tokens", prompt_tokens)
    _require_positive("generation_max_new_tokens", max_new_tokens)
    abstract = resolve(generation_model(model), weights=False).abstract()  # shapes only: nothing downloaded
    limit = abstract.config.max_position_embeddings
    if prompt_tokens + max_new_tokens > limit:  # the augment job's own limit on prompts
        raise ConfigError(f"config.generation_prompt_tokens + generation_max_new_tokens = "
                          f"{prompt_tokens + max_new_tokens} exceeds config.model.max_position_embeddings={limit}")
    return abstract, jax.eval_shape(lambda: abstract.init_cache(slots, prompt_tokens + max_new_tokens - 1))


def generation_memory(model: dict[str, Any], mesh: Mesh | AbstractMesh, rules: LogicalRules, slots: int = 16,
                      prompt_tokens: int = 512, max_new_tokens: int = 512,
                      chips: dict[str, float] | None = None, prefix_tokens: int = 0,
                      rows_per_prefix: int = 3) -> dict[str, Any]:
    """Per-chip bytes of generation (weights, KV cache, with `prefix_tokens` its prefix pool, logits, total) and
    a verdict per chip size, with the most slots that fit it.

    `mesh` is a `Mesh` or an `AbstractMesh`; `chips` maps a name to its memory in GiB (default CHIPS).
    """
    abstract, cache = generation_shapes(model, slots, prompt_tokens, max_new_tokens)
    if not 0 <= prefix_tokens < prompt_tokens:
        raise ConfigError(f"config.generation_prefix_tokens={prefix_tokens} must lie in [0, "
                          f"generation_prompt_tokens={prompt_tokens})")
    _require_positive("generation_rows_per_prefix", rows_per_prefix)
    c = abstract.config
    params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    shards = jax.tree.map(lambda p, s: math.prod(s.shard_shape(p.shape)) * p.dtype.itemsize, params,
                          param_shardings(abstract, mesh, rules))
    weights = sum(jax.tree.leaves(shards))
    buffers = [x for x in jax.tree.leaves(cache) if x.ndim == len(CACHE_AXES)]
    length = prompt_tokens - prefix_tokens + max_new_tokens - 1  # a row's own positions
    _, heads, _, head_dim = buffers[0].shape
    itemsize = buffers[0].dtype.itemsize

    def per_chip(rows: int) -> dict[str, int]:
        kv = len(buffers) * math.prod(shard_shape((rows, heads, length, head_dim), CACHE_AXES, mesh, rules)) * itemsize
        pool = {}
        if prefix_tokens:
            shape = (pool_prefixes(rows, rows_per_prefix, rows), heads, prefix_tokens, head_dim)
            pool = {"prefix_pool": len(buffers) * math.prod(shard_shape(shape, POOL_AXES, mesh, rules)) * itemsize}
        logits = math.prod(shard_shape((rows, c.vocab_size), LOGITS_AXES, mesh, rules)) * 4
        return {"weights": weights, "kv_cache": kv, **pool, "logits": logits,
                "total": weights + kv + sum(pool.values()) + logits}

    memory = per_chip(slots)
    total = memory["total"]
    verdicts = {name: {"memory_gib": gib, "fits": total <= gib * GIB, "headroom_bytes": int(gib * GIB) - total,
                       "max_slots": _max_slots(lambda n: per_chip(n)["total"] <= gib * GIB,
                                               data_parallel_size(mesh, rules))}
                for name, gib in (CHIPS if chips is None else chips).items()}
    return {
        "dtype": c.dtype,
        "num_params": sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
        "slots": slots,
        "slots_per_chip": -(-slots // data_parallel_size(mesh, rules)),
        "prompt_tokens": prompt_tokens,
        "max_new_tokens": max_new_tokens,
        "cache_length": length,
        "prefix_tokens": prefix_tokens,
        "rows_per_prefix": rows_per_prefix if prefix_tokens else 1,
        "prefix_pool": pool_prefixes(slots, rows_per_prefix, slots) if prefix_tokens else 0,
        "kv_buffer_shape": [slots, heads, length, head_dim],
        "kv_buffer_shape_per_chip": list(shard_shape((slots, heads, length, head_dim), CACHE_AXES, mesh, rules)),
        "kv_buffers": len(buffers),
        "bytes_per_chip": memory,
        "chips": verdicts,
    }


def _max_slots(fits, step: int) -> int:
    """The most slots, a multiple of `step` (the data-parallel size), for which `fits(slots)` (0: none fit)."""
    if not fits(step):
        return 0
    low, high = step, 2 * step
    while fits(high):
        low, high = high, 2 * high
    while high - low > step:  # fits(low), not fits(high)
        middle = (low + high) // 2 // step * step
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def decode_step_memory(model: dict[str, Any], mesh: Mesh, rules: LogicalRules, slots: int, prompt_tokens: int,
                       max_new_tokens: int) -> dict[str, Any]:
    """XLA's memory analysis of one decode step (one token per row, the cache donated and updated in
    place), compiled for `mesh`'s devices without allocating: a cross-check of `generation_memory`."""
    abstract, _ = generation_shapes(model, slots, prompt_tokens, max_new_tokens)
    rows = -(-slots // data_parallel_size(mesh, rules)) * data_parallel_size(mesh, rules)  # the engine's padding
    length = prompt_tokens + max_new_tokens - 1
    graphdef, _ = nnx.split(abstract, nnx.Param)
    params = jax.tree.map(lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s),
                          nnx.to_pure_dict(nnx.state(abstract, nnx.Param)), param_shardings(abstract, mesh, rules))
    kv_sharding = NamedSharding(mesh, logical_to_spec(CACHE_AXES, rules))
    cache = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=kv_sharding if x.ndim == len(CACHE_AXES) else replicated(mesh)),
        jax.eval_shape(lambda: abstract.init_cache(rows, length)))
    token = jax.ShapeDtypeStruct((rows, 1), jnp.int32, sharding=batch_sharding(mesh, rules))
    mask = jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=batch_sharding(mesh, rules))
    logits_sharding = NamedSharding(mesh, logical_to_spec(LOGITS_AXES, rules))

    def step(params, cache, token, mask):
        with activation_sharding(mesh, rules):
            logits, cache = nnx.merge(graphdef, params)(token, mask, cache=cache)
        return logits[:, -1], cache

    jitted = jax.jit(step, donate_argnums=1,
                     out_shardings=(logits_sharding, jax.tree.map(lambda x: x.sharding, cache)))
    start = time.perf_counter()
    compiled = jitted.lower(params, cache, token, mask).compile()
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    if stats is None:
        raise RuntimeError(f"{jax.devices()[0].platform} gives no memory analysis of compiled programs")
    inputs = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                 for x in jax.tree.leaves((token, mask, [x for x in jax.tree.leaves(cache) if x.ndim == 0])))
    arguments, outputs = stats.argument_size_in_bytes, stats.output_size_in_bytes
    aliased, temp, code = stats.alias_size_in_bytes, stats.temp_size_in_bytes, stats.generated_code_size_in_bytes
    return {"compile_seconds": round(seconds, 2), "inputs": inputs, "arguments": arguments, "outputs": outputs,
            "aliased": aliased, "temp": temp, "generated_code": code,
            "peak": arguments + outputs - aliased + temp + code}
