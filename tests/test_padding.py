"""The one left-padding helper and the one pad-id rule that generation, scoring and the lm-eval backend share."""
from __future__ import annotations

import types

import numpy as np
import pytest

from teacherlm_jax.data.padding import left_pad, pad_token_id


def test_left_pad_puts_tokens_at_the_right_end():
    ids, mask = left_pad([[5, 6, 7], [8], []], 4, pad_id=1)
    np.testing.assert_array_equal(ids, [[1, 5, 6, 7], [1, 1, 1, 8], [1, 1, 1, 1]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
    assert ids.dtype == mask.dtype == np.int32
    with pytest.raises(ValueError, match="row 0 has 3 tokens, more than the padded width 2"):
        left_pad([[5, 6, 7]], 2, pad_id=1)


def test_pad_id_is_the_tokenizers_then_the_models_then_zero():
    tokenizer, config = types.SimpleNamespace(pad_token_id=3), types.SimpleNamespace(pad_token_id=1)
    none = types.SimpleNamespace(pad_token_id=None)
    assert pad_token_id(tokenizer, config) == 3
    assert pad_token_id(none, config) == pad_token_id(model_config=config) == 1
    assert pad_token_id(none, none) == pad_token_id() == 0
