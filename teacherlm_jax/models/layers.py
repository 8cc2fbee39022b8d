"""Building blocks shared by the decoders: dtypes, named parameters, LayerNorm, Linear and the output head.

Every parameter carries logical axis names (`out_sharding` metadata) so that sharding is decided by
rules in `teacherlm_jax.sharding`, never inside a model. Attention is in `attention`, the KV cache in
`kv_cache`, the block stack in `stack`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from teacherlm_jax.sharding import constrain

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


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
