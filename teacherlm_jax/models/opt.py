"""OPT decoder (Flax NNX), numerically the same as transformers' OPTForCausalLM.

Learned positions are counted over the attention mask (`cumsum(mask) * mask - 1`, plus OPT's offset
of 2), so a left-padded row gives the logits of the same row unpadded, with or without a KV cache.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from teacherlm_jax.models.causal_lm import CausalLM
from teacherlm_jax.models.attention import (attend, attend_with_prefix, attention_allowed, attention_impl,
                                            check_attention_impl, check_attention_mask, check_segment_ids,
                                            query_slots, token_positions)
from teacherlm_jax.models.kv_cache import KVCache, SharedPrefix, keys_values
from teacherlm_jax.models.layers import LayerNorm, Linear, named_param, resolve_dtype
from teacherlm_jax.models.stack import ScanSpec, make_block_stack, run_block_stack
from teacherlm_jax.models.param_map import TensorSpec, config_from_hf, layer_norm, linear, same, transposed
from teacherlm_jax.sharding import constrain

# OPT's position table has two extra rows in front (a fairseq padding_idx leftover): position p is row p + 2.
POSITION_OFFSET = 2
# torch.nn.LayerNorm's default; OPT's config has no epsilon field.
LAYER_NORM_EPS = 1e-5

# transformers' ACT2FN names -> the same functions in JAX ("gelu" is the exact erf form there).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class OPTConfig:
    """HF `OPTConfig` fields that change the computation, plus how to run it."""

    vocab_size: int = 50272
    hidden_size: int = 64
    num_hidden_layers: int = 2
    ffn_dim: int = 256
    num_attention_heads: int = 4
    # Learned positions: inputs (or KV caches) longer than this have no position embedding.
    max_position_embeddings: int = 2048
    do_layer_norm_before: bool = True
    remove_final_layer_norm: bool = False  # HF's `_remove_final_layer_norm`
    word_embed_proj_dim: int | None = None  # None: hidden_size (opt-350m uses 512 with hidden 1024)
    activation_function: str = "relu"
    enable_bias: bool = True
    layer_norm_elementwise_affine: bool = True
    tie_word_embeddings: bool = True
    init_std: float = 0.02
    pad_token_id: int | None = 1
    bos_token_id: int | None = 2
    eos_token_id: int | None = 2
    # How to run (not part of HF's config.json).
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    attention_impl: str = "auto"  # attention.ATTENTION_IMPLS: auto | einsum | xla | cudnn

    model_type = "opt"

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"activation_function={self.activation_function!r} is not supported; "
                             f"expected one of {sorted(ACTIVATIONS)}")
        if not self.layer_norm_elementwise_affine:
            raise ValueError("layer_norm_elementwise_affine=False (layer norms without weight and bias) is not "
                             "supported; no published OPT checkpoint uses it")
        ScanSpec(self.scan_layers, self.remat_policy)  # validates remat_policy
        resolve_dtype(self.dtype), resolve_dtype(self.param_dtype)
        check_attention_impl(self.attention_impl, self.dtype)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.num_attention_heads

    @property
    def embed_dim(self) -> int:
        """Width of the token embeddings and of the lm_head input."""
        return self.hidden_size if self.word_embed_proj_dim is None else self.word_embed_proj_dim

    @property
    def projects(self) -> bool:
        """Whether `project_in`/`project_out` map between embed_dim and hidden_size."""
        return self.embed_dim != self.hidden_size

    @property
    def final_layer_norm(self) -> bool:
        return self.do_layer_norm_before and not self.remove_final_layer_norm

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **overrides) -> OPTConfig:
        """From a `config.json` dict (HF's `_remove_final_layer_norm` becomes `remove_final_layer_norm`)."""
        return config_from_hf(cls, hf, {"remove_final_layer_norm": ("_remove_final_layer_norm",)}, overrides)

    def to_hf_dict(self) -> dict[str, Any]:
        keys = ("vocab_size", "hidden_size", "num_hidden_layers", "ffn_dim", "num_attention_heads",
                "max_position_embeddings", "do_layer_norm_before", "activation_function", "enable_bias",
                "layer_norm_elementwise_affine", "tie_word_embeddings", "init_std", "pad_token_id",
                "bos_token_id", "eos_token_id")
        out = {k: getattr(self, k) for k in keys}
        out.update(model_type="opt", architectures=["OPTForCausalLM"], word_embed_proj_dim=self.embed_dim,
                   _remove_final_layer_norm=self.remove_final_layer_norm, dropout=0.0, attention_dropout=0.0,
                   layerdrop=0.0)
        return out


class OPTBlock(nnx.Module):
    def __init__(self, config: OPTConfig, *, rngs: nnx.Rngs):
        dtype, pdtype = resolve_dtype(config.dtype), resolve_dtype(config.param_dtype)
        h, nh, hd = config.hidden_size, config.num_attention_heads, config.head_dim
        common = dict(use_bias=config.enable_bias, init_std=config.init_std, dtype=dtype, param_dtype=pdtype,
                      rngs=rngs)
        self.config = config
        self.q_proj = Linear((h,), (nh, hd), ("embed", "heads", "kv"), **common)
        self.k_proj = Linear((h,), (nh, hd), ("embed", "heads", "kv"), **common)
        self.v_proj = Linear((h,), (nh, hd), ("embed", "heads", "kv"), **common)
        self.out_proj = Linear((nh, hd), (h,), ("heads", "kv", "embed"), **common)
        self.self_attn_layer_norm = LayerNorm(h, LAYER_NORM_EPS, dtype=dtype, param_dtype=pdtype, rngs=rngs)
        self.fc1 = Linear((h,), (config.ffn_dim,), ("embed", "mlp"), **common)
        self.fc2 = Linear((config.ffn_dim,), (h,), ("mlp", "embed"), **common)
        self.final_layer_norm = LayerNorm(h, LAYER_NORM_EPS, dtype=dtype, param_dtype=pdtype, rngs=rngs)

    def __call__(self, x, allowed, cache_k, cache_v, index, shared: SharedPrefix | None = None):
        c = self.config
        pre_ln = c.do_layer_norm_before
        heads = ("batch", "length", "heads", "kv")
        h = self.self_attn_layer_norm(x) if pre_ln else x
        # OPT scales q before the dot product (not the scores), in the compute dtype.
        q = constrain(self.q_proj(h) * c.head_dim ** -0.5, heads)
        k = constrain(self.k_proj(h), heads)
        v = constrain(self.v_proj(h), heads)
        dtype = resolve_dtype(c.dtype)
        impl = attention_impl(c.attention_impl, dtype, cached=cache_k is not None)
        k, v, cache_k, cache_v = keys_values(k, v, cache_k, cache_v, index)
        context = attend(q, k, v, allowed, None, dtype, scale=1.0, impl=impl) if shared is None else \
            attend_with_prefix(q, k, v, allowed, None, shared, dtype, scale=1.0)
        x = x + self.out_proj(context)
        if not pre_ln:
            x = self.self_attn_layer_norm(x)
        h = self.final_layer_norm(x) if pre_ln else x
        h = constrain(ACTIVATIONS[c.activation_function](self.fc1(h)), ("batch", "length", "mlp"))
        x = x + self.fc2(h)
        if not pre_ln:
            x = self.final_layer_norm(x)
        return constrain(x, ("batch", "length", "embed")), cache_k, cache_v


class OPT(CausalLM):
    """OPTForCausalLM: `model(input_ids, attention_mask=None)` -> float32 logits [batch, length, vocab]."""

    blocks_attr = "layers"
    too_long = ("; OPT's positions are learned, so there is no embedding for later positions): truncate it")

    def __init__(self, config: OPTConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype, pdtype = resolve_dtype(config.dtype), resolve_dtype(config.param_dtype)
        h, e, std = config.hidden_size, config.embed_dim, config.init_std
        common = dict(dtype=dtype, param_dtype=pdtype, rngs=rngs)
        normal = nnx.initializers.normal(std)
        self.embed_tokens = named_param(rngs, normal, (config.vocab_size, e), ("vocab", "embed"), pdtype)
        self.embed_positions = named_param(
            rngs, normal, (config.max_position_embeddings + POSITION_OFFSET, h), (None, "embed"), pdtype)
        self.project_in = Linear((e,), (h,), (None, "embed"), use_bias=False, init_std=std, **common) \
            if config.projects else None
        self.layers = make_block_stack(lambda r: OPTBlock(config, rngs=r), config.num_hidden_layers,
                                       config.scan_layers, rngs)
        self.final_layer_norm = LayerNorm(h, LAYER_NORM_EPS, **common) if config.final_layer_norm else None
        self.project_out = Linear((h,), (e,), ("embed", None), use_bias=False, init_std=std, **common) \
            if config.projects else None
        self.lm_head = None if config.tie_word_embeddings else named_param(
            rngs, normal, (e, config.vocab_size), ("embed", "vocab"), pdtype)

    def final_hidden(self, input_ids: jax.Array, attention_mask: jax.Array | None, cache: KVCache | None,
                     segment_ids: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
        c = self.config
        dtype = resolve_dtype(c.dtype)
        length = input_ids.shape[1]
        self.check_length(length)
        attention_mask, offset = check_attention_mask(input_ids, attention_mask, cache)
        check_segment_ids(segment_ids, input_ids, cache)

        # Positions as transformers counts them over the whole mask (`cumsum(mask) * mask - 1`; from each
        # packed segment's start), then cut to this call's slots.
        mask = jnp.asarray(attention_mask).astype(jnp.int32)
        positions = (token_positions(mask, segment_ids) + 1) * mask - 1
        pool = None if cache is None else cache.prefix
        if pool is not None:  # a row's own tokens come after its shared prefix's
            positions = positions + pool.lengths()[:, None]
        # Clamped: a decode slot without a live row sits past the cache (its output is never used).
        positions = jnp.take_along_axis(positions, jnp.broadcast_to(query_slots(offset, length), (len(mask), length)),
                                        axis=1, mode="clip")
        x = jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(dtype)
        if self.project_in is not None:
            x = self.project_in(x)
        pos = jnp.take(self.embed_positions[...], positions + POSITION_OFFSET, axis=0).astype(dtype)
        x = constrain(x + pos, ("batch", "length", "embed"))
        allowed = attention_allowed(mask, length, offset, segment_ids)

        def layer(block, h, ck, cv, pool_layer=None):
            shared = None if pool_layer is None else SharedPrefix.of(pool, None, pool_layer)
            return block(h, allowed, ck, cv, offset, shared)

        x, new_cache = run_block_stack(self.layers, x, layer, cache, ScanSpec(c.scan_layers, c.remat_policy))
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        if self.project_out is not None:
            x = self.project_out(x)
        return x, new_cache

    def output_head(self) -> jax.Array:
        return self.embed_tokens[...].T if self.lm_head is None else self.lm_head[...]


def hf_tensor_specs(config: OPTConfig) -> list[TensorSpec]:
    """Our parameters <-> OPTForCausalLM's tensor names (base prefix `model.`)."""
    h, nh, hd, e, f = config.hidden_size, config.num_attention_heads, config.head_dim, config.embed_dim, config.ffn_dim
    bias = config.enable_bias
    layer = "decoder.layers.{i}"
    specs = [same(("embed_tokens",), "decoder.embed_tokens.weight"),
             same(("embed_positions",), "decoder.embed_positions.weight")]
    if config.projects:
        specs += [*linear(("project_in",), "decoder.project_in", (e,), (h,), bias=False),
                  *linear(("project_out",), "decoder.project_out", (h,), (e,), bias=False)]
    for name in ("q_proj", "k_proj", "v_proj"):
        specs += linear(("layers", name), f"{layer}.self_attn.{name}", (h,), (nh, hd), bias=bias)
    specs += [*linear(("layers", "out_proj"), f"{layer}.self_attn.out_proj", (nh, hd), (h,), bias=bias),
              *layer_norm(("layers", "self_attn_layer_norm"), f"{layer}.self_attn_layer_norm"),
              *linear(("layers", "fc1"), f"{layer}.fc1", (h,), (f,), bias=bias),
              *linear(("layers", "fc2"), f"{layer}.fc2", (f,), (h,), bias=bias),
              *layer_norm(("layers", "final_layer_norm"), f"{layer}.final_layer_norm")]
    if config.final_layer_norm:
        specs += layer_norm(("final_layer_norm",), "decoder.final_layer_norm")
    if not config.tie_word_embeddings:
        specs.append(transposed(("lm_head",), "lm_head.weight", in_base=False))
    return specs
