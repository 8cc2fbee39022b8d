"""Meshes and rules from config, and the errors bad configs get (one device suffices here; the
8-device checks of how parameters are split are in tests/test_train_sharded.py)."""
from __future__ import annotations

import jax
import pytest
from flax import nnx

from teacherlm_jax.errors import ConfigError
from teacherlm_jax.models.bloom import Bloom, BloomConfig
from teacherlm_jax.sharding import (
    DEFAULT_RULES, batch_axes, initialize_distributed, logical_to_spec, make_mesh, mesh_from_config,
    mesh_shape, param_shardings, parse_rules,
)


def test_mesh_shape_fills_minus_one_and_names_the_key_when_wrong():
    assert mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 16) == (2, 4, 2)
    assert mesh_shape({"fsdp": -1}, 8) == (1, 8, 1)
    with pytest.raises(ConfigError, match=r"config.mesh: .* needs a multiple of 3 devices, but there are 8"):
        mesh_shape({"data": 3, "fsdp": -1}, 8)
    with pytest.raises(ConfigError, match=r"config.mesh: .* uses 4 devices, but there are 8"):
        mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)
    with pytest.raises(ConfigError, match="only one axis may be -1"):
        mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ConfigError, match=r"config.mesh.tensor=0"):
        mesh_shape({"tensor": 0}, 8)
    with pytest.raises(ConfigError, match=r"unknown mesh axes \['model'\]"):
        mesh_shape({"model": 2}, 8)


def test_rules_are_validated_against_the_mesh():
    mesh = make_mesh({"data": 1, "fsdp": -1, "tensor": 1}, jax.devices()[:1])
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    rules = parse_rules([["batch", ["data", "fsdp"]], ["embed", "fsdp"], ["kv", None]], mesh)
    assert rules == (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("kv", None))
    assert batch_axes(rules) == ("data", "fsdp")
    with pytest.raises(ConfigError, match=r"config.rules\[1\]: \('mlp', 'model'\) names mesh axis 'model'"):
        parse_rules([("embed", "fsdp"), ("mlp", "model")], mesh)
    with pytest.raises(ConfigError, match=r"config.rules\[0\]"):
        parse_rules([("embed",)], mesh)


def test_mesh_from_config_reads_rules_from_either_place():
    from configs import common

    config = common.base("train")
    mesh, rules = mesh_from_config(config)
    assert rules == parse_rules(DEFAULT_RULES, mesh)
    config.rules = None
    config.mesh.rules = [("embed", "bogus")]
    with pytest.raises(ConfigError, match=r"config.mesh.rules\[0\]"):
        mesh_from_config(config)


def test_default_rules_fsdp_and_tensor_parallel():
    rules = DEFAULT_RULES
    assert logical_to_spec(("vocab", "embed"), rules) == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert logical_to_spec(("layers", "embed", "heads", None, "kv"), rules) == \
        jax.sharding.PartitionSpec(None, "fsdp", "tensor", None, None)
    # Activations: the batch takes data and fsdp, so embed stays whole.
    assert logical_to_spec(("batch", "length", "embed"), rules) == \
        jax.sharding.PartitionSpec(("data", "fsdp"), None, None)


def test_param_shardings_refuse_an_axis_the_mesh_does_not_divide():
    model = nnx.eval_shape(lambda: Bloom(BloomConfig(vocab_size=63, hidden_size=16, n_head=2), rngs=nnx.Rngs(0)))
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    shardings = param_shardings(model, mesh, parse_rules(DEFAULT_RULES, mesh))
    assert shardings["word_embeddings"].spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    fake = jax.sharding.AbstractMesh((1, 1, 2), ("data", "fsdp", "tensor"))
    with pytest.raises(ConfigError, match=r"parameter word_embeddings axis 0 \('vocab', size 63\) cannot be split 2"):
        param_shardings(model, fake, DEFAULT_RULES)


def test_initialize_distributed_rejects_unknown_keys():
    with pytest.raises(ConfigError, match=r"config.distributed: unknown keys \['port'\]"):
        initialize_distributed({"port": 1234})
    initialize_distributed({"enabled": False})  # a no-op
    assert not jax.distributed.is_initialized()
