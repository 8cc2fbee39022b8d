"""A plan before renting: `--dry_run --config.topology=NAME` compiles every pipeline step's programs for that
TPU slice (XLA's TPU compiler, on any host) and says per step whether they fit its chips and the least time
the step can take, totalled in chip-hours.

Nothing runs, nothing is downloaded and the workdir is not touched: a step's model is the one its chain of
`@step` references starts from (a hub BLOOM id by its published shape, a Hugging Face directory by its
config.json, a fresh model by its config), run with the step's own settings (dtype, remat, scan). Each
distinct program (model, mesh and sizes) compiles once: the students' identical steps share it.

Programs per step: training, the trainer's step (`make_train_step`) at the step's batch and sequence length
(config.data.seq_len, else the model's max_position_embeddings capped at 2048); augmentation, the decode
engine's insert, decode_round and shrink at batch_size x num_samples slots; evaluation, scoring (loglik
mode) or insert and generate (generate mode). Time bounds are roofline bounds (`compile.programs`): training, steps x
the step's bound; augmentation, records x kinds x num_samples x max_new_tokens generated tokens over the
decode ceiling (slots / decode_round's bound), every row assumed to run to max_new_tokens, records counted
from local files when they can be read without the network (else per 1,000 records); evaluation, batches x
scoring's bound, or prefills plus generated tokens over generate's ceiling, its questions counted likewise. The
training step's cost is the whole step's (`compile.train_program`); a decode round's is one step's. The bounds
are lower bounds, not estimates.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from teacherlm_jax.compile.generation_memory import GIB, generation_model
from teacherlm_jax.compile.job import format_seconds, human_bytes, whole_train_step
from teacherlm_jax.compile.programs import Lowering, ProgramReport, compile_and_report, generation_programs
from teacherlm_jax.compile.train_program import lower_train_step
from teacherlm_jax.compile.topology import TpuSlice, parse_slice
from teacherlm_jax.config_checks import raise_all
from teacherlm_jax.errors import ConfigError, DataError
from teacherlm_jax.init_from import published_bloom, resolve
from teacherlm_jax.pipeline.plan import REFERENCE, Step, build_plan, split_reference
from teacherlm_jax.sharding import data_parallel_size, mesh_from_config

TRAIN_SEQ_CAP = 2048  # BLOOM's training length: the cap of a derived sequence length
NO_BOUND = ("no bound: XLA's TPU compiler refused a program (or a training step's unrolled cost variants, at "
            "one row a chip) for lack of HBM, so it has no cost analysis")
PER = 1000  # records (questions) a bound is given for when their count is unknown


@dataclasses.dataclass(frozen=True)
class StepEstimate:
    """One step on the slice: its compiled programs, the least seconds it takes (`per_thousand`: per 1,000
    records or questions when their count is unknown), how that was computed, and what to change."""

    step: str
    job: str
    programs: dict[str, ProgramReport]
    seconds: float | None = None
    per_thousand: float | None = None
    basis: str = ""
    advice: tuple[str, ...] = ()
    error: str | None = None

    @property
    def fits(self) -> bool | None:
        if self.error is not None:
            return False
        return all(p.fits for p in self.programs.values()) if self.programs else None


class ProgramCache:
    """Compiles each distinct program once, keyed by what decides it (model, mesh, sizes)."""

    def __init__(self, tpu: TpuSlice, limit_bytes: int, progress: Callable[[str], None]):
        self.tpu, self.limit_bytes, self.progress = tpu, limit_bytes, progress
        self.reports: dict[tuple[str, str], ProgramReport] = {}
        self.lowered: dict[str, dict[str, Lowering]] = {}
        self.whole_steps: dict[str, ProgramReport] = {}  # training steps with their whole cost
        self.compiles = 0

    def report(self, name: str, identity: Any, lower: Lowering, step: str) -> ProgramReport:
        key = (name, json.dumps(identity, sort_keys=True, default=str))
        if key not in self.reports:
            self.progress(f"{step}: compiling {name} for {self.tpu.name}")
            self.compiles += 1
            _, self.reports[key] = compile_and_report(lower, self.tpu.chip, self.limit_bytes)
            outcome = "refused: does not fit" if self.reports[key].error else "compiled"
            self.progress(f"{step}: {name} {outcome} in {self.reports[key].compile_seconds:.1f} s")
        return self.reports[key]

    def whole_train_step(self, identity: Any, config: ml_collections.ConfigDict, mesh, rules,
                         step_report: ProgramReport, step: str) -> ProgramReport:
        """The training step's report with its whole cost (`compile.job.whole_train_step`), computed once."""
        key = json.dumps(identity, sort_keys=True, default=str)
        if key not in self.whole_steps:
            self.progress(f"{step}: compiling the training step's unrolled 1- and 2-layer variants (its cost)")
            self.whole_steps[key] = whole_train_step(config, mesh, rules, step_report, self.tpu)
        return self.whole_steps[key]

    def generation(self, identity: Any, lower_all: Callable[[], dict[str, Lowering]]) -> dict[str, Lowering]:
        """`generation_programs`' programs, made once per identity."""
        key = json.dumps(identity, sort_keys=True, default=str)
        if key not in self.lowered:
            self.lowered[key] = lower_all()
        return self.lowered[key]


def model_section(step: Step, steps: list[Step]) -> dict[str, Any]:
    """The step's model as `resolve` takes it: an `@step` init_from is followed to the model its chain starts
    from (a hub id, a directory or a fresh model's architecture), run with this step's own non-None settings."""
    own = _model_key(step)[1].to_dict()
    init_from = own.get("init_from")
    match = REFERENCE.match(init_from) if isinstance(init_from, str) else None
    if match is None:
        return _without_download(own, _model_key(step)[0])
    names = [s.name for s in steps]
    target = split_reference(match.group(1), names)[0]
    origin = model_section(steps[names.index(target)], steps)
    return {**origin, **{k: v for k, v in own.items() if k != "init_from" and v is not None}}


def _without_download(model: dict[str, Any], key: str) -> dict[str, Any]:
    """`model` whose init_from needs no download: a path or URL, a published BLOOM id, or a hub id already in
    the Hugging Face cache (then its cached snapshot)."""
    init_from = model.get("init_from")
    if not init_from or "://" in init_from or os.path.exists(init_from) or published_bloom(init_from):
        return model
    import huggingface_hub

    try:
        cached = huggingface_hub.snapshot_download(init_from, local_files_only=True)
    except Exception as e:  # not cached (the hub's own errors differ by version)
        raise ConfigError(f"config.{key}.init_from={init_from!r}: the plan downloads nothing, and it is neither a "
                          f"local directory, a published BLOOM id nor in the Hugging Face cache "
                          f"({type(e).__name__})") from e
    return {**model, "init_from": cached}


def _model_key(step: Step) -> tuple[str, ml_collections.ConfigDict]:
    """(config key, section) of the step's model."""
    if step.job == "augment":
        return f"{step.key}.teacher", step.config.teacher
    return f"{step.key}.model", step.config.model


def plan_for_slice(config: ml_collections.ConfigDict, progress: Callable[[str], None] | None = None
                   ) -> tuple[list[StepEstimate], ProgramCache]:
    """Every model step of the pipeline on the slice `config.topology`, and the cache that compiled them."""
    tpu = parse_slice(str(config.topology))
    progress = progress or (lambda line: print(f"plan: {line}", file=sys.stderr, flush=True))
    limit_gib = float(config.get("device_memory_gib") or tpu.chip.hbm_gib)
    cache = ProgramCache(tpu, int(limit_gib * GIB), progress)
    devices = tpu.devices()
    steps = build_plan(config)
    estimates = []
    for step in steps:
        if step.job not in ESTIMATORS:
            continue
        try:
            model = model_section(step, steps)
            estimates.append(ESTIMATORS[step.job](step, model, cache, devices))
        except (ConfigError, DataError, ValueError) as e:
            estimates.append(StepEstimate(step.name, step.job, {}, error=f"{type(e).__name__}: {e}"))
    return estimates, cache


def _identity(config: ml_collections.ConfigDict, model_config: Any, **sizes: Any) -> dict[str, Any]:
    """What decides a program: the resolved model (architecture and run settings, however the step's config
    spells them), the mesh and rules, and the sizes."""
    return {"model": dataclasses.asdict(model_config), "mesh": config.mesh.to_dict(), "rules": config.get("rules"),
            **sizes}


def train_estimate(step: Step, model: dict[str, Any], cache: ProgramCache, devices: list) -> StepEstimate:
    """The training step's program; the step's bound x num_train_steps."""
    from teacherlm_jax.train.checks import validate
    from teacherlm_jax.train.loop import check_seq_len, loss_chunk, train_setup

    config = ml_collections.ConfigDict(step.config.to_dict())
    config.model = ml_collections.ConfigDict(model)
    mesh, rules = mesh_from_config(config, devices)
    raise_all(validate(config, dp_size=data_parallel_size(mesh, rules)))
    setup = train_setup(config, mesh, rules, weights=False)
    max_positions = setup.abstract.config.max_position_embeddings
    derived = config.data.seq_len is None
    if derived:
        config.data.seq_len = min(max_positions, TRAIN_SEQ_CAP)
    check_seq_len(config, max_positions)
    optimizer = config.optimizer
    identity = _identity(config, setup.model.config, batch=config.batch_size, seq_len=config.data.seq_len,
                         grad_accum=config.grad_accum_steps, loss_chunk=loss_chunk(config),
                         optimizer=(optimizer.schedule, optimizer.weight_decay > 0, optimizer.grad_clip_norm > 0))

    report = cache.report("train_step", identity, lambda: lower_train_step(config, setup, mesh, rules)[0], step.name)
    if not report.error:
        report = cache.whole_train_step(identity, config, mesh, rules, report, step.name)
    steps = int(config.num_train_steps)
    advice = () if report.fits else train_advice(step, config, report, cache.limit_bytes, len(devices),
                                                dict(mesh.shape), data_parallel_size(mesh, rules), loss_chunk(config))
    if report.roofline_seconds is None:
        return StepEstimate(step.name, step.job, {"train_step": report}, basis=NO_BOUND, advice=advice)
    seq = f"seq_len {config.data.seq_len}" + (f" (unset: max_position_embeddings {max_positions}, capped at "
                                               f"{TRAIN_SEQ_CAP})" if derived else "")
    basis = (f"{steps} steps x {format_seconds(report.roofline_seconds)} (batch {config.batch_size} x {seq}, "
             f"mesh {dict(mesh.shape)})")
    return StepEstimate(step.name, step.job, {"train_step": report}, seconds=steps * report.roofline_seconds,
                        basis=basis, advice=advice)


def _generation(step: Step, config: ml_collections.ConfigDict, model: dict[str, Any], cache: ProgramCache,
                devices: list, names: tuple[str, ...], *, slots: int, prompt_tokens: int,
                max_new_tokens: int) -> tuple[dict[str, ProgramReport], dict[str, int]]:
    mesh, rules = mesh_from_config(config, devices)
    identity = _identity(config, resolve(generation_model(model), weights=False).config, slots=slots,
                         prompt_tokens=prompt_tokens, max_new_tokens=max_new_tokens)
    lower_all = lambda: generation_programs(model, mesh, rules, slots=slots, prompt_tokens=prompt_tokens,
                                            max_new_tokens=max_new_tokens)
    reports = {name: cache.report(name, identity, lambda name=name: _lowered(cache.generation(identity, lower_all)[name]),
                                  step.name) for name in names}
    return reports, dict(mesh.shape)


def _lowered(lowering: Lowering) -> jax.stages.Lowered:
    return lowering() if callable(lowering) else lowering


def _max_positions(model: dict[str, Any]) -> int:
    return resolve(generation_model(model), weights=False).config.max_position_embeddings


def augment_estimate(step: Step, model: dict[str, Any], cache: ProgramCache, devices: list) -> StepEstimate:
    """The decode engine's programs; generated tokens over the decode ceiling."""
    config = step.config
    sampling = config.sampling
    slots = int(config.batch_size) * int(sampling.num_samples)
    new = int(sampling.max_new_tokens)
    prompt = int(config.max_prompt_tokens) or _max_positions(model) - new
    reports, mesh = _generation(step, config, model, cache, devices, ("insert", "decode_round", "shrink"),
                                slots=slots, prompt_tokens=prompt, max_new_tokens=new)
    advice = () if all(r.fits for r in reports.values()) else generation_advice(
        step, config, reports, cache.limit_bytes, len(devices), mesh, "batch_size")
    if reports["decode_round"].roofline_seconds is None:
        return StepEstimate(step.name, step.job, reports, basis=NO_BOUND, advice=advice)
    per_second = slots / reports["decode_round"].roofline_seconds
    records, unknown = count_records(config)
    per_record = len(config.kinds) * int(sampling.num_samples) * new
    sizes = (f"{slots} slots, prompts of {prompt} tokens, mesh {mesh}; ceiling {per_second:,.0f} tokens/s; every row "
             f"assumed to run to max_new_tokens")
    if unknown:
        return StepEstimate(step.name, step.job, reports, per_thousand=PER * per_record / per_second, advice=advice,
                            basis=f"per {PER:,} records ({unknown}): {PER * per_record:,} tokens; {sizes}")
    return StepEstimate(step.name, step.job, reports, seconds=records * per_record / per_second, advice=advice,
                        basis=f"{records:,} records x {len(config.kinds)} kind(s) x {sampling.num_samples} sample(s) x "
                              f"{new} tokens; {sizes}")


def count_records(config: ml_collections.ConfigDict) -> tuple[int, str]:
    """(records the augment step reads, '' or why they cannot be counted here)."""
    from teacherlm_jax.augment.job import resolve_dataset

    def source(spec: str) -> tuple[str, str]:
        dataset = resolve_dataset(spec)
        return dataset.source, dataset.split

    return count_local(config.datasets, source, int(config.max_records), config.get("data_dir"))


def count_questions(config: ml_collections.ConfigDict) -> tuple[int, str]:
    """(questions the eval step asks, '' or why they cannot be counted here)."""
    from teacherlm_jax.eval.tasks import resolve_task

    def source(spec: str) -> tuple[str, str]:
        task = resolve_task(spec)
        return task.dataset, task.split

    return count_local(config.tasks, source, int(config.max_examples), config.get("data_dir"))


def count_local(specs: tuple[str, ...], source: Callable[[str], tuple[str, str]], cap: int,
                data_dir: str | None) -> tuple[int, str]:
    """(rows of these datasets, each capped at `cap` (0: none), or 0 and why they cannot be counted): only
    registry data and JSONL files are read, nothing from the network or a step not run yet."""
    from teacherlm_jax.data.registry import load_records
    from teacherlm_jax.data.sources import REGISTRY

    total = 0
    for spec in specs:
        if REFERENCE.match(spec):
            return 0, f"{spec} is written by an earlier step"
        name, split = source(spec)
        if not (name in REGISTRY or name.endswith(".jsonl")):
            return 0, f"{spec} is not a local file"
        try:
            rows = len(load_records(name, split, data_dir=data_dir))
        except (OSError, DataError) as e:
            return 0, f"{spec} unreadable here: {str(e).splitlines()[0]}"
        total += min(rows, cap) if cap else rows
    return total, ""


def eval_estimate(step: Step, model: dict[str, Any], cache: ProgramCache, devices: list) -> StepEstimate:
    """loglik: scoring; generate: insert + generate (greedy decoding). Batches x scoring's bound, or batches x
    insert's bound + generated tokens over generate's ceiling."""
    config = step.config
    generate = config.mode == "generate"
    width = int(config.max_length) or _max_positions(model)
    new = int(config.max_new_tokens) if generate else 1
    slots = int(config.batch_size)
    names = ("insert", "generate") if generate else ("scoring",)
    reports, mesh = _generation(step, config, model, cache, devices, names, slots=slots, prompt_tokens=width - new,
                                max_new_tokens=new)
    advice = () if all(r.fits for r in reports.values()) else generation_advice(
        step, config, reports, cache.limit_bytes, len(devices), mesh, "batch_size")
    if any(r.roofline_seconds is None for r in reports.values()):
        return StepEstimate(step.name, step.job, reports, basis=NO_BOUND, advice=advice)
    questions, unknown = count_questions(config)
    count = PER if unknown else questions
    batches = math.ceil(count / slots)
    if generate:
        ceiling = slots / reports["generate"].roofline_seconds
        seconds = batches * reports["insert"].roofline_seconds + count * new / ceiling
        basis = (f"{batches} prefills of {slots} x {format_seconds(reports['insert'].roofline_seconds)} + "
                 f"{count * new:,} generated tokens at {ceiling:,.0f} tokens/s (every row to max_new_tokens)")
    else:
        seconds = batches * reports["scoring"].roofline_seconds
        basis = f"{batches} batches of {slots} x scoring {format_seconds(reports['scoring'].roofline_seconds)}"
    basis += f"; prompts of {width - new} tokens, mesh {mesh}"
    if unknown:
        return StepEstimate(step.name, step.job, reports, per_thousand=seconds, advice=advice,
                            basis=f"per {PER:,} questions ({unknown}): {basis}")
    return StepEstimate(step.name, step.job, reports, seconds=seconds, advice=advice,
                        basis=f"{questions:,} questions: {basis}")


ESTIMATORS = {"train": train_estimate, "augment": augment_estimate, "eval": eval_estimate}


def _chips_needed(peak: int, limit: int, chips: int) -> int:
    """The next power of two of chips at which the peak, split evenly, would fit (a guide, not a promise)."""
    return 2 ** math.ceil(math.log2(max(chips + 1, chips * peak / limit)))


def train_advice(step: Step, config: ml_collections.ConfigDict, report: ProgramReport, limit: int, chips: int,
                 mesh: dict[str, int], dp: int, chunk: int) -> tuple[str, ...]:
    """What would bring the training step under the chip's memory, most effective first."""
    key = step.key
    out = []
    if mesh.get("fsdp", 1) < chips:
        out.append(f"shard parameters and optimizer state over every chip: --config.{key}.mesh.fsdp=-1 "
                   f"--config.{key}.mesh.data=1 --config.{key}.mesh.tensor=1")
    if report.arguments > limit:
        out.append(f"the state alone ({human_bytes(report.arguments)} a chip) exceeds the chip: more chips")
    if config.model.get("remat_policy") != "full":
        out.append(f"recompute activations: --config.{key}.model.remat_policy=full")
    rows = config.batch_size // (dp * config.grad_accum_steps)
    if rows > 1:
        out.append(f"fewer rows a chip at once: --config.{key}.grad_accum_steps={2 * config.grad_accum_steps} "
                   f"(same batch) or --config.{key}.batch_size={config.batch_size // 2}")
    if chunk == 0 or chunk > 256:
        out.append(f"a smaller loss head at once: --config.{key}.loss_chunk=256")
    out.append(f"more chips: a slice of >= {_chips_needed(report.peak_bytes, limit, chips)} chips")
    return tuple(out)


def generation_advice(step: Step, config: ml_collections.ConfigDict, reports: dict[str, ProgramReport], limit: int,
                      chips: int, mesh: dict[str, int], batch_key: str) -> tuple[str, ...]:
    """What would bring the generation programs under the chip's memory."""
    model_key, model = _model_key(step)
    key = step.key
    worst = max(reports.values(), key=lambda r: r.peak_bytes)
    out = []
    if model.get("dtype") in (None, "float32"):
        out.append(f"weights and cache in bfloat16 (half): --config.{model_key}.dtype=bfloat16")
    copied = mesh.get("fsdp", 1) * mesh.get("tensor", 1) < chips
    if copied:
        out.append(f"shard the weights instead of copying them to each chip: --config.{key}.mesh.data=1 "
                   f"--config.{key}.mesh.fsdp=-1")
    if worst.temp + worst.arguments > limit and config[batch_key] > 1:
        out.append(f"fewer slots (a smaller KV cache): --config.{key}.{batch_key}={config[batch_key] // 2}")
    more = f"a slice of >= {_chips_needed(worst.peak_bytes, limit, chips)} chips"
    out.append(f"more chips, once the weights are sharded: {more}" if copied else f"more chips: {more}")
    return tuple(out)


def describe(estimates: list[StepEstimate], cache: ProgramCache, seconds: float) -> str:
    """The plan on the slice, as a person reads it: one line per step, what does not fit and why, the total."""
    tpu, limit = cache.tpu, cache.limit_bytes
    chip = tpu.chip
    lines = [f"TPU plan on {tpu.name} ({tpu.jax_name}: {tpu.chips} chips of {chip.device_kind}, {tpu.hosts} host(s)), "
             f"{human_bytes(limit)} a chip; compiled by XLA's TPU compiler, nothing run. Bounds are roofline lower "
             f"bounds (max(flops / {chip.peak_bf16_flops / 1e12:g} TFLOP/s, bytes / {chip.hbm_bytes_per_s / 1e9:g} "
             f"GB/s) a chip), not estimates.", ""]
    width = max(len(e.step) for e in estimates) if estimates else 4
    for e in estimates:
        verdict = {True: "fits", False: "DOES NOT FIT", None: "-"}[e.fits]
        peak = max(e.programs.items(), key=lambda kv: kv[1].peak_bytes, default=None)
        at = f"peak {human_bytes(peak[1].peak_bytes)} ({peak[0]})" if peak else ""
        if e.seconds is not None:
            bound = f">= {_hours(e.seconds)}, {e.seconds * tpu.chips / 3600:.3g} chip-hours"
        elif e.per_thousand is not None:
            bound = f">= {_hours(e.per_thousand)} per {PER:,}"
        else:
            bound = ""
        lines.append(f"{e.step:<{width}}  {e.job:<7} {verdict:<12} {at}  {bound}")
        lines.append(f"{'':<{width}}  {e.error or e.basis}")
    misfits = [e for e in estimates if e.fits is False]
    if misfits:
        lines += ["", "does not fit:"]
    for e in misfits:
        for name, p in e.programs.items():
            if p.error:
                lines.append(f"  {e.step}: {name} needs at least {human_bytes(p.peak_bytes)} a chip, "
                             f"{human_bytes(p.peak_bytes - limit)} more than {human_bytes(limit)} (XLA's TPU "
                             f"compiler: {p.error})")
            elif not p.fits:
                lines.append(f"  {e.step}: {name} needs {human_bytes(p.peak_bytes)} a chip, "
                             f"{human_bytes(p.peak_bytes - limit)} more than {human_bytes(limit)} (arguments "
                             f"{human_bytes(p.arguments - p.aliased)}, temporaries {human_bytes(p.temp)})")
        if e.error:
            lines.append(f"  {e.step}: {e.error}")
        lines += [f"    - {a}" for a in e.advice]
    known = [e for e in estimates if e.seconds is not None]
    total = sum(e.seconds for e in known)
    lines += ["", f"total: >= {total * tpu.chips / 3600:.3g} chip-hours ({_hours(total)} on {tpu.chips} chips) over "
                  f"{len(known)} step(s) with known counts"]
    unbounded = [e.step for e in estimates if e.seconds is None and e.per_thousand is None]
    if unbounded:
        lines.append(f"  no bound (does not fit): {', '.join(unbounded)}")
    per = [e for e in estimates if e.per_thousand is not None]
    if per:
        lines.append(f"  plus, per {PER:,} records or questions: " + ", ".join(
            f"{e.step} {e.per_thousand * tpu.chips / 3600:.3g}" for e in per) + " chip-hours")
    lines.append(f"{cache.compiles} distinct program(s) compiled for {len(estimates)} step(s) in {seconds:.0f} s")
    if tpu.hosts > 1:
        lines.append(f"{tpu.hosts} hosts: an augment step with mesh_scope 'process' runs one engine a host on its "
                     f"own chips; the plan compiles it over the whole slice")
    return "\n".join(lines)


def _hours(seconds: float) -> str:
    return format_seconds(seconds) if seconds < 3600 else f"{seconds / 3600:.3g} h"


def tpu_plan_text(config: ml_collections.ConfigDict) -> str:
    """`--dry_run`'s plan on the slice `config.topology` (cli.dry_run)."""
    start = time.perf_counter()
    estimates, cache = plan_for_slice(config)
    return describe(estimates, cache, time.perf_counter() - start)
