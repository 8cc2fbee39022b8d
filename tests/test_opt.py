"""OPT's own numerics against transformers' OPTForCausalLM: greedy generate, export, OPTModel checkpoints,
its config and position table. What OPT shares with BLOOM is checked on both in test_decoders.py."""
import json

import numpy as np
import pytest
import torch
from flax import nnx

import teacherlm_jax as tl
from reference_models import CHECKPOINTS, reference_checkpoint, tiny_opt, torch_logits
from test_decoders import assert_close_on_real_tokens, left_padded_batch
from teacherlm_jax.models.opt import OPT, OPTConfig


@pytest.fixture(scope="module", params=sorted(name for name, (family, _) in CHECKPOINTS.items() if family == "opt"))
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    return directory, reference_checkpoint(request.param, directory)[1]


def test_greedy_generate_matches_transformers(checkpoint):
    """`generate` (a scanned prefill, then the decode layout in a while loop) continues OPT prompts as
    transformers' greedy `generate` does."""
    directory, reference = checkpoint
    ids, mask = left_padded_batch("opt", [7, 3, 5])
    steps = 6
    out = tl.generate(tl.from_pretrained(directory), ids, mask, max_new_tokens=steps)
    reference.generation_config.eos_token_id = None  # exactly `steps` tokens, as eos_token_id=None above
    expected = reference.generate(torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask),
                                  do_sample=False, max_new_tokens=steps, pad_token_id=1)
    np.testing.assert_array_equal(out.tokens, expected[:, ids.shape[1]:].numpy())


def test_save_pretrained_round_trips_through_transformers(checkpoint, tmp_path):
    from transformers import OPTForCausalLM

    directory, reference = checkpoint
    ids, mask = left_padded_batch("opt", [7, 4])
    tl.save_pretrained(tl.from_pretrained(directory, scan_layers=False), tmp_path)
    reloaded = OPTForCausalLM.from_pretrained(tmp_path).eval()
    np.testing.assert_allclose(torch_logits(reloaded, ids, mask), torch_logits(reference, ids, mask),
                               rtol=1e-6, atol=1e-6)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "opt"


def test_base_model_checkpoint_without_prefix_loads(tmp_path):
    """Checkpoints saved from OPTModel (as facebook/opt-*) name tensors `decoder.*`, not `model.decoder.*`."""
    reference = tiny_opt(word_embed_proj_dim=32, do_layer_norm_before=False)
    reference.model.save_pretrained(tmp_path)
    ids, mask = left_padded_batch("opt", [6, 3])
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


def test_position_table_has_opts_offset_of_two():
    config = OPTConfig(vocab_size=64, hidden_size=32, num_attention_heads=4, max_position_embeddings=8)
    model = nnx.eval_shape(lambda: OPT(config, rngs=nnx.Rngs(0)))
    assert model.embed_positions.get_value().shape == (10, 32)


@pytest.mark.parametrize("bad, message", [
    (dict(activation_function="quick_gelu"), "activation_function='quick_gelu' is not supported"),
    (dict(layer_norm_elementwise_affine=False), "layer_norm_elementwise_affine=False"),
    (dict(hidden_size=30), "not divisible"),
])
def test_unsupported_config_is_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        OPTConfig(**{"hidden_size": 32, "num_attention_heads": 4, **bad})
