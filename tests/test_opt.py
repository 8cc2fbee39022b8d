"""OPT numerics against transformers' OPTForCausalLM on tiny random checkpoints."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import teacherlm_jax as tl
import reference_models
from reference_models import tiny_opt, torch_logits
from teacherlm_jax.models.opt import OPT, OPTConfig

VOCAB = 128
CONFIGS = {
    "pre_ln": dict(),
    # opt-350m's shape: post-LN blocks, embeddings narrower than the hidden size.
    "post_ln_projected": dict(do_layer_norm_before=False, word_embed_proj_dim=32),
    # head_dim 12 (q scale not a power of two), exact GELU, no biases, untied head, no final layer norm.
    "untied_gelu_no_bias_no_final_ln": dict(num_attention_heads=4, activation_function="gelu", enable_bias=False,
                                            tie_word_embeddings=False, _remove_final_layer_norm=True,
                                            num_hidden_layers=3),
}


def left_padded_batch(lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return reference_models.left_padded_batch(VOCAB, lengths, pad_id=1, seed=seed)  # OPT's pad id


def assert_close_on_real_tokens(got, expected, mask, rtol=1e-4):
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], expected[real], rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    reference = tiny_opt(directory, **CONFIGS[request.param])
    return directory, reference


def test_logits_match_transformers_with_left_padding(checkpoint):
    directory, reference = checkpoint
    ids, mask = left_padded_batch([11, 7, 3, 11])
    model = tl.from_pretrained(directory)
    assert isinstance(model, OPT)
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert got.dtype == np.float32 and got.shape == (4, 11, VOCAB)
    assert_close_on_real_tokens(got, torch_logits(reference, ids, mask), mask)
    # Positions count real tokens only: a left-padded row has the logits of the row alone.
    alone = np.asarray(model(jnp.asarray(ids[2:3, -3:])))
    np.testing.assert_allclose(got[2, -3:], alone[0], rtol=1e-5, atol=1e-5)


def test_scanned_equals_unscanned_and_remat(checkpoint):
    directory, _ = checkpoint
    ids, mask = left_padded_batch([8, 5])
    outputs = [np.asarray(tl.from_pretrained(directory, scan_layers=scan, remat_policy=policy)(ids, mask))
               for scan, policy in [(True, "none"), (False, "none"), (True, "full")]]
    for other in outputs[1:]:
        np.testing.assert_allclose(other, outputs[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_kv_cache_decode_equals_full_forward(checkpoint, scan_layers):
    """A prefill, then one-token steps of the decode layout (`for_decoding`, what `generate` loops
    over), give transformers' logits; each step equals the model's own."""
    directory, reference = checkpoint
    model = tl.from_pretrained(directory, scan_layers=scan_layers)
    decoder = model.for_decoding()
    ids, mask = left_padded_batch([10, 6, 8])
    expected = torch_logits(reference, ids, mask)
    prefill, max_length = 6, 13
    cache_mask = np.concatenate([mask, np.ones((3, max_length - ids.shape[1]), int)], axis=1)
    step = nnx.jit(lambda m, tokens, cache: m(tokens, jnp.asarray(cache_mask), cache=cache))
    logits, cache = step(model, jnp.asarray(ids[:, :prefill]), model.init_cache(3, max_length))
    pieces = [np.asarray(logits)]
    for t in range(prefill, ids.shape[1]):
        tokens = jnp.asarray(ids[:, t:t + 1])
        own, _ = step(model, tokens, cache)
        logits, cache = step(decoder, tokens, cache)
        np.testing.assert_allclose(logits, own, rtol=1e-6, atol=1e-6)
        pieces.append(np.asarray(logits))
    assert int(cache.index) == ids.shape[1]
    assert_close_on_real_tokens(np.concatenate(pieces, axis=1), expected, mask)


def test_greedy_generate_matches_transformers(checkpoint):
    """`generate` (a scanned prefill, then the decode layout in a while loop) continues OPT prompts as
    transformers' greedy `generate` does."""
    directory, reference = checkpoint
    ids, mask = left_padded_batch([7, 3, 5])
    steps = 6
    out = tl.generate(tl.from_pretrained(directory), ids, mask, max_new_tokens=steps)
    reference.generation_config.eos_token_id = None  # exactly `steps` tokens, as eos_token_id=None above
    expected = reference.generate(torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask),
                                  do_sample=False, max_new_tokens=steps, pad_token_id=1)
    np.testing.assert_array_equal(out.tokens, expected[:, ids.shape[1]:].numpy())


def test_save_pretrained_round_trips_through_transformers(checkpoint, tmp_path):
    from transformers import OPTForCausalLM

    directory, reference = checkpoint
    ids, mask = left_padded_batch([7, 4])
    tl.save_pretrained(tl.from_pretrained(directory, scan_layers=False), tmp_path)
    reloaded = OPTForCausalLM.from_pretrained(tmp_path).eval()
    np.testing.assert_allclose(torch_logits(reloaded, ids, mask), torch_logits(reference, ids, mask),
                               rtol=1e-6, atol=1e-6)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "opt"


def test_bfloat16_close_to_float32_reference(checkpoint):
    directory, reference = checkpoint
    ids, mask = left_padded_batch([9, 9])
    expected = torch_logits(reference, ids, mask)
    model = tl.from_pretrained(directory, dtype="bfloat16", param_dtype="bfloat16")
    assert model.embed_tokens.get_value().dtype == jnp.bfloat16
    got = np.asarray(model(ids, mask))
    assert got.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: logits of size ~3 land within ~0.03 of float32 (measured);
    # the bound is 2% of the largest logit plus 0.02.
    assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max() + 0.02
    assert (got.argmax(-1) == expected.argmax(-1)).mean() > 0.9


def test_base_model_checkpoint_without_prefix_loads(tmp_path):
    """Checkpoints saved from OPTModel (as facebook/opt-*) name tensors `decoder.*`, not `model.decoder.*`."""
    reference = tiny_opt(word_embed_proj_dim=32, do_layer_norm_before=False)
    reference.model.save_pretrained(tmp_path)
    ids, mask = left_padded_batch([6, 3])
    got = np.asarray(tl.from_pretrained(tmp_path)(ids, mask))
    assert_close_on_real_tokens(got, torch_logits(reference, ids, mask), mask)


def test_hf_config_round_trip():
    from transformers import OPTConfig as HFOPTConfig

    hf = HFOPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, ffn_dim=40, num_attention_heads=2,
                     do_layer_norm_before=False, word_embed_proj_dim=8, _remove_final_layer_norm=True,
                     eos_token_id=[2, 7]).to_dict()
    config = OPTConfig.from_hf_dict(hf, dtype="bfloat16", scan_layers=False)
    assert (config.embed_dim, config.num_hidden_layers, config.eos_token_id) == (8, 3, 2)
    assert config.remove_final_layer_norm and not config.do_layer_norm_before
    assert (config.dtype, config.scan_layers) == ("bfloat16", False)
    assert OPTConfig.from_hf_dict(config.to_hf_dict(), dtype="bfloat16", scan_layers=False) == config
    assert OPTConfig.from_hf_dict({"hidden_size": 16, "num_attention_heads": 2}).embed_dim == 16


def test_every_parameter_has_logical_axis_names():
    config = OPTConfig(vocab_size=64, hidden_size=32, num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=16,
                       tie_word_embeddings=False)
    model = nnx.eval_shape(lambda: OPT(config, rngs=nnx.Rngs(0)))
    allowed = {"vocab", "embed", "heads", "kv", "mlp", "layers", None}
    flat = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    # embed_tokens, embed_positions, project_in/out, lm_head, final LN (2), 16 per block.
    assert len(flat) == 5 + 2 + 16
    for path, variable in flat:
        names = variable.get_metadata()["out_sharding"]
        assert len(names) == variable.get_value().ndim, path
        assert set(names) <= allowed, (path, names)
        if path[0] == "layers":
            assert names[0] == "layers", path
    assert model.layers.q_proj.kernel.get_metadata()["out_sharding"] == ("layers", "embed", "heads", "kv")


def test_input_longer_than_the_position_table_is_rejected():
    config = OPTConfig(vocab_size=64, hidden_size=32, num_attention_heads=4, max_position_embeddings=8)
    model = nnx.eval_shape(lambda: OPT(config, rngs=nnx.Rngs(0)))
    assert model.embed_positions.get_value().shape == (10, 32)
    with pytest.raises(ValueError, match="longer than the model supports"):
        model(jnp.zeros((1, 9), jnp.int32))
    with pytest.raises(ValueError, match="longer than the model supports"):
        model.init_cache(1, 9)


@pytest.mark.parametrize("bad, message", [
    (dict(activation_function="quick_gelu"), "activation_function='quick_gelu' is not supported"),
    (dict(layer_norm_elementwise_affine=False), "layer_norm_elementwise_affine=False"),
    (dict(hidden_size=30), "not divisible"),
])
def test_unsupported_config_is_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        OPTConfig(**{"hidden_size": 32, "num_attention_heads": 4, **bad})
