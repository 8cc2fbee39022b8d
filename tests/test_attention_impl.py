"""Attention implementations (`model.attention_impl`): the fused path (`jax.nn.dot_product_attention`, XLA on CPU,
cuDNN on a GPU) gives the einsum path's logits, BLOOM (ALiBi, left padding) and OPT alike; ALiBi's bias, shifted
per query for the kernel's half-precision bias, keeps its precision at 2048 positions; `auto` picks einsum on
CPU and with a KV cache. The einsum path itself is checked against transformers in test_decoders.py."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from teacherlm_jax.models.bloom import Bloom, BloomConfig, alibi_bias
from teacherlm_jax.models.attention import attend, attention_allowed, attention_impl
from teacherlm_jax.models.opt import OPT, OPTConfig
from reference_models import left_padded_batch

ARCH = {
    "bloom": (Bloom, BloomConfig, dict(vocab_size=96, hidden_size=64, n_layer=2, n_head=8, initializer_range=0.2)),
    "opt": (OPT, OPTConfig, dict(vocab_size=96, hidden_size=64, num_hidden_layers=2, ffn_dim=128,
                                 num_attention_heads=8, init_std=0.2)),
}
# bfloat16 keeps 8 significant bits: the two paths round differently (scores, probabilities, bias).
TOLERANCE = {"float32": 1e-5, "bfloat16": 3e-2}


def logits(family: str, impl: str, dtype: str, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    cls, config_cls, arch = ARCH[family]
    model = cls(config_cls(**arch, dtype=dtype, attention_impl=impl), rngs=nnx.Rngs(0))  # same weights per seed
    return np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", sorted(ARCH))
def test_fused_xla_path_gives_the_einsum_logits_with_left_padding(family, dtype):
    ids, mask = left_padded_batch(96, [40, 23, 7, 40], pad_id=3, seed=1)
    reference = logits(family, "einsum", dtype, ids, mask)
    fused = logits(family, "xla", dtype, ids, mask)
    real = mask.astype(bool)
    scale = np.abs(reference[real]).max()
    np.testing.assert_allclose(fused[real], reference[real], rtol=0, atol=TOLERANCE[dtype] * scale)
    assert np.abs(reference[real]).std() > 0.1  # attention is far from uniform: a wrong bias would show


def test_alibi_bias_shifted_per_query_keeps_bfloat16_precision_at_2048_positions():
    """At 2048 positions slope * position reaches 1447 (16 heads), where bfloat16 steps by 8: given to the kernel
    as it is, such a bias would move attention weights by factors of e^4. Shifted by the query's own position,
    the fused path matches the float32-bias einsum path; the unshifted bfloat16 bias does not."""
    length, heads, head_dim = 2048, 16, 8
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, (1, length, heads, head_dim), jnp.bfloat16) for key in keys)
    mask = jnp.ones((1, length), jnp.int32)
    bias, allowed = alibi_bias(mask, heads), attention_allowed(mask, length, 0)
    k_, v_ = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    reference = attend(q, k_, v_, allowed, bias, jnp.bfloat16).astype(jnp.float32)
    fused = attend(q, k_, v_, allowed, bias, jnp.bfloat16, impl="xla").astype(jnp.float32)
    unshifted = jax.nn.dot_product_attention(q, k, v, bias=jnp.broadcast_to(bias, (1, heads, length, length))
                                             .astype(jnp.bfloat16), mask=allowed, implementation="xla")
    error = float(jnp.abs(fused - reference).max())
    assert error < 0.05, error
    assert float(jnp.abs(unshifted.astype(jnp.float32) - reference).max()) > 5 * error


@pytest.mark.skipif(jax.default_backend() != "gpu",
                    reason=f"cuDNN flash attention needs an NVIDIA GPU; this backend is {jax.default_backend()}")
@pytest.mark.parametrize("family", sorted(ARCH))
def test_cudnn_path_gives_the_einsum_logits_and_gradients(family):
    ids, mask = left_padded_batch(96, [64, 40, 12, 64], pad_id=3, seed=1)
    reference = logits(family, "einsum", "bfloat16", ids, mask)
    fused = logits(family, "cudnn", "bfloat16", ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(fused[real], reference[real], rtol=0,
                               atol=TOLERANCE["bfloat16"] * np.abs(reference[real]).max())
    cls, config_cls, arch = ARCH[family]
    grads = {}
    for impl in ("einsum", "cudnn"):
        graphdef, params = nnx.split(cls(config_cls(**arch, dtype="bfloat16", attention_impl=impl),
                                         rngs=nnx.Rngs(0)), nnx.Param)
        loss = lambda p: nnx.merge(graphdef, p)(ids, mask).mean()  # noqa: E731
        grads[impl] = jax.tree.leaves(jax.grad(loss)(params))
    for a, b in zip(grads["einsum"], grads["cudnn"]):
        np.testing.assert_allclose(np.asarray(b, np.float32), np.asarray(a, np.float32), rtol=0,
                                   atol=0.05 * float(np.abs(np.asarray(a, np.float32)).max()) + 1e-6)


def test_auto_takes_einsum_on_cpu_and_always_with_a_cache():
    on_gpu = jax.default_backend() == "gpu"
    assert attention_impl("auto", jnp.bfloat16, cached=False) == ("cudnn" if on_gpu else "einsum")
    assert attention_impl("auto", jnp.float32, cached=False) == "einsum"
    for impl in ("auto", "xla", "cudnn", "einsum"):
        assert attention_impl(impl, jnp.bfloat16, cached=True) == "einsum"
    assert attention_impl("xla", jnp.float32, cached=False) == "xla"


def test_a_fused_model_decodes_through_its_cache_as_its_full_forward():
    """With a cache the layers attend with einsum: prefill and steps still give the fused full forward's logits."""
    cls, config_cls, arch = ARCH["bloom"]
    model = cls(config_cls(**arch, attention_impl="xla"), rngs=nnx.Rngs(0))
    ids, mask = left_padded_batch(96, [9, 5], pad_id=3, seed=2)
    full = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    cache = model.init_cache(2, ids.shape[1])
    prefill, cache = model(jnp.asarray(ids[:, :6]), jnp.asarray(mask), cache=cache)
    steps = [prefill]
    for t in range(6, ids.shape[1]):
        step, cache = model(jnp.asarray(ids[:, t:t + 1]), jnp.asarray(mask), cache=cache)
        steps.append(step)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.concatenate(steps, axis=1)[real], full[real], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config, message", [
    (dict(attention_impl="flash"), r"attention_impl='flash'; expected one of \['auto', 'einsum', 'xla', 'cudnn'\]"),
    (dict(attention_impl="cudnn"), r"attention_impl='cudnn' needs dtype bfloat16 or float16 .* got dtype=float32"),
])
def test_attention_impls_that_cannot_run_are_refused(config, message):
    for cls, config_cls, arch in ARCH.values():
        with pytest.raises(ValueError, match=message):
            config_cls(**arch, **config)
