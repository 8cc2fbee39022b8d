"""Ahead-of-time check: compile one training step for a config's mesh and report the memory per device.

Nothing is allocated: the train state and the batch are sharded `jax.ShapeDtypeStruct`s, and the step
is the trainer's own (`make_train_step`), lowered and compiled for the configured mesh, remat policy,
dtypes, batch size, sequence length and gradient accumulation. With `config.fake_devices=N` it compiles
for N fake CPU devices, so a laptop can tell whether a configuration fits before chips are rented;
with `fake_devices=0` it compiles for the machine's own devices (exact numbers on the target).

    python -m teacherlm_jax.main --config configs/compile.py:bloom-7b1 --workdir /tmp/aot \\
        --config.fake_devices=8 --config.mesh.fsdp=-1 --config.device_memory_gib=16

It also sizes generation, the augment job's decode engine on the same mesh (`generation_memory.py`):
per chip the teacher's weights in the compute dtype, the KV cache of `config.generation_batch_size`
slots of `generation_prompt_tokens + generation_max_new_tokens - 1` positions and one step's logits,
with a verdict for v5e (16 GiB) and v4 (32 GiB) chips, beside XLA's analysis of one compiled decode step.

Writes WORKDIR/compile_report.json and compile_report.md; exits with status 1 when the training step's
estimated peak exceeds `config.device_memory_gib` (0: not checked).
"""
from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from teacherlm_jax import report_json
from teacherlm_jax.compile.generation_memory import CHIPS, GIB, decode_step_memory, generation_memory
from teacherlm_jax.compile.programs import ProgramReport, compile_and_report, generation_programs, roofline_seconds
from teacherlm_jax.compile.train_program import lower_train_step, unrolled_steps, whole_step_cost
from teacherlm_jax.compile.topology import TpuSlice, parse_slice
from teacherlm_jax.config_checks import raise_all
from teacherlm_jax.console import report_summary
from teacherlm_jax.errors import ConfigError
from teacherlm_jax.paths import workdir_path, write_atomic
from teacherlm_jax.run_config import write_config
from teacherlm_jax.sharding import LogicalRules, data_parallel_size, mesh_from_config
from teacherlm_jax.train.checks import validate
from teacherlm_jax.train.loop import TrainSetup, check_seq_len, loss_chunk, train_setup

REPORT_JSON = "compile_report.json"
REPORT_MD = "compile_report.md"


def use_fake_devices(count: int) -> None:
    """`count` CPU devices for this process; must run before jax has started a backend."""
    if count < 0:
        raise ConfigError(f"config.fake_devices={count} must be >= 0 (0: the machine's own devices)")
    if count == 0:
        return
    if jax.distributed.is_initialized():
        raise ConfigError(f"config.fake_devices={count} on a multi-process launch: set "
                          f"--config.distributed.enabled=False (or fake_devices=0 for this machine's devices)")
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError as e:
        raise ConfigError(f"config.fake_devices={count}: jax has already started its devices in this process; "
                          f"run the compile job in a fresh process") from e
    jax.config.update("jax_platforms", "cpu")
    if jax.device_count() != count or jax.devices()[0].platform != "cpu":
        raise ConfigError(f"config.fake_devices={count}: got {jax.device_count()} {jax.devices()[0].platform} "
                          f"devices; unset XLA_FLAGS' --xla_force_host_platform_device_count or JAX_PLATFORMS")


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard of each leaf)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Bytes per device of one compiled training step. `params`, `optimizer` and `batch` follow from the
    shapes and shardings; the rest is XLA's `memory_analysis()` of the compiled step: `temp` holds the
    gradients, saved activations and workspace; `aliased` is output written into the donated state."""

    params: int
    optimizer: int
    batch: int
    arguments: int
    outputs: int
    aliased: int
    temp: int
    generated_code: int
    peak: int


def memory_report(program: ProgramReport, setup: TrainSetup, batch: dict) -> MemoryReport:
    """Per-device bytes of the training step (`programs.peak_bytes`)."""
    state = setup.abstract_state()
    return MemoryReport(params=shard_bytes(state.params), optimizer=shard_bytes(state.opt_state),
                        batch=shard_bytes(batch), arguments=program.arguments, outputs=program.outputs,
                        aliased=program.aliased, temp=program.temp, generated_code=program.generated_code,
                        peak=program.peak_bytes)


def dry_run(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Compiles the configured training step without allocating it (with `config.topology`, for that TPU
    slice, and every other program of the recipe too); returns the summary that `run` writes."""
    topology = str(config.get("topology") or "")
    tpu = parse_slice(topology) if topology else None
    if tpu is None:
        use_fake_devices(int(config.get("fake_devices", 0)))
    config = config.copy_and_resolve_references()
    mesh, rules = mesh_from_config(config, None if tpu is None else tpu.devices())
    raise_all(validate(config, dp_size=data_parallel_size(mesh, rules)))
    setup = train_setup(config, mesh, rules, weights=False)  # a hub BLOOM by its published shape: no download
    if config.data.seq_len is None:
        raise ConfigError("config.data.seq_len: the compile job needs an explicit length (no data to derive it from)")
    check_seq_len(config, setup.abstract.config.max_position_embeddings)
    generation = generation_report(config, mesh, rules, xla_step=tpu is None)  # its config errors come first
    lowered, batch = lower_train_step(config, setup, mesh, rules)
    gib = float(config.get("device_memory_gib", 0.0))
    limit = gib if gib > 0 or tpu is None else tpu.chip.hbm_gib
    chip, limit_bytes = (None if tpu is None else tpu.chip), (int(limit * GIB) if limit > 0 else None)
    _, train_step = compile_and_report(lowered, chip, limit_bytes)
    memory = memory_report(train_step, setup, batch)
    model = setup.abstract.config
    device = mesh.devices.flat[0]
    summary = {
        "model": {**dataclasses.asdict(model), "family": model.model_type},
        "num_params": sum(math.prod(x.shape) for x in jax.tree.leaves(setup.abstract_params)),
        "mesh": dict(mesh.shape),
        "devices": mesh.size,
        "platform": device.platform,
        "device_kind": device.device_kind,
        "batch_size": int(config.batch_size),
        "seq_len": int(config.data.seq_len),
        "grad_accum_steps": int(config.grad_accum_steps),
        "loss_chunk": loss_chunk(config),
        "rows_per_device_per_microbatch": int(config.batch_size) // data_parallel_size(mesh, rules)
        // int(config.grad_accum_steps),
        "compile_seconds": train_step.compile_seconds,
        "memory_per_device": dataclasses.asdict(memory),
        "device_memory_gib": limit,
        "fits": None if limit <= 0 else memory.peak <= limit * GIB,
        "generation": generation,
    }
    if tpu is not None:
        summary.update(tpu_report(config, tpu, mesh, rules, train_step, limit_bytes, summary))
    return summary


def tpu_report(config: ml_collections.ConfigDict, tpu: TpuSlice, mesh: Mesh, rules: LogicalRules,
               train_step: ProgramReport, limit_bytes: int, summary: dict[str, Any]) -> dict[str, Any]:
    """The slice, every program compiled for it, whether all fit, and the ceilings their bounds imply."""
    lowered = generation_programs(config.model.to_dict(), mesh, rules, **generation_settings(config),
                                  **pool_settings(config))
    programs = {"train_step": whole_train_step(config, mesh, rules, train_step, tpu)}
    for name, program in lowered.items():
        programs[name] = compile_and_report(program, tpu.chip, limit_bytes)[1]
    slots = summary["generation"]["slots"]
    tokens = summary["batch_size"] * summary["seq_len"]
    per_token = model_flops_per_token(summary["num_params"], summary["model"], summary["seq_len"])
    train_bound, round_bound = programs["train_step"].roofline_seconds, programs["decode_round"].roofline_seconds
    return {
        "topology": tpu.name,
        "tpu": {"jax_topology": tpu.jax_name, "generation": tpu.generation, "chips": tpu.chips, "hosts": tpu.hosts,
                "chip": dataclasses.asdict(tpu.chip)},
        "programs": {name: dataclasses.asdict(p) for name, p in programs.items()},
        "fits": all(p.fits for p in programs.values()),
        "ceilings": {
            "train_tokens_per_s": tokens / train_bound if train_bound else None,
            "train_mfu": per_token * tokens / (train_bound * tpu.chips * tpu.chip.peak_bf16_flops)
            if train_bound else None,
            "decode_tokens_per_s": slots / round_bound if round_bound else None,
        },
    }


def whole_train_step(config: ml_collections.ConfigDict, mesh: Mesh, rules: LogicalRules, step: ProgramReport,
                     tpu: TpuSlice) -> ProgramReport:
    """The training step's report with the flops and bytes of the whole step (`train_program`), not of its
    loops' bodies once each."""
    if step.error:
        return step
    rows = int(config.batch_size) // (data_parallel_size(mesh, rules) * int(config.grad_accum_steps))
    split, seconds = 1, step.compile_seconds
    while True:  # the variants compiled for fewer rows at a time while the compiler refuses them for lack of HBM
        layers, microbatches, variants = unrolled_steps(config, mesh, rules, split)
        costs = [compile_and_report(variant, None, None)[1] for variant in variants]
        seconds += sum(c.compile_seconds for c in costs)
        if not any(c.error for c in costs) or (rows // split) % 2:
            break
        split *= 2
    if any(c.error for c in costs):  # no cost analysis: no bound
        return dataclasses.replace(step, flops=None, bytes_accessed=None, roofline_seconds=None,
                                   compile_seconds=round(seconds, 2))
    flops, accessed = whole_step_cost(layers, microbatches, *((c.flops, c.bytes_accessed) for c in costs))
    return dataclasses.replace(step, flops=flops, bytes_accessed=accessed,
                               roofline_seconds=roofline_seconds(flops, accessed, tpu.chip),
                               compile_seconds=round(seconds, 2))


def model_flops_per_token(num_params: int, model: dict[str, Any], seq_len: int) -> float:
    """Training flops per token as MFU counts them (PaLM, appendix B): 6N, plus attention's 12 x layers x
    hidden x sequence length."""
    layers = model.get("n_layer") or model.get("num_hidden_layers")
    return 6 * num_params + 12 * layers * model["hidden_size"] * seq_len


def generation_settings(config: ml_collections.ConfigDict) -> dict[str, int]:
    """The compile job's generation sizes (configs/compile.py's defaults for configs that predate them)."""
    return {"slots": config.get("generation_batch_size", 16),
            "prompt_tokens": config.get("generation_prompt_tokens", 512),
            "max_new_tokens": config.get("generation_max_new_tokens", 512)}


def pool_settings(config: ml_collections.ConfigDict) -> dict[str, int]:
    """The prefix pool's sizes (none for configs that predate them)."""
    return {"prefix_tokens": config.get("generation_prefix_tokens", 0),
            "rows_per_prefix": config.get("generation_rows_per_prefix", 3)}


def generation_report(config: ml_collections.ConfigDict, mesh: Mesh, rules: LogicalRules,
                      xla_step: bool = True) -> dict[str, Any]:
    """Generation's memory per chip on the job's mesh (v5e, v4 and `device_memory_gib` verdicts), with
    XLA's analysis of one compiled decode step beside it (`xla_step`; a TPU slice's report has the
    whole round among its programs instead)."""
    settings = generation_settings(config)
    limit = float(config.get("device_memory_gib", 0.0))
    chips = {**CHIPS, **({"device_memory_gib": limit} if limit > 0 else {})}
    report = generation_memory(config.model.to_dict(), mesh, rules, chips=chips, **settings, **pool_settings(config))
    xla = decode_step_memory(config.model.to_dict(), mesh, rules, **settings) if xla_step else None
    return {**report, "xla_decode_step": xla}


def human_bytes(n: float) -> str:
    """1536 -> '1.50 KiB'."""
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if abs(n) < 1024:
            return f"{n:.2f} {unit}"
    return f"{n / 1024:.2f} GiB"


def format_report(summary: dict[str, Any]) -> str:
    """Markdown: the run's shape and a per-device memory table."""
    m, mem = summary["model"], summary["memory_per_device"]
    lines = [
        f"# Ahead-of-time check: {summary['num_params']:,}-parameter {m['family']} training step",
        "",
        f"- model: hidden {m['hidden_size']}, {m.get('n_layer', m.get('num_hidden_layers'))} layers, "
        f"vocab {m['vocab_size']}; dtype {m['dtype']}, params {m['param_dtype']}, remat {m['remat_policy']}",
        f"- mesh {summary['mesh']} on {summary['devices']} {summary['platform']} devices ({summary['device_kind']})",
        f"- batch {summary['batch_size']} x {summary['seq_len']} tokens, grad_accum_steps "
        f"{summary['grad_accum_steps']}: {summary['rows_per_device_per_microbatch']} row(s) per device per "
        f"microbatch; loss_chunk {summary['loss_chunk']}; compiled in {summary['compile_seconds']} s",
        "",
        "| per device | size | bytes |",
        "|---|---|---|",
    ]
    labels = {"params": "parameters (shapes x shardings)", "optimizer": "optimizer state (shapes x shardings)",
              "batch": "batch", "arguments": "XLA arguments (state + batch)", "outputs": "XLA outputs",
              "aliased": "XLA outputs aliased to donated inputs",
              "temp": "XLA temporaries (gradients, activations, workspace)",
              "generated_code": "XLA generated code", "peak": "**peak**"}
    lines += [f"| {labels[k]} | {human_bytes(mem[k])} | {mem[k]} |" for k in labels]
    if summary["platform"] == "cpu":
        lines += ["", "Compiled for CPU: XLA's CPU fusion and buffer assignment differ from TPU/GPU, so "
                      "temporaries are indicative; parameters and optimizer state are exact."]
    if summary["fits"] is not None:
        verdict = "fits in" if mem["peak"] <= summary["device_memory_gib"] * GIB else "DOES NOT FIT in"
        lines += ["", f"Peak {human_bytes(mem['peak'])} {verdict} {summary['device_memory_gib']:g} GiB per device."]
    return "\n".join(lines + format_generation(summary) + format_programs(summary)) + "\n"


def format_programs(summary: dict[str, Any]) -> list[str]:
    """Markdown lines: every program compiled for the TPU slice, per chip, and the ceilings of their bounds."""
    if "programs" not in summary:
        return []
    tpu, chip = summary["tpu"], summary["tpu"]["chip"]
    limit = summary["device_memory_gib"]
    lines = [
        "", f"## Every program on {summary['topology']} ({tpu['jax_topology']}: {tpu['chips']} chips of "
            f"{summary['device_kind']}, {tpu['hosts']} host(s)), compiled by XLA's TPU compiler", "",
        f"Per chip. Memory is XLA's analysis of the TPU executable, checked against {limit:g} GiB. Flops and bytes "
        f"are XLA's cost analysis (flops counted before optimization, bytes after): for the training step, of the "
        f"whole step (its loops unrolled in one- and two-layer compiles); for a decode round, of one step. The "
        f"roofline bound is max(flops / {chip['peak_bf16_flops'] / 1e12:g} TFLOP/s, bytes / "
        f"{chip['hbm_bytes_per_s'] / 1e9:g} GB/s), the chip's published bfloat16 peak and HBM bandwidth "
        f"({chip['source']}): a lower bound on the time, **not a measurement**.", "",
        "| program | peak per chip | fits | flops | bytes accessed | roofline bound | compiled in |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, p in summary["programs"].items():
        if p["error"]:
            lines.append(f"| {name} | {human_bytes(p['peak_bytes'])} or more | NO | - | - | - | refused: "
                         f"{p['error']} |")
            continue
        cost = "- | -" if p["flops"] is None else f"{p['flops']:.3g} | {human_bytes(p['bytes_accessed'])}"
        lines.append(f"| {name} | {human_bytes(p['peak_bytes'])} | {'yes' if p['fits'] else 'NO'} | {cost} | "
                     f"{format_seconds(p['roofline_seconds'])} | {p['compile_seconds']} s |")
    ceilings = summary["ceilings"]
    lines += ["", "Ceilings from the bounds (no run is faster):"]
    if ceilings["train_tokens_per_s"]:
        lines.append(f"- training: {ceilings['train_tokens_per_s']:,.0f} tokens/s, MFU at most "
                     f"{100 * ceilings['train_mfu']:.1f}% (6 x parameters + attention flops per token)")
    if ceilings["decode_tokens_per_s"]:
        lines.append(f"- generation: {ceilings['decode_tokens_per_s']:,.0f} generated tokens/s "
                     f"({summary['generation']['slots']} slots a decode step)")
    return lines


def format_seconds(seconds: float | None) -> str:
    """0.00123 -> '1.23 ms'."""
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-6:.3g} us"


def too_big(summary: dict[str, Any]) -> list[str]:
    """One line per program that does not fit, naming it and by how much."""
    limit, gib = summary["device_memory_gib"] * GIB, summary["device_memory_gib"]
    return [f"{name}: the TPU compiler refused it: {p['error']}" if p["error"] else
            f"{name} needs {human_bytes(p['peak_bytes'])} per chip, {human_bytes(p['peak_bytes'] - limit)} more than "
            f"{gib:g} GiB" for name, p in summary.get("programs", {}).items() if p["fits"] is False]


def format_generation(summary: dict[str, Any]) -> list[str]:
    """Markdown lines: generation's memory per chip and the verdict per chip size."""
    gen = summary["generation"]
    mem, xla = gen["bytes_per_chip"], gen.get("xla_decode_step")
    kv = " x ".join(map(str, gen["kv_buffer_shape_per_chip"]))
    lines = [
        "", "## Generation (augment job's decode engine)", "",
        f"- the teacher's weights once, in {gen['dtype']} (listed layers, no optimizer state), sharded over "
        f"mesh {summary['mesh']}",
        f"- {gen['slots']} decode slots, {gen['slots_per_chip']} per chip (split over the data-parallel axes); "
        f"cache length {gen['prompt_tokens']} prompt + {gen['max_new_tokens']} new - 1"
        + (f" - {gen['prefix_tokens']} shared prefix" if gen.get("prefix_tokens") else "") + f" = {gen['cache_length']}",
    ]
    if gen.get("prefix_tokens"):
        lines.append(f"- prefix pool: {gen['prefix_pool']} prefixes of {gen['prefix_tokens']} tokens, each stored and "
                     f"read once for its {gen['rows_per_prefix']} rows")
    lines += [
        "", "| per chip | size | bytes |", "|---|---|---|",
        f"| weights ({gen['num_params']:,} parameters, {gen['dtype']}) | {human_bytes(mem['weights'])} | "
        f"{mem['weights']} |",
        f"| KV cache ({gen['kv_buffers']} buffers of [{kv}] {gen['dtype']}) | {human_bytes(mem['kv_cache'])} | "
        f"{mem['kv_cache']} |",
    ]
    if "prefix_pool" in mem:
        lines.append(f"| prefix pool ({gen['kv_buffers']} buffers) | {human_bytes(mem['prefix_pool'])} | "
                     f"{mem['prefix_pool']} |")
    lines += [
        f"| logits of one step (float32) | {human_bytes(mem['logits'])} | {mem['logits']} |",
        f"| **total** | {human_bytes(mem['total'])} | {mem['total']} |",
    ]
    if xla:
        step = "XLA decode step" + (" (whole rows, no pool)" if "prefix_pool" in mem else "")
        lines += [f"| {step}: arguments (weights + cache + inputs) | {human_bytes(xla['arguments'])} | "
                  f"{xla['arguments']} |",
                  f"| {step}: temporaries | {human_bytes(xla['temp'])} | {xla['temp']} |",
                  f"| {step}: peak | {human_bytes(xla['peak'])} | {xla['peak']} |"]
    lines += ["", "| chip | memory per chip | generation total | headroom | verdict | slots that fit |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {v['memory_gib']:g} GiB | {human_bytes(mem['total'])} | {human_bytes(v['headroom_bytes'])} "
              f"| {'fits' if v['fits'] else 'DOES NOT FIT'} | {v.get('max_slots', '-')} |"
              for name, v in gen["chips"].items()]
    if xla and summary["platform"] == "cpu" and gen["dtype"] != "float32":
        lines += ["", "The verdicts use the total from shapes. XLA's CPU backend computes bfloat16 matmuls in float32 "
                      "from float32 copies of the weights, so the CPU decode step's temporaries and peak overstate "
                      "TPU/GPU's; its arguments are exactly weights + KV cache + the step's token, mask and index."]
    return lines


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Job entry (`config.job = "compile"`)."""
    summary = dry_run(config)
    out = workdir_path(workdir)
    write_config(config, out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / REPORT_JSON, report_json.dumps(summary, indent=2) + "\n")
    text = format_report(summary)
    write_atomic(out / REPORT_MD, text)
    print(text, flush=True)
    limit = f"config.device_memory_gib={summary['device_memory_gib']:g}"
    fits = {None: f"not checked ({limit})", True: f"fits {limit}", False: f"DOES NOT FIT {limit}"}[summary["fits"]]
    report_summary("compile", {"peak per device": human_bytes(summary["memory_per_device"]["peak"]), "": fits},
                   {"report": out / REPORT_MD, "summary": out / REPORT_JSON})
    if summary["fits"] is False:
        for line in too_big(summary):
            print(f"error: does not fit: {line}", file=sys.stderr, flush=True)
        raise SystemExit(1)
