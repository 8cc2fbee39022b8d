"""The ahead-of-time check (`compile` job): the trainer's step compiled for 8 fake CPU devices without
allocating it; memory per device from shapes and from XLA agrees, shrinks when FSDP grows, is checked
against a device size; a mesh the model cannot be split over stops with the key named; BLOOM sizes
by name have the published parameter counts.

Compiles run in subprocesses: the fake device count must be set before jax starts its devices.
"""
from __future__ import annotations

import json
import math
import re
import subprocess

import jax
import pytest
from flax import nnx

from configs import compile as compile_config
from teacherlm_jax.compile import (
    BLOOM_SHAPES, REPORT_JSON, REPORT_MD, bloom_shape, human_bytes, resolve_model, use_fake_devices,
)
from teacherlm_jax.sharding import ConfigError
from teacherlm_jax.train.builders import abstract_model
from train_subprocess import REPO, jax_env, main_command

CONFIG = "configs/compile.py:tiny"


def run_compile(workdir, *overrides: str) -> subprocess.CompletedProcess:
    env = jax_env(devices=1)  # the job itself asks for config.fake_devices=8
    return subprocess.run(main_command(CONFIG, workdir, *overrides), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_memory_per_device_shrinks_when_fsdp_grows(tmp_path):
    reports = {}
    for fsdp, limit in ((1, 1e-6), (8, 1000.0)):
        proc = run_compile(tmp_path / f"fsdp{fsdp}", f"--config.mesh.fsdp={fsdp}", "--config.mesh.data=-1",
                           f"--config.device_memory_gib={limit}")
        summary = json.loads((tmp_path / f"fsdp{fsdp}" / REPORT_JSON).read_text())
        assert summary["mesh"] == {"data": 8 // fsdp, "fsdp": fsdp, "tensor": 1}
        assert summary["devices"] == 8 and summary["platform"] == "cpu"
        mem = summary["memory_per_device"]
        assert "**peak**" in proc.stdout and human_bytes(mem["peak"]) in proc.stdout
        assert (tmp_path / f"fsdp{fsdp}" / REPORT_MD).read_text() in proc.stdout
        # XLA's per-device arguments are exactly the sharded state (step counter included) plus the batch.
        assert mem["arguments"] == mem["params"] + mem["optimizer"] + mem["batch"] + 4
        assert mem["aliased"] > 0.9 * mem["arguments"]  # the state is donated and updated in place
        assert mem["temp"] > 0
        assert mem["peak"] == mem["arguments"] + mem["outputs"] - mem["aliased"] + mem["temp"] + mem["generated_code"]
        # The verdict follows the limit: 1e-6 GiB cannot hold the step (exit status 1), 1000 GiB can.
        assert summary["fits"] is (fsdp == 8)
        assert proc.returncode == (0 if fsdp == 8 else 1), proc.stderr[-3000:]
        assert ("DOES NOT FIT" in proc.stdout) is (fsdp == 1)
        reports[fsdp] = summary
    replicated, sharded = reports[1]["memory_per_device"], reports[8]["memory_per_device"]
    n = reports[1]["num_params"]
    assert replicated["params"] == 4 * n  # float32, whole on every device
    assert replicated["optimizer"] == 8 * n + 8  # Adam's two moments and two int32 step counters
    assert sharded["params"] < replicated["params"] / 4
    assert sharded["optimizer"] < replicated["optimizer"] / 4
    assert sharded["arguments"] < replicated["arguments"] / 4
    assert sharded["batch"] == replicated["batch"]  # one row per device either way


def test_a_mesh_the_model_cannot_be_split_over_names_the_key(tmp_path):
    # The tiny model has 4 heads: tensor parallelism over 8 devices cannot split them.
    proc = run_compile(tmp_path, "--config.mesh.fsdp=1", "--config.mesh.tensor=8")
    assert proc.returncode != 0
    assert re.search(r"ConfigError: config.rules: parameter h/\S+ axis \d \('heads', size 4\) cannot be split "
                     r"8 ways over mesh axes 'tensor'", proc.stderr), proc.stderr[-3000:]
    assert not (tmp_path / REPORT_JSON).exists()


def test_bloom_sizes_have_the_published_parameter_counts():
    published = {"bloom-560m": 559_214_592, "bloom-7b1": 7_069_016_064, "bloom": 176_247_271_424}
    for name, count in published.items():
        model = abstract_model(dict(family="bloom", **bloom_shape(name)))
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        assert sum(math.prod(x.shape) for x in jax.tree.leaves(params)) == count, name
    assert bloom_shape("bigscience/bloom-176b") == bloom_shape("bloom")
    with pytest.raises(ConfigError, match="unknown BLOOM size 'bloom-9b'"):
        bloom_shape("bloom-9b")


def test_hub_bloom_ids_resolve_to_their_shapes_without_download(tmp_path):
    model = resolve_model(dict(init_from="bigscience/bloom-3b", family="bloom", dtype="bfloat16"))
    assert model == dict(init_from=None, family="bloom", dtype="bfloat16", **bloom_shape("bloom-3b"))
    with pytest.raises(ConfigError, match=r"config.model.n_head=16 disagrees with bigscience/bloom-3b \(n_head=32\)"):
        resolve_model(dict(init_from="bigscience/bloom-3b", n_head=16))
    local = dict(init_from=str(tmp_path))  # a local directory is read as given
    assert resolve_model(local) == local


def test_config_variants():
    for name in BLOOM_SHAPES:
        config = compile_config.get_config(name)
        assert config.job == "compile" and config.model.init_from is None
        assert config.model.hidden_size == BLOOM_SHAPES[name][0] and config.data.seq_len == 2048
    assert compile_config.get_config("tiny").model.hidden_size == 32
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        compile_config.get_config("huge")


def test_fake_devices_need_a_fresh_process():
    jax.devices()  # this process has started its devices
    with pytest.raises(ConfigError, match="config.fake_devices=8: jax has already started its devices"):
        use_fake_devices(8)
    with pytest.raises(ConfigError, match=r"config.fake_devices=-1 must be >= 0"):
        use_fake_devices(-1)
