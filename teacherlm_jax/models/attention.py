"""Attention: the softmax core (einsum or fused), decode attention over a shared prefix, and the masks and
positions it is given."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from teacherlm_jax.models.kv_cache import KVCache, SharedPrefix
from teacherlm_jax.models.layers import resolve_dtype
from teacherlm_jax.sharding import constrain


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
