"""The ahead-of-time check (`compile` job): the trainer's step compiled for 8 fake CPU devices without
allocating it; memory per device from shapes and from XLA agrees, shrinks when FSDP grows, is checked
against a device size; a mesh the model cannot be split over stops with the key named; BLOOM sizes
by name have the published parameter counts. Generation's memory per chip (the augment job's weights, KV
cache and logits) is the arithmetic of the config, grows with the slots, shrinks with tensor parallelism,
and says bloom-7b1 in bfloat16 needs 2 chips of v5e for 16 slots but fits one v4.

Compiles run in subprocesses: the fake device count must be set before jax starts its devices; the
generation arithmetic alone runs here, on abstract meshes (no devices).
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
from jax.sharding import AbstractMesh, AxisType

from teacherlm_jax.compile.generation_memory import GIB, generation_memory
from teacherlm_jax.compile.job import REPORT_JSON, REPORT_MD, human_bytes, use_fake_devices
from teacherlm_jax.errors import ConfigError
from teacherlm_jax.init_from import resolve
from teacherlm_jax.models.bloom import BLOOM_SHAPES, bloom_shape
from teacherlm_jax.sharding import DEFAULT_RULES, MESH_AXES, parse_rules
from train_subprocess import REPO, jax_env, main_command

CONFIG = "configs/compile.py:tiny"


def run_compile(workdir, *overrides: str) -> subprocess.CompletedProcess:
    env = jax_env(devices=1)  # the job itself asks for config.fake_devices=8
    return subprocess.run(main_command(CONFIG, workdir, *overrides), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_mesh_the_model_cannot_be_split_over_names_the_key(tmp_path):
    # The tiny model has 4 heads: tensor parallelism over 8 devices cannot split them.
    proc = run_compile(tmp_path, "--config.mesh.fsdp=1", "--config.mesh.tensor=8")
    assert proc.returncode != 0
    assert proc.returncode == 2 and re.search(r"error: config.rules: parameter h/\S+ axis \d \('heads', size 4\) cannot be split "
                     r"8 ways over mesh axes 'tensor'", proc.stderr), proc.stderr[-3000:]
    assert not (tmp_path / REPORT_JSON).exists()


def test_bloom_sizes_have_the_published_parameter_counts():
    published = {"bloom-560m": 559_214_592, "bloom-7b1": 7_069_016_064, "bloom": 176_247_271_424}
    for name, count in published.items():
        model = resolve(dict(family="bloom", **bloom_shape(name))).abstract()
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        assert sum(math.prod(x.shape) for x in jax.tree.leaves(params)) == count, name
    assert bloom_shape("bigscience/bloom-176b") == bloom_shape("bloom")
    with pytest.raises(ConfigError, match="unknown BLOOM size 'bloom-9b'"):
        bloom_shape("bloom-9b")


def test_hub_bloom_ids_resolve_to_their_shapes_without_download(tmp_path):
    model = resolve(dict(init_from="bigscience/bloom-3b", family="bloom", dtype="bfloat16"), weights=False)
    assert model.init_from is None and model.tokenizer is None
    assert model.config == resolve(dict(family="bloom", dtype="bfloat16", **bloom_shape("bloom-3b"))).config
    with pytest.raises(ConfigError, match=r"config.model.n_head=16 disagrees with bigscience/bloom-3b \(n_head=32\)"):
        resolve(dict(init_from="bigscience/bloom-3b", n_head=16), weights=False)
    local = tmp_path / "bigscience" / "bloom-3b"  # a local directory is read as given, even under a hub name
    local.mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"config.model.init_from=.*bloom-3b': .*config.json: missing"):
        resolve(dict(init_from=str(local)), weights=False)


def test_config_variants():
    for name in BLOOM_SHAPES:
        config = compile_config.get_config(name)
        assert config.job == "compile" and config.model.init_from is None
        assert config.model.hidden_size == BLOOM_SHAPES[name][0] and config.data.seq_len == 2048
    assert compile_config.get_config("tiny").model.hidden_size == 32
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        compile_config.get_config("huge")


@pytest.mark.parametrize("seq_len, message", [
    (None, r"config.data.seq_len=None: synthetic_lm needs a length"),  # the train job's own check, run first
    (4096, r"config.data.seq_len=4096 must be in \[1, 2048\], the model's max_position_embeddings"),
])
def test_seq_len_is_checked_against_the_model_positions_before_compiling(seq_len, message):
    from teacherlm_jax.compile.job import dry_run

    config = compile_config.get_config("tiny")
    config.fake_devices = 0  # this process's devices: the check comes before any compile
    config.data.seq_len = seq_len
    with pytest.raises(ConfigError, match=message):
        dry_run(config)


def test_fake_devices_need_a_fresh_process():
    jax.devices()  # this process has started its devices
    with pytest.raises(ConfigError, match="config.fake_devices=8: jax has already started its devices"):
        use_fake_devices(8)
    with pytest.raises(ConfigError, match=r"config.fake_devices=-1 must be >= 0"):
        use_fake_devices(-1)


def abstract_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1) -> tuple[AbstractMesh, tuple]:
    mesh = AbstractMesh((data, fsdp, tensor), MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    return mesh, parse_rules(DEFAULT_RULES, mesh)


def expected_generation(model, num_params: int, slots: int, length: int, data: int, tensor: int) -> dict[str, int]:
    """Bytes per chip by hand: BLOOM's parameters whose only axis is embed (the layer norms, the biases of the
    projections back to embed: h * (4 + 6 * layers)) are whole on every chip, every other one is split
    `tensor` ways (fsdp=1); the cache is 2 buffers per layer [slots, heads, length, head_dim], rows split
    over data (padded up), heads over tensor; the logits [slots, vocab] float32, vocab over tensor."""
    h, layers, heads, vocab = model["hidden_size"], model["n_layer"], model["n_head"], model["vocab_size"]
    size = {"float32": 4, "bfloat16": 2}[model["dtype"]]
    whole = h * (4 + 6 * layers)
    rows = math.ceil(slots / data)
    weights = ((num_params - whole) // tensor + whole) * size
    kv = 2 * layers * rows * (heads // tensor) * length * (h // heads) * size
    logits = rows * (vocab // tensor) * 4
    return {"weights": weights, "kv_cache": kv, "logits": logits, "total": weights + kv + logits}


@pytest.mark.slow
def test_generation_memory_is_the_config_arithmetic(tmp_path):
    # 8 fake devices as data 4 x tensor 2: 6 slots become 2 rows per chip (padded), tiny's 4 heads 2 per chip.
    proc = run_compile(tmp_path, "--config.mesh.fsdp=1", "--config.mesh.data=-1", "--config.mesh.tensor=2",
                       "--config.generation_batch_size=6", "--config.generation_prompt_tokens=8",
                       "--config.generation_max_new_tokens=9")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / REPORT_JSON).read_text())
    gen, model = summary["generation"], summary["model"]
    assert gen["num_params"] == summary["num_params"] and gen["dtype"] == model["dtype"] == "float32"
    assert (gen["slots"], gen["slots_per_chip"], gen["cache_length"]) == (6, 2, 8 + 9 - 1)
    mem = gen["bytes_per_chip"]
    assert mem == expected_generation(model, summary["num_params"], 6, 16, data=4, tensor=2)
    for chip, gib in (("v5e", 16), ("v4", 32)):
        verdict = gen["chips"][chip]
        most = verdict.pop("max_slots")  # the most slots that fit: a multiple of the 4 data shards
        assert verdict == {"memory_gib": gib, "fits": True, "headroom_bytes": gib * GIB - mem["total"]}
        total = lambda slots: expected_generation(model, summary["num_params"], slots, 16, data=4, tensor=2)["total"]
        assert most % 4 == 0 and total(most) <= gib * GIB < total(most + 4)
    # XLA's compiled decode step takes exactly the weights, the cache and the step's token, mask and index,
    # and updates the donated cache in place.
    xla = gen["xla_decode_step"]
    assert xla["inputs"] == 2 * 4 + 2 * 16 * 4 + 4
    assert xla["arguments"] == mem["weights"] + mem["kv_cache"] + xla["inputs"]
    assert xla["aliased"] == mem["kv_cache"] + 4
    text = (tmp_path / REPORT_MD).read_text()
    assert "## Generation (augment job's decode engine)" in text and text in proc.stdout
    assert f"| **total** | {human_bytes(mem['total'])} | {mem['total']} |" in text
    assert "| v5e | 16 GiB |" in text and "DOES NOT FIT" not in text


def test_generation_kv_cache_grows_with_slots_and_weights_shrink_with_tensor():
    config = compile_config.get_config("tiny")
    model = config.model.to_dict()
    assert (config.generation_batch_size, config.generation_prompt_tokens, config.generation_max_new_tokens) == \
        (16, 512, 512)
    by_slots = {s: generation_memory(model, *abstract_mesh(), s, 8, 9)["bytes_per_chip"] for s in (8, 16, 32)}
    assert by_slots[16]["kv_cache"] == 2 * by_slots[8]["kv_cache"]
    assert by_slots[32]["kv_cache"] == 4 * by_slots[8]["kv_cache"]
    assert by_slots[8]["weights"] == by_slots[32]["weights"]
    by_tensor = {t: generation_memory(model, *abstract_mesh(tensor=t), 16, 8, 9) for t in (1, 2, 4)}
    n = by_tensor[1]["num_params"]
    for t, gen in by_tensor.items():
        assert gen["bytes_per_chip"] == expected_generation(model, n, 16, 16, data=1, tensor=t)
    assert by_tensor[1]["bytes_per_chip"]["weights"] == 4 * n  # float32, whole on one chip
    weights = [by_tensor[t]["bytes_per_chip"]["weights"] for t in (1, 2, 4)]
    assert weights[0] > weights[1] > weights[2]


def test_bloom_7b1_generation_needs_two_v5e_chips_for_16_slots():
    config = compile_config.get_config("bloom-7b1")
    model = config.model.to_dict()
    assert model["dtype"] == "bfloat16"
    slots, length = config.generation_batch_size, config.generation_prompt_tokens + config.generation_max_new_tokens - 1
    totals = {}
    for tensor in (1, 2, 4):  # one model replica on `tensor` chips decodes all 16 slots
        gen = generation_memory(model, *abstract_mesh(tensor=tensor), slots, config.generation_prompt_tokens,
                                config.generation_max_new_tokens)
        expected = expected_generation(model, 7_069_016_064, slots, length, data=1, tensor=tensor)
        assert gen["bytes_per_chip"] == expected
        for chip, gib in (("v5e", 16), ("v4", 32)):
            assert gen["chips"][chip]["fits"] is (expected["total"] <= gib * GIB)
            assert gen["chips"][chip]["headroom_bytes"] == gib * GIB - expected["total"]
        totals[tensor] = gen
    # 14.1 GB of bfloat16 weights (13.2 GiB) + 16 x 1023 positions of cache (7.5 GiB) on one chip: over v5e's 16 GiB,
    # within v4's 32; split over 2 or 4 chips it fits v5e.
    assert [totals[t]["chips"]["v5e"]["fits"] for t in (1, 2, 4)] == [False, True, True]
    assert all(totals[t]["chips"]["v4"]["fits"] for t in (1, 2, 4))
    # The augment job's default mesh on a v5e-8 host (data=8) gives each chip 2 of the 16 slots: it fits.
    host = generation_memory(model, *abstract_mesh(data=8), slots, 512, 512)
    assert host["bytes_per_chip"] == expected_generation(model, 7_069_016_064, slots, length, data=8, tensor=1)
    assert host["slots_per_chip"] == 2 and host["chips"]["v5e"]["fits"]


def test_prefix_pool_holds_each_prefix_once_and_fits_more_slots():
    """With 384 of 512 prompt tokens shared by units of 3 rows, a row's cache holds its own 128 + 511 positions
    and the pool 2 x 16 / 3 -> 11 prefixes of 384, whole on each chip; more slots fit a chip than with whole rows."""
    config = compile_config.get_config("bloom-7b1")
    model = config.model.to_dict()
    mesh = abstract_mesh(tensor=2)
    whole = generation_memory(model, *mesh, 16, 512, 512)
    pooled = generation_memory(model, *mesh, 16, 512, 512, prefix_tokens=384, rows_per_prefix=3)
    h, layers, heads = model["hidden_size"], model["n_layer"], model["n_head"]
    per_position = 2 * layers * (heads // 2) * (h // heads) * 2  # keys and values, heads split 2 ways, bfloat16
    mem = pooled["bytes_per_chip"]
    assert (pooled["cache_length"], pooled["prefix_pool"], pooled["rows_per_prefix"]) == (639, 11, 3)
    assert mem["kv_cache"] == 16 * 639 * per_position and mem["prefix_pool"] == 11 * 384 * per_position
    assert mem["weights"] == whole["bytes_per_chip"]["weights"] and mem["logits"] == whole["bytes_per_chip"]["logits"]
    assert mem["total"] == mem["weights"] + mem["kv_cache"] + mem["prefix_pool"] + mem["logits"]
    assert whole["bytes_per_chip"]["kv_cache"] == 16 * 1023 * per_position and "prefix_pool" not in whole["bytes_per_chip"]
    for chip in ("v5e", "v4"):
        assert pooled["chips"][chip]["max_slots"] > whole["chips"][chip]["max_slots"] > 0
    with pytest.raises(ConfigError, match="generation_prefix_tokens=512"):
        generation_memory(model, *mesh, 16, 512, 512, prefix_tokens=512)


def test_generation_settings_that_cannot_work_name_the_key():
    model = compile_config.get_config("tiny").model.to_dict()
    with pytest.raises(ConfigError, match=r"config.generation_prompt_tokens \+ generation_max_new_tokens = 2049 "
                                          r"exceeds config.model.max_position_embeddings=2048"):
        generation_memory(model, *abstract_mesh(), 16, 1537, 512)
    assert generation_memory(model, *abstract_mesh(), 16, 1536, 512)["cache_length"] == 2047
    with pytest.raises(ConfigError, match=r"config.generation_batch_size=0 must be an integer >= 1"):
        generation_memory(model, *abstract_mesh(), 0, 8, 8)
