"""BLOOM numerics against transformers' BloomForCausalLM on tiny random checkpoints."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import teacherlm_jax as tl
import reference_models
from reference_models import tiny_bloom, torch_logits
from teacherlm_jax.models.bloom import Bloom, BloomConfig, alibi_slopes

CONFIGS = {
    "6_heads": dict(n_head=6, hidden_size=48),
    "12_heads_post_ln_untied": dict(n_head=12, hidden_size=48, apply_residual_connection_post_layernorm=True,
                                    tie_word_embeddings=False),
    "16_heads_3_layers": dict(n_head=16, hidden_size=64, n_layer=3, layer_norm_epsilon=1e-3),
    "5_heads": dict(n_head=5, hidden_size=40),
}


def left_padded_batch(vocab: int, lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return reference_models.left_padded_batch(vocab, lengths, pad_id=3, seed=seed)  # BLOOM's pad id


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    reference = tiny_bloom(directory, **CONFIGS[request.param])
    return directory, reference


def test_logits_match_transformers_with_left_padding(checkpoint):
    directory, reference = checkpoint
    ids, mask = left_padded_batch(128, [11, 7, 3, 11])
    expected = torch_logits(reference, ids, mask)
    model = tl.from_pretrained(directory)
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], expected[real], rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_left_padding_gives_the_unpadded_logits(checkpoint):
    directory, reference = checkpoint
    model = tl.from_pretrained(directory)
    ids, mask = left_padded_batch(128, [9, 4])
    padded = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    alone = np.asarray(model(jnp.asarray(ids[1:, -4:])))
    np.testing.assert_allclose(padded[1, -4:], alone[0], rtol=1e-5, atol=1e-5)


def test_scanned_equals_unscanned_and_remat(checkpoint):
    directory, _ = checkpoint
    ids, mask = left_padded_batch(128, [8, 5])
    outputs = [np.asarray(tl.from_pretrained(directory, scan_layers=scan, remat_policy=policy)(ids, mask))
               for scan, policy in [(True, "none"), (False, "none"), (True, "full"), (False, "dots")]]
    for other in outputs[1:]:
        np.testing.assert_allclose(other, outputs[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_kv_cache_decode_equals_full_forward(checkpoint, scan_layers):
    """A prefill, then one-token steps of the model and of its decode layout (`for_decoding`, what
    `generate` loops over), give the full forward's logits; the cache holds one buffer per layer."""
    directory, _ = checkpoint
    model = tl.from_pretrained(directory, scan_layers=scan_layers)
    shapes = jax.tree.map(jnp.shape, nnx.state(model))
    decoder = model.for_decoding()
    assert jax.tree.map(jnp.shape, nnx.state(model)) == shapes and model.config.scan_layers == scan_layers
    c = model.config
    ids, mask = left_padded_batch(128, [10, 6, 8])
    full = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    prefill, max_length = 6, 13
    cache_mask = jnp.asarray(np.concatenate([mask, np.ones((3, max_length - ids.shape[1]), int)], axis=1))
    cache = model.init_cache(3, max_length)
    assert [x.shape for x in cache.key + cache.value] == [(3, c.n_head, max_length, c.head_dim)] * (2 * c.n_layer)
    logits, cache = model(jnp.asarray(ids[:, :prefill]), cache_mask, cache=cache)
    pieces = [np.asarray(logits)]
    for t in range(prefill, ids.shape[1]):
        tokens = jnp.asarray(ids[:, t:t + 1])
        expected, expected_cache = model(tokens, cache_mask, cache=cache)
        logits, cache = decoder(tokens, cache_mask, cache=cache)
        np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), cache, expected_cache)
        pieces.append(np.asarray(logits))
    assert int(cache.index) == ids.shape[1]
    decoded = np.concatenate(pieces, axis=1)
    real = mask.astype(bool)
    np.testing.assert_allclose(decoded[real], full[real], rtol=1e-5, atol=1e-5)


def test_bfloat16_close_to_float32_reference(checkpoint):
    directory, reference = checkpoint
    ids, mask = left_padded_batch(128, [9, 9])
    expected = torch_logits(reference, ids, mask)
    model = tl.from_pretrained(directory, dtype="bfloat16", param_dtype="bfloat16")
    assert model.word_embeddings.get_value().dtype == jnp.bfloat16
    got = np.asarray(model(ids, mask))
    assert got.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: logits of size ~4 land within ~0.1 of float32.
    assert np.abs(got - expected).max() < 0.03 * np.abs(expected).max() + 0.05
    agreement = (got.argmax(-1) == expected.argmax(-1)).mean()
    assert agreement > 0.9


def slopes_closed_form(n: int) -> np.ndarray:
    cp = 2 ** math.floor(math.log2(n))
    slopes = [(2 ** (-8 / cp)) ** k for k in range(1, cp + 1)]
    slopes += [(2 ** (-4 / cp)) ** k for k in range(1, 2 * (n - cp), 2)][: n - cp]
    return np.asarray(slopes)


@pytest.mark.parametrize("heads", [16, 32, 112, 6, 5])
def test_alibi_slopes_closed_form_and_transformers(heads):
    import torch
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

    ours = alibi_slopes(heads)
    assert ours.shape == (heads,)
    np.testing.assert_allclose(ours, slopes_closed_form(heads), rtol=1e-6)
    # torch's float32 pow is not always correctly rounded: allow one ulp.
    np.testing.assert_allclose(ours, _get_alibi_slopes(heads, torch.device("cpu")).numpy(), rtol=1.2e-7, atol=0)


def test_112_heads_forward_matches_transformers(tmp_path):
    """bloom-176b's head count, which transformers 4.x's Flax BLOOM could not run."""
    reference = tiny_bloom(tmp_path, n_head=112, hidden_size=224, n_layer=1)
    ids, mask = left_padded_batch(128, [6, 4])
    expected = torch_logits(reference, ids, mask)
    got = np.asarray(tl.from_pretrained(tmp_path)(ids, mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], expected[real], rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_every_parameter_has_logical_axis_names():
    model = Bloom(BloomConfig(vocab_size=64, hidden_size=32, n_head=4), rngs=nnx.Rngs(0))
    allowed = {"vocab", "embed", "heads", "kv", "mlp", "layers", None}
    flat = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert len(flat) == 17  # embeddings, its norm, 12 per block (stacked), ln_f
    for path, variable in flat:
        names = variable.get_metadata()["out_sharding"]
        assert len(names) == variable.get_value().ndim, path
        assert set(names) <= allowed, (path, names)
        if path[0] == "h":
            assert names[0] == "layers", path
    qkv = model.h.query_key_value.kernel.get_metadata()["out_sharding"]
    assert qkv == ("layers", "embed", "heads", None, "kv")


def test_input_longer_than_supported_is_rejected():
    model = Bloom(BloomConfig(vocab_size=64, hidden_size=32, n_head=4, max_position_embeddings=8),
                  rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="longer than the model supports"):
        model(jnp.zeros((1, 9), jnp.int32))
    with pytest.raises(ValueError, match="longer than the model supports"):
        model.init_cache(1, 12)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="not divisible by n_head"):
        BloomConfig(hidden_size=30, n_head=4)
    with pytest.raises(ValueError, match="remat_policy"):
        BloomConfig(remat_policy="sometimes")
    with pytest.raises(ValueError, match="unknown dtype"):
        BloomConfig(dtype="float8")


def test_jit_of_split_model_matches_eager(checkpoint):
    directory, _ = checkpoint
    model = tl.from_pretrained(directory)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(ids, mask))
    ids, mask = left_padded_batch(128, [5, 3])
    np.testing.assert_allclose(np.asarray(forward(state, ids, mask)), np.asarray(model(ids, mask)),
                               rtol=1e-5, atol=1e-5)


def test_config_round_trips_through_hf_dict_including_null_token_ids():
    config = BloomConfig(vocab_size=64, hidden_size=32, n_head=4, bos_token_id=None, pad_token_id=None,
                         apply_residual_connection_post_layernorm=True, max_position_embeddings=77)
    again = BloomConfig.from_hf_dict(config.to_hf_dict(), dtype="bfloat16")
    assert again == dataclasses.replace(config, dtype="bfloat16")
    assert BloomConfig.from_hf_dict({"n_embed": 32, "n_head": 4, "dtype": "float16"}).dtype == "float32"
