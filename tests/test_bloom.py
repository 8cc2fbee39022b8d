"""BLOOM's own numerics against transformers' BloomForCausalLM: ALiBi slopes, bloom-176b's head count, its
config. What BLOOM shares with OPT is checked on both in test_decoders.py."""
import dataclasses
import math

import numpy as np
import pytest

import teacherlm_jax as tl
from reference_models import left_padded_batch, tiny_bloom, torch_logits
from teacherlm_jax.models.bloom import BloomConfig, alibi_slopes


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
    ids, mask = left_padded_batch(128, [6, 4], pad_id=3)
    expected = torch_logits(reference, ids, mask)
    got = np.asarray(tl.from_pretrained(tmp_path)(ids, mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], expected[real], rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="not divisible by n_head"):
        BloomConfig(hidden_size=30, n_head=4)
    with pytest.raises(ValueError, match="remat_policy"):
        BloomConfig(remat_policy="sometimes")
    with pytest.raises(ValueError, match="unknown dtype"):
        BloomConfig(dtype="float8")


def test_config_round_trips_through_hf_dict_including_null_token_ids():
    config = BloomConfig(vocab_size=64, hidden_size=32, n_head=4, bos_token_id=None, pad_token_id=None,
                         apply_residual_connection_post_layernorm=True, max_position_embeddings=77)
    again = BloomConfig.from_hf_dict(config.to_hf_dict(), dtype="bfloat16")
    assert again == dataclasses.replace(config, dtype="bfloat16")
    assert BloomConfig.from_hf_dict({"n_embed": 32, "n_head": 4, "dtype": "float16"}).dtype == "float32"
