"""The augment job: `python -m teacherlm_jax.main --config configs/augment.py` (files and guarantees: see
`teacherlm_jax.augment`). Reads the config, loads the teacher once in its decode layout, hands every
dataset to one engine (`runner.augment_datasets`) and writes each dataset's summary."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from teacherlm_jax.augment.files import missing_parts
from teacherlm_jax.augment.fingerprint import teacher_fingerprint
from teacherlm_jax.augment.runner import DatasetWork, augment_datasets
from teacherlm_jax.augment.settings import Settings
from teacherlm_jax.config_checks import Problems, raise_all
from teacherlm_jax.augment.summary import write_summary
from teacherlm_jax.console import count, duration, report_summary
from teacherlm_jax.data import REGISTRY, load_records
from teacherlm_jax.data.specs import DatasetSpec
from teacherlm_jax.errors import ConfigError, DataError
from teacherlm_jax.generation.sampler import Sampling
from teacherlm_jax.init_from import resolve
from teacherlm_jax.paths import workdir_path
from teacherlm_jax.run_config import write_config
from teacherlm_jax.sharding import DEFAULT_RULES, LogicalRules, initialize_distributed, make_mesh, parse_rules
from teacherlm_jax.workdir_lock import workdir_lock

log = logging.getLogger(__name__)


def resolve_dataset(spec: str) -> DatasetSpec:
    """A dataset to augment: a registry name, optionally `name:split` (default split train, or the only one),
    or a .jsonl path; its `name` is the output directory under augmented/ (`creak:dev` -> creak_dev)."""
    dataset = DatasetSpec.parse(spec, default_split=None)
    if not (dataset.registered or dataset.jsonl):
        raise ValueError(f"unknown dataset {spec!r}: expected a registry name ({sorted(REGISTRY)}), optionally "
                         f"'<name>:<split>', or a path ending .jsonl")
    return dataset.check()


def settings_from_config(config: ml_collections.ConfigDict) -> tuple[Settings, list[DatasetSpec]]:
    """Validated settings and datasets; errors name the config key (all of them: `validate`)."""
    settings, datasets, problems = read_settings(config)
    raise_all(problems)
    return settings, datasets


def validate(config: ml_collections.ConfigDict, *,
             produced: Callable[[str], bool] = lambda spec: False) -> list[ConfigError]:
    """Every problem of an augment config, each naming its key. `produced(spec)`: a dataset another job writes
    before this one runs (a pipeline step's output), whose file is not looked for."""
    return read_settings(config, produced)[2]


def read_settings(config: ml_collections.ConfigDict, produced: Callable[[str], bool] = lambda spec: False
                  ) -> tuple[Settings | None, list[DatasetSpec], list[ConfigError]]:
    """(settings, datasets, every problem found): `validate`'s, with what it read."""
    problems = Problems(config)
    fields = [f.name for f in dataclasses.fields(Sampling)]
    unknown = sorted(set(config.sampling) - set(fields))
    sampling = None
    if unknown:
        problems.add("sampling", f"unknown keys {unknown}; known: {fields}")
    else:
        sampling = problems.check("sampling", lambda: Sampling(**dict(config.sampling)), sep=".")
    settings = problems.check("", lambda: Settings(
        kinds=tuple(config.kinds), sampling=sampling or Sampling(), batch_size=config.batch_size,
        chunk_size=config.chunk_size, max_prompt_tokens=config.max_prompt_tokens, truncation=config.truncation,
        engine=config.get("engine", "continuous")), sep="")
    problems.integer("max_records", 0)
    scope = config.get("mesh_scope", "process")
    if scope not in MESH_SCOPES:
        problems.add("mesh_scope", f"{scope!r}; expected one of {MESH_SCOPES}")
    elif scope == "global" and (config.get("process_index") is not None or config.get("process_count") is not None):
        problems.add("mesh_scope", "'global' has every jax process decode every chunk together; leave "
                                   "config.process_index/process_count unset")
    datasets: list[DatasetSpec] = []
    if isinstance(config.datasets, str) or not config.datasets:
        problems.add("datasets", "expected a non-empty tuple of dataset names or paths")
    else:
        for i, spec in enumerate(config.datasets):
            dataset = DatasetSpec.parse(spec) if produced(spec) else \
                problems.check(f"datasets[{i}]", lambda spec=spec: resolve_dataset(spec))
            datasets += [dataset] if dataset is not None else []
    names = [d.name for d in datasets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.add("datasets", f"{repeated} named more than once (outputs would collide)")
    return settings, datasets, problems.errors


def processes(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(process index, process count): the config's when set (processes started independently), else jax's."""
    index, count = config.get("process_index"), config.get("process_count")
    if index is None and count is None:
        return jax.process_index(), jax.process_count()
    if index is None or count is None:
        raise ConfigError("config.process_index and config.process_count are set together (or neither)")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"config.process_count={count!r}; expected an integer >= 1")
    if not 0 <= index < count:
        raise ConfigError(f"config.process_index={index!r}; expected 0 <= index < process_count={count}")
    if jax.process_count() > 1 and (index, count) != (jax.process_index(), jax.process_count()):
        raise ConfigError(f"config.process_index/process_count=({index}, {count}) disagree with jax.distributed's "
                          f"({jax.process_index()}, {jax.process_count()}); leave them unset")
    return index, count


MESH_SCOPES = ("process", "global")


def generation_mesh(config: ml_collections.ConfigDict) -> tuple[Mesh, tuple]:
    """`config.mesh` over this process's devices (`mesh_scope` "process": each process generates its own
    chunks, waiting on no other), or over every process's ("global": one teacher larger than a host, every
    process decoding every chunk together)."""
    devices = jax.devices() if config.get("mesh_scope", "process") == "global" else jax.local_devices()
    mesh = make_mesh({k: v for k, v in dict(config.mesh).items() if k != "rules"}, devices)
    return mesh, parse_rules(config.rules if config.get("rules") is not None else DEFAULT_RULES, mesh)


def load_teacher(config: ml_collections.ConfigDict, mesh: Mesh, rules: LogicalRules) -> tuple[nnx.Module, Any, dict]:
    """(model, tokenizer, teacher metadata) for `config.teacher` (see configs/augment.py)."""
    init_from = config.teacher.get("init_from")
    if not init_from:
        raise ConfigError("config.teacher.init_from is required: a Hugging Face directory or hub id, or a "
                          "training run's workdir (e.g. the stage-3 teacher)")
    # Listed layers: the decode layout shares their weights, so generation holds them once.
    source = resolve({**config.teacher.to_dict(), "scan_layers": False}, key="config.teacher")
    tokenizer_path = source.tokenizer_path(config.get("tokenizer"))
    tokenizer = source.load_tokenizer(tokenizer_path)
    model = source.build(mesh, rules, seed=config.seed).for_decoding()
    started = time.perf_counter()
    weights = teacher_fingerprint(source.init_from, tokenizer_path)  # by content: a retrained teacher differs
    log.info("teacher %s: fingerprint %s of %d files (%.2f GB) by %s in %.1fs", source.init_from,
             weights["sha256"][:12], weights["files"], weights["bytes"] / 1e9, weights["method"],
             time.perf_counter() - started)
    teacher = {"init_from": str(init_from), "checkpoint": source.init_from,
               "model_type": model.config.model_type, "dtype": model.config.dtype, "tokenizer": tokenizer_path,
               "weights": weights}
    return model, tokenizer, teacher


def _finish(out_dir: epath.Path, dataset: str) -> None:
    """summary.json once every process's parts exist (see the module docstring)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # no public barrier across processes

        multihost_utils.sync_global_devices(f"augment {dataset}")
        if jax.process_index() == 0:
            write_summary(out_dir)
        return
    missing = missing_parts(out_dir)
    if missing:
        log.info("%s: %d parts of other processes not written yet; the last process to finish writes %s/summary.json",
                 dataset, len(missing), out_dir)
        return
    summary = write_summary(out_dir)
    log.info("%s: %d records, %d tokens, average tokens %s; wrote %s/summary.json", dataset, summary["records"],
             summary["tokens"], summary["avg_tokens"], out_dir)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Job entry (`config.job = "augment"`). Everything is checked, the data read and the teacher loaded before
    the workdir is touched: a refused run leaves it as it found it."""
    initialize_distributed(config.get("distributed"))
    start = time.perf_counter()
    settings, datasets = settings_from_config(config)  # fail on bad keys before loading a model
    shared = config.get("mesh_scope", "process") == "global"
    process_index, process_count = (0, 1) if shared else processes(config)
    work = _read_datasets(config, workdir, datasets)  # before the teacher: bad data fails in seconds
    mesh, rules = generation_mesh(config)
    model, tokenizer, teacher = load_teacher(config, mesh, rules)
    # Processes may share the workdir; a second run of the same process's chunks (whose temporary files
    # this one removes at start) refuses. On a global mesh only jax process 0 writes.
    writes = not shared or jax.process_index() == 0
    with workdir_lock(workdir, f"augment-{process_index}") if writes else contextlib.nullcontext():
        if writes:
            write_config(config, workdir)
        stats = augment_datasets(model, tokenizer, work, settings, teacher=teacher, process_index=process_index,
                                 process_count=process_count, mesh=mesh, rules=rules, shared=shared)
        for item in work:
            s = stats[item.name]
            engine = s["engine"] or {}
            log.info("%s: this run generated %d records (%d tokens) in %.1fs; engine %s: %s decode steps, slot "
                     "occupancy %s, %s prefill tokens, %d compiled programs", item.name, s["records"], s["tokens"],
                     s["seconds"], settings.engine, engine.get("decode_steps", 0), engine.get("slot_occupancy"),
                     engine.get("prefill_tokens", 0), s["compiled_programs"])
            _finish(item.out_dir, item.name)
        kinds = f"{len(settings.kinds)} kind{'s' * (len(settings.kinds) > 1)} ({', '.join(settings.kinds)})"
    written = {item.name: f"{stats[item.name]['records']} records x {kinds} written this run, "
                          f"{count(stats[item.name]['tokens'])} tokens" for item in work}
    report_summary("augment", {**written, "in": duration(time.perf_counter() - start)},
                   {item.name: item.out_dir for item in work})


def _read_datasets(config: ml_collections.ConfigDict, workdir: str, datasets: list[DatasetSpec]) -> list[DatasetWork]:
    max_records = int(config.max_records)
    work = []
    for spec in datasets:
        records = load_records(spec.source, spec.split, data_dir=config.get("data_dir"))
        if not records:
            where = f"{spec.source}:{spec.split}" if spec.split else spec.source
            raise DataError(where, f"0 records: nothing to augment for dataset {spec.name!r} (config.datasets)")
        info = {"source": spec.source, "split": spec.split, "available": len(records), "max_records": max_records}
        work.append(DatasetWork(spec.name, records[:max_records] if max_records else records,
                                workdir_path(workdir) / "augmented" / spec.name, info))
    return work
