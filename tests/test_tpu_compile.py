"""The recipe's programs compiled for a TPU slice by XLA's TPU compiler (libtpu), on this CPU host.

Tiny BLOOM and OPT on a v5e slice of 4 chips: the training step on FSDP and tensor meshes, the augment
engine's insert, decode round and shrink, scoring and `generate`, each with XLA's TPU memory and cost.
The decode round is one on-device loop (no loop over rows writing the KV cache) that never reaches the
host, and its cache write equals the in-place one; weights and KV cache are in the compute dtype; FSDP
gathers weights and data parallelism does not. Slice names, meshes that do not factor the chips, a program
too big for the chip (exit 1 naming it), and jobs on a host with libtpu but no TPU starting the CPU backend
only.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs import compile as compile_config
from teacherlm_jax.compile import job
from teacherlm_jax.compile.programs import compile_and_report, generation_programs, out_of_memory_bytes
from teacherlm_jax.compile.topology import CHIPS, known_names, parse_slice
from teacherlm_jax.compile.train_program import lower_train_step, unrolled_steps, whole_step_cost
from teacherlm_jax.errors import ConfigError
from teacherlm_jax.models import kv_cache
from teacherlm_jax.models.bloom import bloom_shape
from teacherlm_jax.platforms import tpu_chips_attached
from teacherlm_jax.sharding import mesh_from_config
from teacherlm_jax.train.loop import train_setup
from train_subprocess import REPO

pytest.importorskip("libtpu", reason='XLA\'s TPU compiler: pip install -e ".[test]" (jax[tpu])')

SLICE = "v5e:2x2"
PROGRAMS = ("train_step", "insert", "decode_round", "shrink", "scoring", "generate")
OPT = dict(family="opt", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
           max_position_embeddings=64, pad_token_id=1)


def tiny(family: str = "bloom", **mesh) -> object:
    """configs/compile.py:tiny on SLICE in bfloat16, small generation sizes."""
    config = compile_config.get_config("tiny")
    if family == "opt":
        config.model = compile_config.common.model(None, dtype="bfloat16", **OPT)
    else:
        config.model.dtype = "bfloat16"
    config.topology = SLICE
    config.mesh.update({"data": 1, "fsdp": 1, "tensor": 1, **mesh})
    config.generation_batch_size, config.generation_prompt_tokens, config.generation_max_new_tokens = 8, 16, 8
    return config


@pytest.mark.slow
@pytest.mark.parametrize("family,mesh", [("bloom", {"fsdp": -1}), ("opt", {"fsdp": 2, "tensor": 2})])
def test_every_program_compiles_for_the_slice(family, mesh):
    summary = job.dry_run(tiny(family, **mesh))
    assert summary["platform"] == "tpu" and summary["device_kind"] == CHIPS["v5e"].device_kind
    assert summary["topology"] == SLICE and summary["tpu"]["chips"] == 4 and summary["devices"] == 4
    assert summary["model"]["family"] == family
    assert tuple(summary["programs"]) == PROGRAMS
    chip = CHIPS["v5e"]
    for name, p in summary["programs"].items():
        assert 0 < p["peak_bytes"] < 2 ** 30 and p["fits"] is True, name
        assert p["flops"] > 0 and p["bytes_accessed"] > 0, name
        assert p["roofline_seconds"] == pytest.approx(max(p["flops"] / chip.peak_bf16_flops,
                                                          p["bytes_accessed"] / chip.hbm_bytes_per_s)), name
    assert summary["fits"] is True and summary["device_memory_gib"] == chip.hbm_gib
    # Prefilling every slot with a prompt does more work than one decode step over them.
    assert summary["programs"]["insert"]["flops"] > summary["programs"]["decode_round"]["flops"]
    ceilings = summary["ceilings"]
    assert ceilings["decode_tokens_per_s"] == pytest.approx(8 / summary["programs"]["decode_round"]["roofline_seconds"])
    assert 0 < ceilings["train_mfu"] < 1
    text = job.format_report(summary)
    assert "not a measurement" in text and all(f"| {name} |" in text for name in PROGRAMS)


@pytest.mark.slow
def test_prefix_pool_programs_compile_for_the_slice():
    """With a shared prefix (12 of 16 prompt tokens, units of 3 rows) the augment engine's programs are its prefix
    pool's: rows hold their own 4 + 8 - 1 positions, the pool 2 x 8 / 3 -> 6 prefixes of 12."""
    config = tiny("bloom", fsdp=-1)
    config.generation_prefix_tokens, config.generation_rows_per_prefix = 12, 3
    summary = job.dry_run(config)
    gen = summary["generation"]
    assert (gen["cache_length"], gen["prefix_pool"]) == (11, 6) and summary["fits"] is True
    assert tuple(summary["programs"]) == PROGRAMS
    assert all(p["fits"] and p["flops"] > 0 for p in summary["programs"].values())
    text = job.format_report(summary)
    assert "prefix pool: 6 prefixes of 12 tokens" in text and "| prefix pool (" in text
    tpu = parse_slice(SLICE)
    mesh, rules = mesh_from_config(config, tpu.devices())
    lowered = generation_programs(config.model.to_dict(), mesh, rules, slots=8, prompt_tokens=16, max_new_tokens=8,
                                  prefix_tokens=12, rows_per_prefix=3)
    state = lowered["decode_round"]().args_info[0][1]
    assert state.cache.key[0].shape[2] == 11 and state.cache.prefix.key[0].shape[:3:2] == (6, 12)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["bloom", "opt"])
def test_decode_round_is_one_device_loop_in_the_compute_dtype(family):
    config = tiny(family, fsdp=-1)
    tpu = parse_slice(SLICE)
    mesh, rules = mesh_from_config(config, tpu.devices())
    lowered = generation_programs(config.model.to_dict(), mesh, rules, slots=8, prompt_tokens=16, max_new_tokens=8)
    decode_round = lowered["decode_round"]()
    params, state = decode_round.args_info[0][:2]
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in state.cache.key + state.cache.value} == {jnp.dtype(jnp.bfloat16)}
    hlo = decode_round.compile().as_text()
    assert hlo.count(" while(") == 1, "the round's loop only: no loop over rows writing the KV cache"
    for host in ("outfeed", "infeed", " send(", " recv(", "host_callback", "xla_python", "callback"):
        assert host not in hlo, host


def test_a_tpu_program_writes_each_rows_column_as_the_in_place_update_does(monkeypatch):
    cache = jax.random.normal(jax.random.key(0), (4, 2, 6, 3))
    x = jax.random.normal(jax.random.key(1), (4, 2, 1, 3))
    index = jnp.array([0, 5, 2, 9])  # the last: past the cache, clamped to its last column
    in_place = kv_cache.write_rows(cache, x, index)
    monkeypatch.setattr(kv_cache, "target_platform", lambda: "tpu")
    selected = jax.jit(kv_cache.write_rows)(cache, x, index)
    assert (selected == in_place).all()
    assert (selected[3, :, 5] == x[3, :, 0]).all() and (selected[1, :, :5] == cache[1, :, :5]).all()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["bloom", "opt"])
def test_fsdp_gathers_weights_and_data_parallelism_does_not(family):
    hlos = {}
    for name, mesh in (("fsdp", {"fsdp": 4}), ("data", {"data": 4})):
        config = tiny(family, **mesh)
        devices = parse_slice(SLICE).devices()
        mesh_, rules = mesh_from_config(config, devices)
        setup = train_setup(config, mesh_, rules, weights=False)
        lowered, _ = lower_train_step(config, setup, mesh_, rules)
        hlos[name] = lowered.compile().as_text()
    assert "all-gather" in hlos["fsdp"]
    assert "all-gather" not in hlos["data"]
    assert "all-reduce" in hlos["data"]  # the gradients are still summed over the data-parallel chips


@pytest.mark.slow
def test_the_training_steps_cost_counts_every_layer_and_chunk():
    # XLA counts a loop's body once: the scanned stack of 4 layers, the loss's 2 chunks of 16 positions and 2
    # microbatches would count as one each. The step's cost from its unrolled 1- and 2-layer variants equals
    # XLA's count for the same step with every loop unrolled.
    config = tiny("bloom", fsdp=-1)
    config.model.n_layer, config.loss_chunk, config.grad_accum_steps = 4, 16, 2
    mesh, rules = mesh_from_config(config, parse_slice(SLICE).devices())
    layers, microbatches, variants = unrolled_steps(config, mesh, rules)
    assert (layers, microbatches) == (4, 2)
    costs = [compile_and_report(v, None, None)[1] for v in variants]
    flops, accessed = whole_step_cost(layers, microbatches, *((c.flops, c.bytes_accessed) for c in costs))
    unrolled = config.copy_and_resolve_references()
    unrolled.model.scan_layers, unrolled.loss_chunk, unrolled.grad_accum_steps = False, 0, 1
    unrolled.batch_size //= 2
    lowered, _ = lower_train_step(unrolled, train_setup(unrolled, mesh, rules, weights=False), mesh, rules)
    reference = compile_and_report(lowered, None, None)[1]
    assert flops == pytest.approx(2 * reference.flops, rel=0.02)
    assert accessed == pytest.approx(2 * reference.bytes_accessed, rel=0.1)
    scanned, _ = lower_train_step(config, train_setup(config, mesh, rules, weights=False), mesh, rules)
    assert compile_and_report(scanned, None, None)[1].flops < 0.6 * flops  # what XLA counts for the loops


@pytest.mark.slow
def test_cost_variants_the_chip_refuses_are_compiled_fewer_rows_at_a_time(monkeypatch):
    # The unrolled variants hold the loss over all positions at once, which can outgrow a chip the chunked step
    # fits (bloom-560m at 8 rows a chip on v5e). Refused, they are compiled for half the rows in twice as many
    # pieces, whose costs add up to the step's (each piece's weight reads and update counted again: a slight
    # overcount); refused at one row a chip, the step has no cost and no bound, and still fits.
    config = tiny("bloom", fsdp=-1)
    config.batch_size = 16  # 4 rows a chip
    tpu = parse_slice(SLICE)
    mesh, rules = mesh_from_config(config, tpu.devices())
    lowered, _ = lower_train_step(config, train_setup(config, mesh, rules, weights=False), mesh, rules)
    step = compile_and_report(lowered, tpu.chip, 16 * 2 ** 30)[1]
    whole = job.whole_train_step(config, mesh, rules, step, tpu)

    def refusing(refused: int):
        calls = []

        def compile_or_refuse(lowering, chip, limit_bytes):
            calls.append(lowering)
            report = compile_and_report(lowering, chip, limit_bytes)[1]
            if len(calls) <= refused:
                report = dataclasses.replace(report, flops=None, bytes_accessed=None, error="RESOURCE_EXHAUSTED")
            return None, report
        monkeypatch.setattr(job, "compile_and_report", compile_or_refuse)
        return calls

    calls = refusing(2)  # both variants at 4 rows a chip
    pieces = job.whole_train_step(config, mesh, rules, step, tpu)
    assert len(calls) == 4
    assert pieces.flops == pytest.approx(whole.flops, rel=0.05)
    assert whole.bytes_accessed <= pieces.bytes_accessed <= 2 * whole.bytes_accessed
    calls = refusing(6)  # at 4, 2 and 1 rows a chip
    unbounded = job.whole_train_step(config, mesh, rules, step, tpu)
    assert len(calls) == 6
    assert unbounded.flops is None and unbounded.roofline_seconds is None and unbounded.fits == step.fits


@pytest.mark.slow
def test_a_program_that_does_not_fit_exits_1_naming_it(tmp_path, capsys):
    config = tiny("bloom", fsdp=-1)
    config.device_memory_gib = 1e-4  # ~105 KB a chip
    with pytest.raises(SystemExit) as stop:
        job.run(config, str(tmp_path))
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert re.search(r"error: does not fit: train_step needs [\d.]+ \w+ per chip, [\d.]+ \w+ more than 0.0001 GiB", err)
    summary = json.loads((tmp_path / job.REPORT_JSON).read_text())
    assert summary["fits"] is False and summary["programs"]["train_step"]["fits"] is False
    assert "| train_step |" in (tmp_path / job.REPORT_MD).read_text()


@pytest.mark.slow
def test_a_program_the_compiler_refuses_is_reported_as_not_fitting():
    # bloom-1b7's weights on every chip and 96 slots of 1023 positions each: more than a v5e chip's HBM.
    tpu = parse_slice(SLICE)
    config = tiny("bloom", data=4)
    mesh, rules = mesh_from_config(config, tpu.devices())
    model = {"family": "bloom", "dtype": "bfloat16", **bloom_shape("bloom-1b7")}
    lowered = generation_programs(model, mesh, rules, slots=4 * 96, prompt_tokens=512, max_new_tokens=512)
    compiled, report = compile_and_report(lowered["decode_round"], tpu.chip, int(tpu.chip.hbm_gib * 2 ** 30))
    assert compiled is None and report.fits is False and report.roofline_seconds is None
    assert report.peak_bytes > tpu.chip.hbm_gib * 2 ** 30 and "HBM" in report.error
    assert out_of_memory_bytes("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 20.5G of 15.75G "
                               "hbm.") == (int(20.5 * 2 ** 30), int(15.75 * 2 ** 30))


@pytest.mark.parametrize("name,generation,shape,hosts", [
    ("v4-8", "v4", (2, 2, 1), 1), ("v4-16", "v4", (2, 2, 2), 2), ("v5litepod-8", "v5e", (2, 4), 1),
    ("v5e-8", "v5e", (2, 4), 1), ("v5e-32", "v5e", (4, 8), 8), ("v5p-8", "v5p", (2, 2, 1), 1),
    ("v6e-8", "v6e", (2, 4), 1), ("v5e:2x4", "v5e", (2, 4), 1), ("v5p:2x2x2", "v5p", (2, 2, 2), 2)])
def test_slice_names(name, generation, shape, hosts):
    tpu = parse_slice(name)
    assert (tpu.generation, tpu.shape, tpu.hosts) == (generation, shape, hosts)
    devices = tpu.devices()
    assert len(devices) == tpu.chips and {d.device_kind for d in devices} == {CHIPS[generation].device_kind}
    assert len({d.process_index for d in devices}) == hosts


def test_unknown_slices_and_meshes_that_do_not_factor_are_refused():
    for bad in ("v5e-7", "v3-8", "tpu", "v4-9"):
        with pytest.raises(ConfigError, match=r"config.topology=.*unknown TPU slice; known: .*v5litepod-\{1,4,8"):
            parse_slice(bad)
    assert "v6e-256" in known_names() and "v4-8" in known_names()
    with pytest.raises(ConfigError, match=r"config.mesh: .*needs a multiple of 3 devices, but there are 4"):
        job.dry_run(tiny("bloom", tensor=3))


def test_pci_probe_counts_tpu_chips(tmp_path):
    for i, (vendor, device) in enumerate([("0x1ae0", "0x0063"), ("0x1ae0", "0x0042"), ("0x8086", "0x0063")]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "vendor").write_text(vendor + "\n")
        (tmp_path / str(i) / "device").write_text(device + "\n")
    assert tpu_chips_attached(str(tmp_path)) == 1  # a v5e chip; Google's NIC and another vendor's device are not


@pytest.mark.slow
def test_jobs_on_a_host_without_tpu_start_the_cpu_backend_only():
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    code = ("from teacherlm_jax.platforms import cpu_only_without_tpu\n"
            "print(cpu_only_without_tpu())\nimport jax\nprint(jax.default_backend(), jax.config.jax_platforms)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if tpu_chips_attached():
        pytest.skip("this host has TPU chips")
    assert proc.stdout.split() == ["True", "cpu", "cpu"]
    assert "TPU" not in proc.stderr  # libtpu never searched for a slice
