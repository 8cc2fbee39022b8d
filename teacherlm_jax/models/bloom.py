"""BLOOM decoder (Flax NNX), numerically the same as transformers' BloomForCausalLM.

ALiBi biases use key positions counted over the attention mask (`cumsum(mask) - 1`), so a
left-padded row gives the logits of the same row unpadded, with or without a KV cache.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from teacherlm_jax.errors import ConfigError
from teacherlm_jax.models.causal_lm import CausalLM
from teacherlm_jax.models.attention import (attend, attend_with_prefix, attention_allowed, attention_impl,
                                            check_attention_impl, check_attention_mask, check_segment_ids,
                                            token_positions)
from teacherlm_jax.models.kv_cache import KVCache, SharedPrefix, keys_values
from teacherlm_jax.models.layers import LayerNorm, Linear, named_param, resolve_dtype
from teacherlm_jax.models.stack import ScanSpec, make_block_stack, run_block_stack
from teacherlm_jax.models.param_map import TensorSpec, config_from_hf, layer_norm, linear, same, transposed
from teacherlm_jax.sharding import constrain


@dataclasses.dataclass(frozen=True)
class BloomConfig:
    """HF `BloomConfig` fields that change the computation, plus how to run it."""

    vocab_size: int = 250880
    hidden_size: int = 64
    n_layer: int = 2
    n_head: int = 8
    layer_norm_epsilon: float = 1e-5
    apply_residual_connection_post_layernorm: bool = False
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = 3
    # BLOOM was trained on 2048 tokens; ALiBi extrapolates, so this is a guard users may raise.
    max_position_embeddings: int = 2048
    # How to run (not part of HF's config.json).
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    attention_impl: str = "auto"  # attention.ATTENTION_IMPLS: auto | einsum | xla | cudnn

    model_type = "bloom"

    def __post_init__(self):
        if self.hidden_size % self.n_head:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by n_head={self.n_head}")
        ScanSpec(self.scan_layers, self.remat_policy)  # validates remat_policy
        resolve_dtype(self.dtype), resolve_dtype(self.param_dtype)
        check_attention_impl(self.attention_impl, self.dtype)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_head

    @property
    def num_layers(self) -> int:
        return self.n_layer

    @property
    def num_heads(self) -> int:
        return self.n_head

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **overrides) -> BloomConfig:
        """From a `config.json` dict; accepts HF's aliases (n_embed, num_attention_heads, ...)."""
        aliases = {
            "hidden_size": ("hidden_size", "n_embed"),
            "n_layer": ("n_layer", "num_hidden_layers"),
            "n_head": ("n_head", "num_attention_heads"),
            "max_position_embeddings": ("max_position_embeddings", "seq_length", "n_positions"),
        }
        return config_from_hf(cls, hf, aliases, overrides)

    def to_hf_dict(self) -> dict[str, Any]:
        keys = ("vocab_size", "hidden_size", "n_layer", "n_head", "layer_norm_epsilon",
                "apply_residual_connection_post_layernorm", "tie_word_embeddings", "initializer_range",
                "bos_token_id", "eos_token_id", "pad_token_id")
        out = {k: getattr(self, k) for k in keys}
        out.update(model_type="bloom", architectures=["BloomForCausalLM"], seq_length=self.max_position_embeddings,
                   hidden_dropout=0.0, attention_dropout=0.0, pretraining_tp=1, slow_but_exact=False)
        return out


def alibi_slopes(num_heads: int) -> np.ndarray:
    """BLOOM's per-head ALiBi slopes for any head count, correctly rounded to float32.

    Same formula as transformers (float32 bases, integer powers); powers are taken in float64, so a
    slope can differ from torch's float32 `pow` by one ulp.
    """
    closest = 2 ** math.floor(math.log2(num_heads))
    base = np.float64(np.float32(2 ** (-(2 ** -(math.log2(closest) - 3)))))
    slopes = base ** np.arange(1, closest + 1)
    if closest != num_heads:
        extra_base = np.float64(np.float32(2 ** (-(2 ** -(math.log2(2 * closest) - 3)))))
        n_extra = min(closest, num_heads - closest)
        slopes = np.concatenate([slopes, extra_base ** np.arange(1, 2 * n_extra, 2)])
    return slopes.astype(np.float32)


def alibi_bias(attention_mask: jax.Array, num_heads: int, segment_ids: jax.Array | None = None,
               start: jax.Array | None = None) -> jax.Array:
    """[batch, heads, 1, keys] bias = slope * key position, positions counted over real tokens only (and
    from each packed segment's start, `attention.token_positions`), from `start` [batch] (a shared prefix's
    tokens before the row's own columns) or 0."""
    positions = token_positions(attention_mask, segment_ids)
    if start is not None:
        positions = positions + start[:, None]
    positions = positions * (attention_mask > 0)
    slopes = jnp.asarray(alibi_slopes(num_heads))
    return slopes[None, :, None, None] * positions[:, None, None, :].astype(jnp.float32)


class BloomBlock(nnx.Module):
    def __init__(self, config: BloomConfig, *, rngs: nnx.Rngs):
        dtype, pdtype = resolve_dtype(config.dtype), resolve_dtype(config.param_dtype)
        h, nh, hd, std = config.hidden_size, config.n_head, config.head_dim, config.initializer_range
        common = dict(dtype=dtype, param_dtype=pdtype, rngs=rngs)
        self.config = config
        self.input_layernorm = LayerNorm(h, config.layer_norm_epsilon, **common)
        # Output laid out [heads, 3, head_dim], as BLOOM's fused query_key_value.
        self.query_key_value = Linear((h,), (nh, 3, hd), ("embed", "heads", None, "kv"), init_std=std, **common)
        self.dense = Linear((nh, hd), (h,), ("heads", "kv", "embed"), init_std=std, **common)
        self.post_attention_layernorm = LayerNorm(h, config.layer_norm_epsilon, **common)
        self.dense_h_to_4h = Linear((h,), (4 * h,), ("embed", "mlp"), init_std=std, **common)
        self.dense_4h_to_h = Linear((4 * h,), (h,), ("mlp", "embed"), init_std=std, **common)

    def __call__(self, x, bias, allowed, cache_k, cache_v, index, shared: SharedPrefix | None = None):
        dtype = resolve_dtype(self.config.dtype)
        post_ln = self.config.apply_residual_connection_post_layernorm
        ln = self.input_layernorm(x)
        qkv = constrain(self.query_key_value(ln), ("batch", "length", "heads", None, "kv"))
        q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
        impl = attention_impl(self.config.attention_impl, dtype, cached=cache_k is not None)
        k, v, cache_k, cache_v = keys_values(k, v, cache_k, cache_v, index)
        context = attend(q, k, v, allowed, bias, dtype, impl=impl) if shared is None else \
            attend_with_prefix(q, k, v, allowed, bias, shared, dtype)
        attn_out = self.dense(context) + (ln if post_ln else x)
        ln2 = self.post_attention_layernorm(attn_out)
        hidden = constrain(jax.nn.gelu(self.dense_h_to_4h(ln2), approximate=True), ("batch", "length", "mlp"))
        out = self.dense_4h_to_h(hidden) + (ln2 if post_ln else attn_out)
        return constrain(out, ("batch", "length", "embed")), cache_k, cache_v


class Bloom(CausalLM):
    """BloomForCausalLM: `model(input_ids, attention_mask=None)` -> float32 logits [batch, length, vocab]."""

    blocks_attr = "h"
    too_long = "); truncate it or raise max_position_embeddings"

    def __init__(self, config: BloomConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype, pdtype = resolve_dtype(config.dtype), resolve_dtype(config.param_dtype)
        h = config.hidden_size
        self.word_embeddings = named_param(
            rngs, nnx.initializers.normal(config.initializer_range), (config.vocab_size, h), ("vocab", "embed"), pdtype)
        self.word_embeddings_layernorm = LayerNorm(h, config.layer_norm_epsilon, dtype=dtype, param_dtype=pdtype,
                                                   rngs=rngs)
        self.h = make_block_stack(lambda r: BloomBlock(config, rngs=r), config.n_layer, config.scan_layers, rngs)
        self.ln_f = LayerNorm(h, config.layer_norm_epsilon, dtype=dtype, param_dtype=pdtype, rngs=rngs)
        self.lm_head = None if config.tie_word_embeddings else named_param(
            rngs, nnx.initializers.normal(config.initializer_range), (h, config.vocab_size), ("embed", "vocab"), pdtype)

    def final_hidden(self, input_ids: jax.Array, attention_mask: jax.Array | None, cache: KVCache | None,
                     segment_ids: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
        c = self.config
        dtype = resolve_dtype(c.dtype)
        length = input_ids.shape[1]
        self.check_length(length)
        attention_mask, offset = check_attention_mask(input_ids, attention_mask, cache)
        check_segment_ids(segment_ids, input_ids, cache)

        x = jnp.take(self.word_embeddings[...], input_ids, axis=0).astype(dtype)
        x = self.word_embeddings_layernorm(constrain(x, ("batch", "length", "embed")))
        pool = None if cache is None else cache.prefix
        bias = alibi_bias(attention_mask, c.n_head, segment_ids, None if pool is None else pool.lengths())
        allowed = attention_allowed(attention_mask, length, offset, segment_ids)
        pool_bias = None if pool is None else alibi_bias(pool.mask, c.n_head)

        def layer(block, h, ck, cv, pool_layer=None):
            shared = None if pool_layer is None else SharedPrefix.of(pool, pool_bias, pool_layer)
            return block(h, bias, allowed, ck, cv, offset, shared)

        x, new_cache = run_block_stack(self.h, x, layer, cache, ScanSpec(c.scan_layers, c.remat_policy))
        return self.ln_f(x), new_cache

    def output_head(self) -> jax.Array:
        return self.word_embeddings[...].T if self.lm_head is None else self.lm_head[...]


def hf_tensor_specs(config: BloomConfig) -> list[TensorSpec]:
    """Our parameters <-> BloomForCausalLM's tensor names (base prefix `transformer.`)."""
    h, nh, hd = config.hidden_size, config.n_head, config.head_dim
    layer = "h.{i}"
    specs = [same(("word_embeddings",), "word_embeddings.weight"),
             *layer_norm(("word_embeddings_layernorm",), "word_embeddings_layernorm"),
             *layer_norm(("h", "input_layernorm"), f"{layer}.input_layernorm"),
             *linear(("h", "query_key_value"), f"{layer}.self_attention.query_key_value", (h,), (nh, 3, hd)),
             *linear(("h", "dense"), f"{layer}.self_attention.dense", (nh, hd), (h,)),
             *layer_norm(("h", "post_attention_layernorm"), f"{layer}.post_attention_layernorm"),
             *linear(("h", "dense_h_to_4h"), f"{layer}.mlp.dense_h_to_4h", (h,), (4 * h,)),
             *linear(("h", "dense_4h_to_h"), f"{layer}.mlp.dense_4h_to_h", (4 * h,), (h,)),
             *layer_norm(("ln_f",), "ln_f")]
    if not config.tie_word_embeddings:
        specs.append(transposed(("lm_head",), "lm_head.weight", in_base=False))
    return specs


# BLOOM's published shapes (config.json on the hub): hidden_size, n_layer, n_head; vocab 250880.
BLOOM_SHAPES: dict[str, tuple[int, int, int]] = {
    "bloom-560m": (1024, 24, 16),
    "bloom-1b1": (1536, 24, 16),
    "bloom-1b7": (2048, 24, 16),
    "bloom-3b": (2560, 30, 32),
    "bloom-7b1": (4096, 30, 32),
    "bloom": (14336, 70, 112),  # the 176B model
}
BLOOM_VOCAB = 250880


def bloom_shape(name: str) -> dict[str, int]:
    """Architecture keys of a BLOOM size by name (`bloom-7b1`, `bigscience/bloom-7b1`, `bloom-176b`)."""
    key = name.removeprefix("bigscience/")
    key = "bloom" if key == "bloom-176b" else key
    if key not in BLOOM_SHAPES:
        raise ConfigError(f"unknown BLOOM size {name!r}; known: {sorted(BLOOM_SHAPES)}")
    hidden, layers, heads = BLOOM_SHAPES[key]
    return dict(vocab_size=BLOOM_VOCAB, hidden_size=hidden, n_layer=layers, n_head=heads)
