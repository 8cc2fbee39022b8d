"""The one `init_from` resolver (teacherlm_jax/init_from.py): errors name the config key they come from."""
from __future__ import annotations

import json

import pytest

from teacherlm_jax.errors import ConfigError
from teacherlm_jax.init_from import resolve

TINY = dict(vocab_size=64, hidden_size=32, n_layer=2, n_head=4)


def test_a_missing_checkpoint_names_the_key(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=rf"config.teacher.init_from='{missing}': {missing}: no such checkpoint"):
        resolve(dict(init_from=str(missing)), key="config.teacher")


def test_a_checkpoint_of_another_family_names_both_keys(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(dict(model_type="opt")))
    with pytest.raises(ConfigError, match=r"config.model.init_from=.* holds a 'opt' model, but config.model.family"):
        resolve(dict(init_from=str(tmp_path), family="bloom"))


def test_a_new_model_has_no_tokenizer_unless_one_is_named():
    model = resolve(dict(family="bloom", **TINY))
    assert model.init_from is None and model.tokenizer is None
    assert model.tokenizer_path("builtin:bytes") == "builtin:bytes"  # an explicit tokenizer wins
    with pytest.raises(ConfigError, match=r"config.tokenizer is required: config.model is a new model"):
        model.tokenizer_path(None)


def test_unknown_architecture_keys_are_refused():
    with pytest.raises(ConfigError, match=r"config.model: unknown keys \['hiden_size'\] for bloom"):
        resolve(dict(family="bloom", hiden_size=3))
