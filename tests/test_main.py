"""The entry point: job registry, config variants, and bad configs stopping with the key named."""
from __future__ import annotations

import subprocess

import pytest
from absl import app

from configs import train as train_config
from teacherlm_jax import main
from teacherlm_jax.errors import ConfigError
from teacherlm_jax.train import loop
from train_subprocess import REPO, jax_env, main_command


def test_every_registered_job_resolves_to_a_run_function():
    assert main.resolve_job("train") is loop.run
    for name in main.JOBS:
        assert callable(main.resolve_job(name))
    with pytest.raises(app.UsageError, match=r"config.job='nope'; known jobs"):
        main.resolve_job("nope")


def test_config_variants():
    tiny = train_config.get_config("tiny")
    assert tiny.job == "train" and tiny.model.init_from is None and tiny.data.source == "synthetic_lm"
    assert train_config.get_config().model.init_from == "bigscience/bloom-560m"
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        train_config.get_config("huge")


@pytest.mark.parametrize("override, message", [
    (dict(grad_accum_steps=3), r"config.batch_size=8 is not divisible by the data-parallel size 1 .* "
                               r"grad_accum_steps=3"),
    (dict(rules=[("embed", "fsdp"), ("mlp", "model")]), r"config.rules\[1\]: \('mlp', 'model'\) names mesh axis"),
    (dict(log_every=0), r"config.log_every=0 must be >= 1"),
])
def test_bad_train_configs_name_the_key(tmp_path, override, message):
    config = train_config.get_config("tiny")
    config.update(override)
    with pytest.raises(ConfigError, match=message):
        loop.train(config, tmp_path)


def test_bad_model_keys_name_the_key(tmp_path):
    config = train_config.get_config("tiny")
    with config.unlocked():
        config.model.hiden_size = 8
    with pytest.raises(ConfigError, match=r"config.model: unknown keys \['hiden_size'\]"):
        loop.train(config, tmp_path)


def test_main_stops_on_a_mesh_that_does_not_fit_the_devices(tmp_path):
    proc = subprocess.run(main_command("configs/train.py:tiny", tmp_path, "--config.mesh.data=3"), cwd=REPO,
                          env=jax_env(devices=2), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "ConfigError: config.mesh: {'data': 3, 'fsdp': -1, 'tensor': 1} needs a multiple of 3 devices, " \
           "but there are 2" in proc.stderr
