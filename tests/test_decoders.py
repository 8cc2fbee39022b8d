"""What BLOOM and OPT share, checked on both against transformers on tiny random checkpoints
(reference_models.CHECKPOINTS): logits with left padding, scan and remat, the KV cache and the decode
layout, bfloat16, logical axis names, the length limit. Family-specific numerics: test_bloom.py, test_opt.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import teacherlm_jax as tl
import reference_models
from reference_models import CHECKPOINT_VOCAB, CHECKPOINTS, PAD_ID, reference_checkpoint, torch_logits
from teacherlm_jax.models.bloom import Bloom, BloomConfig
from teacherlm_jax.models.opt import OPT, OPTConfig

MODEL_CLASS = {"bloom": Bloom, "opt": OPT}


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    family, reference = reference_checkpoint(request.param, directory)
    return family, directory, reference


def left_padded_batch(family: str, lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    return reference_models.left_padded_batch(CHECKPOINT_VOCAB, lengths, pad_id=PAD_ID[family])


def assert_close_on_real_tokens(got, expected, mask, rtol=1e-4):
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], expected[real], rtol=rtol, atol=rtol * np.abs(expected).max())


def test_logits_match_transformers_with_left_padding(checkpoint):
    family, directory, reference = checkpoint
    ids, mask = left_padded_batch(family, [11, 7, 3, 11])
    model = tl.from_pretrained(directory)
    assert isinstance(model, MODEL_CLASS[family])
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert got.dtype == np.float32 and got.shape == (4, 11, CHECKPOINT_VOCAB)
    assert_close_on_real_tokens(got, torch_logits(reference, ids, mask), mask)
    # A left-padded row has the logits of the row alone (positions count real tokens only).
    alone = np.asarray(model(jnp.asarray(ids[2:3, -3:])))
    np.testing.assert_allclose(got[2, -3:], alone[0], rtol=1e-5, atol=1e-5)


def test_scanned_equals_unscanned_and_remat(checkpoint):
    family, directory, _ = checkpoint
    ids, mask = left_padded_batch(family, [8, 5])
    outputs = [np.asarray(tl.from_pretrained(directory, scan_layers=scan, remat_policy=policy)(ids, mask))
               for scan, policy in [(True, "none"), (False, "none"), (True, "full"), (False, "dots")]]
    for other in outputs[1:]:
        np.testing.assert_allclose(other, outputs[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_kv_cache_decode_equals_full_forward(checkpoint, scan_layers):
    """A prefill, then one-token steps of the model and of its decode layout (`for_decoding`, what
    `generate` loops over), give transformers' logits; the cache holds one buffer per layer."""
    family, directory, reference = checkpoint
    model = tl.from_pretrained(directory, scan_layers=scan_layers)
    shapes = jax.tree.map(jnp.shape, nnx.state(model))
    decoder = model.for_decoding()
    assert jax.tree.map(jnp.shape, nnx.state(model)) == shapes and model.config.scan_layers == scan_layers
    hf = reference.config
    ids, mask = left_padded_batch(family, [10, 6, 8])
    prefill, max_length = 6, 13
    cache_mask = jnp.asarray(np.concatenate([mask, np.ones((3, max_length - ids.shape[1]), int)], axis=1))
    step = nnx.jit(lambda m, tokens, cache: m(tokens, cache_mask, cache=cache))
    cache = model.init_cache(3, max_length)
    head_dim = hf.hidden_size // hf.num_attention_heads
    assert [x.shape for x in cache.key + cache.value] == \
        [(3, hf.num_attention_heads, max_length, head_dim)] * (2 * hf.num_hidden_layers)
    logits, cache = step(model, jnp.asarray(ids[:, :prefill]), cache)
    pieces = [np.asarray(logits)]
    for t in range(prefill, ids.shape[1]):
        tokens = jnp.asarray(ids[:, t:t + 1])
        own, own_cache = step(model, tokens, cache)
        logits, cache = step(decoder, tokens, cache)
        np.testing.assert_allclose(logits, own, rtol=1e-6, atol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), cache, own_cache)
        pieces.append(np.asarray(logits))
    assert int(cache.index) == ids.shape[1]
    assert_close_on_real_tokens(np.concatenate(pieces, axis=1), torch_logits(reference, ids, mask), mask)


def test_bfloat16_close_to_float32_reference(checkpoint):
    family, directory, reference = checkpoint
    ids, mask = left_padded_batch(family, [9, 9])
    expected = torch_logits(reference, ids, mask)
    model = tl.from_pretrained(directory, dtype="bfloat16", param_dtype="bfloat16")
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}
    got = np.asarray(model(ids, mask))
    assert got.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: logits of size ~4 land within ~0.1 of float32.
    assert np.abs(got - expected).max() < 0.03 * np.abs(expected).max() + 0.05
    assert (got.argmax(-1) == expected.argmax(-1)).mean() > 0.9


def test_jit_of_split_model_matches_eager(checkpoint):
    family, directory, _ = checkpoint
    model = tl.from_pretrained(directory)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(ids, mask))
    ids, mask = left_padded_batch(family, [5, 3])
    np.testing.assert_allclose(np.asarray(forward(state, ids, mask)), np.asarray(model(ids, mask)),
                               rtol=1e-5, atol=1e-5)


SMALL = {"bloom": lambda **kw: Bloom(BloomConfig(vocab_size=64, hidden_size=32, n_head=4, **kw), rngs=nnx.Rngs(0)),
         "opt": lambda **kw: nnx.eval_shape(lambda: OPT(OPTConfig(vocab_size=64, hidden_size=32, num_attention_heads=4,
                                                                  ffn_dim=64, **kw), rngs=nnx.Rngs(0)))}


@pytest.mark.parametrize("family, options, count, blocks, attention, names", [
    # embeddings, its norm, 12 per block (stacked), ln_f
    ("bloom", {}, 17, "h", ("h", "query_key_value"), ("layers", "embed", "heads", None, "kv")),
    # embed_tokens, embed_positions, project_in/out, lm_head, final LN (2), 16 per block
    ("opt", dict(word_embed_proj_dim=16, tie_word_embeddings=False), 23, "layers", ("layers", "q_proj"),
     ("layers", "embed", "heads", "kv")),
])
def test_every_parameter_has_logical_axis_names(family, options, count, blocks, attention, names):
    model = SMALL[family](**options)
    allowed = {"vocab", "embed", "heads", "kv", "mlp", "layers", None}
    flat = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert len(flat) == count
    for path, variable in flat:
        axes = variable.get_metadata()["out_sharding"]
        assert len(axes) == variable.get_value().ndim, path
        assert set(axes) <= allowed, (path, axes)
        if path[0] == blocks:
            assert axes[0] == "layers", path
    assert getattr(getattr(model, attention[0]), attention[1]).kernel.get_metadata()["out_sharding"] == names


@pytest.mark.parametrize("family", sorted(SMALL))
def test_input_longer_than_supported_is_rejected(family):
    model = SMALL[family](max_position_embeddings=8)
    with pytest.raises(ValueError, match="longer than the model supports"):
        model(jnp.zeros((1, 9), jnp.int32))
    with pytest.raises(ValueError, match="longer than the model supports"):
        model.init_cache(1, 9)
