"""Building blocks shared by the decoders: named parameters, LayerNorm, Linear, attention core, KV cache.

Every parameter carries logical axis names (`out_sharding` metadata) so that sharding is decided by
rules in `teacherlm_jax.sharding`, never inside a model.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx, struct

from teacherlm_jax.sharding import constrain

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,  # no rematerialisation
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def resolve_dtype(dtype: str | jnp.dtype) -> jnp.dtype:
    """Accepts 'float32'/'bfloat16' (config files) or a jnp dtype."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
        return DTYPES[dtype]
    return jnp.dtype(dtype)


def named_param(
    rngs: nnx.Rngs, init: Callable, shape: Sequence[int], names: Sequence[str | None], param_dtype
) -> nnx.Param:
    """A parameter with its logical axis names attached."""
    if len(shape) != len(names):
        raise ValueError(f"shape {tuple(shape)} and axis names {tuple(names)} differ in rank")
    return nnx.Param(init(rngs.params(), tuple(shape), param_dtype), out_sharding=tuple(names))


class LayerNorm(nnx.Module):
    """LayerNorm computed in float32 and cast back, as torch does for half-precision inputs."""

    def __init__(self, dim: int, eps: float, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.dtype = dtype
        self.weight = named_param(rngs, nnx.initializers.ones, (dim,), ("embed",), param_dtype)
        self.bias = named_param(rngs, nnx.initializers.zeros, (dim,), ("embed",), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class Linear(nnx.Module):
    """y = x . W + b, contracting the last `len(in_shape)` axes of x; W is [*in_shape, *out_shape]."""

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        names: Sequence[str | None],
        *,
        use_bias: bool = True,
        init_std: float = 0.02,
        dtype,
        param_dtype,
        rngs: nnx.Rngs,
    ):
        self.in_rank = len(in_shape)
        self.dtype = dtype
        self.kernel = named_param(
            rngs, nnx.initializers.normal(init_std), (*in_shape, *out_shape), names, param_dtype
        )
        self.bias = (
            named_param(rngs, nnx.initializers.zeros, tuple(out_shape), names[self.in_rank:], param_dtype)
            if use_bias else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(self.dtype)
        x = x.astype(self.dtype)
        n = self.in_rank
        y = jax.lax.dot_general(x, kernel, ((tuple(range(x.ndim - n, x.ndim)), tuple(range(n))), ((), ())))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


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
    are written at slot `index` and the whole cache is attended over. One index per row is a batched
    dynamic_update_slice (XLA CPU runs it in place; a scatter made the decode step slower), which
    clamps an index past the cache to its last column (see `teacherlm_jax.generation.slots` for why that is
    harmless for a decode slot without a live row).
    """
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    if cache_k is None:
        return k, v, None, None
    if jnp.ndim(index) == 0:
        start = (0, 0, index, 0)
        cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start)
        cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
    else:  # one slot per row (decode slots)
        write = jax.vmap(lambda c, x, i: jax.lax.dynamic_update_slice(c, x, (0, i, 0)))
        cache_k = write(cache_k, k.astype(cache_k.dtype), index)
        cache_v = write(cache_v, v.astype(cache_v.dtype), index)
    return cache_k, cache_v, cache_k, cache_v


# How `attend` computes attention (the models' `attention_impl` config key):
#   einsum  two einsums with the scores materialized; the reference (CPU, TPU, every decode step)
#   xla     jax.nn.dot_product_attention's XLA implementation: the same work, through the fused path's inputs
#   cudnn   cuDNN's flash attention (GPU, bfloat16/float16): no float32 scores or probabilities in memory; ALiBi
#           and the masks go in as one [b, h, q, k] bias in the compute dtype (the public API takes no slopes;
#           cuDNN's own ALiBi mask is reachable only through jax._src, and counts positions without padding)
#   auto    cudnn on a GPU in a half-precision dtype, else einsum.
# On TPU no fused kernel takes ALiBi: Pallas' splash attention takes masks, segment ids, sinks and a logit
# soft-cap but no additive bias; its older flash attention takes a whole [b, h, q, k] bias, as cuDNN here,
# but lives in jax.experimental (the project imports no experimental jax). So `auto` stays on einsum there.
ATTENTION_IMPLS = ("auto", "einsum", "xla", "cudnn")
HALF_DTYPES = (jnp.bfloat16, jnp.float16)


def check_attention_impl(impl: str, dtype: str | jnp.dtype) -> None:
    """Refuses what cannot run: an unknown name, cuDNN in a dtype its kernel lacks (float32)."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl={impl!r}; expected one of {list(ATTENTION_IMPLS)}")
    if impl == "cudnn" and resolve_dtype(dtype) not in HALF_DTYPES:
        raise ValueError(f"attention_impl='cudnn' needs dtype bfloat16 or float16 (cuDNN's flash attention has "
                         f"no float32 kernel); got dtype={jnp.dtype(resolve_dtype(dtype)).name}")


def attention_impl(impl: str, dtype, cached: bool) -> str:
    """The implementation a layer runs for config value `impl`. With a KV cache (prefill and decode steps)
    always einsum: decode steps are bound by reading the cache, not by the scores, and the cache's
    per-row slots (`keys_values`) give queries and keys different lengths, which the fused path does not take."""
    if cached:
        return "einsum"
    if impl == "auto":
        return "cudnn" if jax.default_backend() == "gpu" and jnp.dtype(dtype) in HALF_DTYPES else "einsum"
    return impl


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    allowed: jax.Array,
    bias: jax.Array | None,
    dtype,
    scale: float | None = None,
    impl: str = "einsum",
) -> jax.Array:
    """Softmax attention with scores and softmax in float32, probabilities cast back to `dtype`.

    q: [b, q, h, d]; k, v: [b, h, k, d]; allowed: bool [b, 1, q, k]; bias: [b, h, 1 or q, k] or None.
    `scale` multiplies the scores, 1/sqrt(head_dim) by default (1.0 for models that scale q themselves).
    `impl` (see ATTENTION_IMPLS; resolve 'auto' with `attention_impl`): einsum is the reference; xla and
    cudnn go through `jax.nn.dot_product_attention` (`fused_attend`).
    """
    if impl in ("xla", "cudnn"):
        return fused_attend(q, k, v, allowed, bias, dtype, scale, impl)
    if impl != "einsum":
        raise ValueError(f"attend: impl={impl!r}; expected einsum, xla or cudnn")
    if scale is None:
        scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
    scores = jnp.einsum("bqhd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        scores = scores + bias
    scores = constrain(scores, ("batch", "heads", "length", None))
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    return jnp.einsum("bhqk,bhkd->bqhd", probs, v.astype(dtype))


def attend_with_prefix(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array, bias: jax.Array | None,
                       shared: SharedPrefix, dtype, scale: float | None = None) -> jax.Array:
    """`attend` for one-token decode queries over two parts: their shared prefix (`shared`) then their own keys.

    Hydragen's split: the queries of a prefix's rows are laid out [prefixes, members] and attend to the pool in
    one batched matmul (each prefix read once a step, however many rows share it), each row's own keys as
    `attend` does; the parts' max, sum and weighted values are merged by log-sum-exp in float32. The biases
    must use one key position scale across both parts (ALiBi: positions counted over prefix then own
    columns), so that the merged softmax is the one over all the row's keys. A row without a prefix
    (`shared.row` past the pool) gets its own part only.
    """
    if q.shape[1] != 1:
        raise ValueError(f"attention over a shared prefix takes one query per row (decode steps); got {q.shape[1]}")
    if scale is None:
        scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
    own_top, own_sum, own_out = _softmax_parts(
        jnp.einsum("bqhd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale, bias, allowed, v,
        "bhqk,bhkd->bqhd", dtype)  # [b, h, 1, 1] twice, [b, 1, h, d]
    (prefixes, heads, _, head_dim), places = shared.key.shape, (shared.row, slice(None), shared.member)
    # Queries laid out [prefixes, heads, members, d]: heads before members (the [p, r, h, d] order made XLA CPU's
    # prefix part slower: benchmarks/engine_overhead.py --prefix-pool on).
    grouped = jnp.zeros((prefixes, heads, shared.members, head_dim), q.dtype).at[places].set(q[:, 0], mode="drop")
    top, total, out = _softmax_parts(
        jnp.einsum("phrd,phkd->phrk", grouped, shared.key, preferred_element_type=jnp.float32) * scale, shared.bias,
        shared.allowed, shared.value, "phrk,phkd->phrd", dtype)  # [p, h, r, 1] twice, [p, h, r, d]
    row_part = lambda x, fill: x.at[places].get(mode="fill", fill_value=fill)
    pre_top = row_part(top[..., 0], jnp.finfo(jnp.float32).min)  # [b, h]
    pre_sum = row_part(total[..., 0], 0.0)
    pre_out = row_part(out, 0.0)  # [b, h, d]
    own_top, own_sum, own_out = own_top[:, :, 0, 0], own_sum[:, :, 0, 0], own_out[:, 0]
    both = jnp.maximum(own_top, pre_top)
    own_w, pre_w = jnp.exp(own_top - both), jnp.exp(pre_top - both)
    merged = (own_out * own_w[..., None] + pre_out * pre_w[..., None]) / (own_sum * own_w + pre_sum * pre_w)[..., None]
    return merged[:, None].astype(dtype)


def _softmax_parts(scores: jax.Array, bias: jax.Array | None, allowed: jax.Array, v: jax.Array, spec: str, dtype):
    """(max, sum of exp(score - max), exp-weighted values in float32) of one part of a softmax over keys."""
    if bias is not None:
        scores = scores + bias
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    top = scores.max(axis=-1, keepdims=True)
    weights = jnp.exp(scores - top)
    out = jnp.einsum(spec, weights.astype(dtype), v.astype(dtype), preferred_element_type=jnp.float32)
    return top, weights.sum(axis=-1, keepdims=True), out


def fused_attend(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array, bias: jax.Array | None, dtype,
                 scale: float | None, impl: str) -> jax.Array:
    """`attend` through `jax.nn.dot_product_attention(implementation=impl)`, queries at the keys' slots (no cache).

    cuDNN takes the bias as [b, h, q, k] in the inputs' dtype. A per-key bias [b, h, 1, k] (ALiBi's
    slope * key position) is therefore shifted, row by row, by its value at the query's own slot:
    softmax does not change under a per-row constant, and the shifted bias, slope * (key - query
    position), is small where attention looks (nearby keys), so bfloat16 keeps it to ~3 digits where
    slope * position (up to 2047 * 0.7) would round to steps of 8. Both implementations get the same
    inputs, so the XLA one checks on CPU what cuDNN is given.
    """
    q_len, k_len = q.shape[1], k.shape[2]
    if q_len != k_len:
        raise ValueError(f"fused attention takes queries at the keys' slots (no cache); got {q_len} queries, "
                         f"{k_len} keys")
    if bias is not None and bias.shape[-2] == 1:
        bias = bias - jnp.swapaxes(bias, -1, -2)  # [b, h, q, k]: bias[key] - bias[query's own slot]
    if bias is not None:
        bias = constrain(bias.astype(dtype), ("batch", "heads", "length", None))
    k, v = (x.transpose(0, 2, 1, 3).astype(dtype) for x in (k, v))  # [b, k, h, d], as the kernel takes them
    scale = None if scale is None else float(scale)
    return jax.nn.dot_product_attention(q.astype(dtype), k, v, bias=bias, mask=allowed, scale=scale,
                                        implementation=impl)


def check_attention_mask(input_ids: jax.Array, attention_mask: jax.Array | None,
                         cache: KVCache | None) -> tuple[jax.Array, jax.Array]:
    """The attention mask (all ones when None) checked against the inputs, and the inputs' first slot.

    Without a cache the mask is [batch, length]; with one it covers all cache slots.
    """
    batch, length = input_ids.shape
    if attention_mask is None:
        attention_mask = jnp.ones((batch, length if cache is None else cache.max_length), jnp.int32)
    if cache is not None and attention_mask.shape != (batch, cache.max_length):
        raise ValueError(f"with a cache, attention_mask must be [batch={batch}, {cache.max_length} cache slots]; "
                         f"got shape {attention_mask.shape}")
    if cache is None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {attention_mask.shape} differs from input_ids {input_ids.shape}")
    return attention_mask, jnp.int32(0) if cache is None else cache.index


def query_slots(offset: jax.Array | int, q_len: int) -> jax.Array:
    """Key slots of the queries, [q_len] for a shared `offset`, [batch, q_len] for one offset per row."""
    return jnp.asarray(offset)[..., None] + jnp.arange(q_len)


def attention_allowed(attention_mask: jax.Array, q_len: int, offset: jax.Array | int,
                      segment_ids: jax.Array | None = None) -> jax.Array:
    """Causal and padding mask, bool [b, 1, q_len, k_len]; query i sits in key slot `offset + i`
    (`offset` a scalar, or one per row). With `segment_ids` (no cache), a query sees only its own segment."""
    k_len = attention_mask.shape[1]
    causal = jnp.arange(k_len) <= query_slots(offset, q_len)[..., None]  # [(b,) q, k]
    causal = causal[:, None] if causal.ndim == 3 else causal[None, None]
    allowed = causal & (attention_mask[:, None, None, :] > 0)
    if segment_ids is not None:
        allowed &= segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    return allowed


def token_positions(attention_mask: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """Each slot's position, [b, length] int32: the real tokens (mask > 0) before it, counted from the first
    slot or, with `segment_ids`, from its segment's first slot (-1 on padding before a row's first token).

    Segments are sequences packed into one row (`teacherlm_jax.eval.scoring`): counted this way each gets
    the positions it has alone, so ALiBi's biases and OPT's learned positions are those of the unpacked
    sequence. Without segments it is transformers' `cumsum(mask) - 1`.
    """
    real = (attention_mask > 0).astype(jnp.int32)
    count = jnp.cumsum(real, axis=1)
    if segment_ids is None:
        return count - 1
    first = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
                            axis=1)
    before = jax.lax.cummax(jnp.where(first, count - real, 0), axis=1)  # real tokens before the segment
    return count - 1 - before


def check_segment_ids(segment_ids: jax.Array | None, input_ids: jax.Array, cache: KVCache | None) -> None:
    """Packed segments are a whole-sequence (uncached) feature: a cache's slots would mix rows."""
    if segment_ids is None:
        return
    if cache is not None:
        raise ValueError("segment_ids (packed sequences) cannot be combined with a KV cache")
    if segment_ids.shape != input_ids.shape:
        raise ValueError(f"segment_ids shape {segment_ids.shape} differs from input_ids {input_ids.shape}")


# Decode steps of at most this many rows compute their logits vocabulary-major (see `output_logits`).
VOCAB_MAJOR_ROWS = 64


def output_logits(x: jax.Array, head: jax.Array, dtype, vocab_major: bool = False) -> jax.Array:
    """Float32 logits [batch, length, vocab] of hidden states x through `head` [embed, vocab] (a tied
    embedding transposed, or an untied lm_head).

    `vocab_major` (a decode layout's one-token steps) computes the product as [vocab, rows] and
    transposes it behind a barrier, so that XLA keeps that layout: on XLA CPU the dot of a few dozen rows
    with bloom-560m's 250880-row embedding runs faster so than as [rows, vocab], and not beyond
    VOCAB_MAJOR_ROWS (benchmarks/forward.py). The sums agree up to rounding.
    """
    batch, length, _ = x.shape
    if vocab_major and batch * length <= VOCAB_MAJOR_ROWS:
        by_vocab = jnp.einsum("ev,re->vr", head.astype(dtype), x.reshape(batch * length, -1),
                              preferred_element_type=jnp.float32)
        logits = jax.lax.optimization_barrier(by_vocab).T.reshape(batch, length, -1)
    else:
        logits = jnp.einsum("ble,ev->blv", x, head.astype(dtype), preferred_element_type=jnp.float32)
    return constrain(logits, ("batch", "length", "vocab"))


def with_cache(logits: jax.Array, new_cache: KVCache | None, cache: KVCache | None, length: int):
    """A decoder's return value: logits alone without a cache, else (logits, cache advanced by `length`)."""
    if cache is None:
        return logits
    return logits, new_cache.replace(index=cache.index + length)


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
    decode loop, which should run `decoding_blocks`); listed stacks loop in Python. Both give the
    same numbers.
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


def decoding_model(model: nnx.Module, blocks_attr: str) -> nnx.Module:
    """`model` laid out for generation: its block stack `blocks_attr` as a list of layers, so that no
    decode step copies slices of stacked weights or caches. The same function. A scanned stack's layers
    are sliced out once (a copy of the blocks' weights); a model loaded with `scan_layers=False` shares
    its weights, so generation holds them once. Made once, before generating; says `decode_layout`.
    """
    if getattr(model, "decode_layout", False):
        return model
    copy = nnx.merge(*nnx.split(model))
    setattr(copy, blocks_attr, decoding_blocks(getattr(copy, blocks_attr), model.config.scan_layers))
    copy.config = dataclasses.replace(model.config, scan_layers=False, remat_policy="none")  # no gradients
    copy.decode_layout = True
    return copy


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
