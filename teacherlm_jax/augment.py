"""The augment job: the teacher writes cot / fundamentals / mistakes for every record of datasets.

    python -m teacherlm_jax.main --config configs/augment.py --workdir DIR \
        --config.teacher.init_from=TEACHER --config.datasets="('creak', 'strategyqa:dev', '/data/x.jsonl')"

Per dataset, DIR/augmented/<dataset>/ (<dataset>: the registry name, `<name>_<split>` when a split is
named as `name:split`, the file stem for a .jsonl file) holds
  part-<chunk>-of-<chunks>.jsonl  one JSON object per input record, in input order (schema below);
  manifest.json                   the settings the parts were written with (a rerun must match them);
  runs/<process>-<time>.json      each finished run's timing, for the summary's throughput;
  summary.json, lengths.png       once every part exists (teacherlm_jax/augment_report.py).

Resumable: records are cut, in input order, into chunks of `chunk_size`. A chunk is generated whole,
written to a temporary file and renamed into place (`os.replace` is atomic), so a part is complete or
absent; a run killed at any moment (SIGKILL included) and started again with the same command skips
the parts that exist and redoes the others. Each prompt's randomness comes from a hash of (seed,
dataset, record id, kind), and a chunk's batches depend on the chunk only, so the parts do not depend
on where a run was killed, on the number of processes or on which process wrote them: with greedy
decoding they are byte for byte those of one uninterrupted run.

Processes: chunk c belongs to process c % process_count (`config.process_index`/`process_count`, by
default jax's). Each process generates its chunks on a mesh of its own local devices (the teacher must
fit on one host; TeacherLM's 7.1B is 14 GB in bfloat16), so processes never wait on each other. The
summary is written once all parts exist: after a barrier by process 0 under jax.distributed, else
(processes started independently, e.g. `--config.process_index=1 --config.process_count=2`) by each
process that finishes and finds every part written, i.e. at least by the last.

Batching: within a chunk the prompts of every kind are sorted by token length, longest first (stable),
and cut into batches of `batch_size` prompts (`batch_size * num_samples` rows); the last batch is
padded with copies of its last prompt, so every batch has one shape and prompt lengths fall into a few
buckets (`teacherlm_jax.sample.bucket_length`): a long job compiles a handful of programs.

Long prompts: a prompt longer than `max_prompt_tokens` (0: the model's max_position_embeddings minus
max_new_tokens) keeps its last tokens (truncation="left": the start of the question is lost, the
answer and the kind's cue stay) or is not generated (truncation="skip": that kind is null for that
record). Either way the record lists the kind under `truncated` or `skipped` and summary.json counts it.

Output record: `id, question, choices, answer, subject, source` (the input record), `gold` {kind: the
record's own annotation}, one key per generated kind (`cot`, `fundamentals`, `mistakes`: the
continuation's text, without the EOS; a list of `num_samples` texts when num_samples > 1; null when
skipped), `prompts` {kind: full prompt}, `prompt_tokens` {kind: tokens before truncation},
`new_tokens` {kind: generated tokens without the EOS, a list when num_samples > 1}, `truncated` and
`skipped` (lists of kinds), `teacher` {init_from, checkpoint, model_type, dtype, tokenizer} and
`sampling` {temperature, top_k, top_p, max_new_tokens, num_samples, stop_at_eos, seed}.
`teacherlm_jax.data.examples.read_augmented` reads it back for student training.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from teacherlm_jax.augment_chunks import Sampling, Settings, augment_records, require_int
from teacherlm_jax.augment_report import missing_parts, write_summary
from teacherlm_jax.data import REGISTRY, load_records
from teacherlm_jax.sharding import (DEFAULT_RULES, ConfigError, LogicalRules, initialize_distributed, make_mesh,
                                    parse_rules)

__all__ = ["DatasetSpec", "Sampling", "Settings", "augment_records", "resolve_dataset", "run", "settings_from_config"]
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str  # output directory under augmented/
    dataset: str  # registry name or .jsonl path, for load_records
    split: str  # "" for a .jsonl file


def resolve_dataset(spec: str) -> DatasetSpec:
    """`name`, `name:split` (registry; default split train, or the only one) or a .jsonl path."""
    if spec.endswith(".jsonl"):
        if not Path(spec).is_file():
            raise ValueError(f"{spec}: no such file")
        return DatasetSpec(Path(spec).stem, spec, "")
    name, sep, split = spec.partition(":")
    if name not in REGISTRY:
        raise ValueError(f"unknown dataset {spec!r}: expected a registry name ({sorted(REGISTRY)}), optionally "
                         f"'<name>:<split>', or a path ending .jsonl")
    splits = REGISTRY[name].splits
    if not sep:
        if "train" not in splits and len(splits) > 1:
            raise ValueError(f"{name!r} has no train split; name one: {[f'{name}:{s}' for s in splits]}")
        split = "train" if "train" in splits else splits[0]
    elif split not in splits:
        raise ValueError(f"{spec!r}: {name} has splits {splits}")
    # The output folder is the dataset's name; a split named explicitly joins it (`creak:dev` -> creak_dev).
    return DatasetSpec(f"{name}_{split}" if sep else name, name, split)


def settings_from_config(config: ml_collections.ConfigDict) -> tuple[Settings, list[DatasetSpec]]:
    """Validated settings and datasets; errors name the config key."""
    sampling = dict(config.sampling)
    unknown = sorted(set(sampling) - {f.name for f in dataclasses.fields(Sampling)})
    if unknown:
        raise ConfigError(f"config.sampling: unknown keys {unknown}; known: {[f.name for f in dataclasses.fields(Sampling)]}")
    try:
        sampling = Sampling(**sampling)
    except ValueError as e:
        raise ConfigError(f"config.sampling.{e}") from e
    try:
        settings = Settings(kinds=tuple(config.kinds), sampling=sampling, batch_size=config.batch_size,
                            chunk_size=config.chunk_size, max_prompt_tokens=config.max_prompt_tokens,
                            truncation=config.truncation)
    except ValueError as e:
        raise ConfigError(f"config.{e}") from e
    _require_config_int("max_records", config.max_records, 0)
    if isinstance(config.datasets, str) or not config.datasets:
        raise ConfigError(f"config.datasets={config.datasets!r}; expected a non-empty tuple of dataset names or paths")
    datasets = []
    for i, spec in enumerate(config.datasets):
        try:
            datasets.append(resolve_dataset(spec))
        except ValueError as e:
            raise ConfigError(f"config.datasets[{i}]: {e}") from e
    names = [d.name for d in datasets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"config.datasets: {repeated} named more than once (outputs would collide)")
    return settings, datasets


def _require_config_int(key: str, value: Any, minimum: int) -> None:
    try:
        require_int(key, value, minimum)
    except ValueError as e:
        raise ConfigError(f"config.{e}") from e


def processes(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(process index, process count): the config's when set (processes started independently), else jax's."""
    index, count = config.get("process_index"), config.get("process_count")
    if index is None and count is None:
        return jax.process_index(), jax.process_count()
    if index is None or count is None:
        raise ConfigError("config.process_index and config.process_count are set together (or neither)")
    _require_config_int("process_count", count, 1)
    if not 0 <= index < count:
        raise ConfigError(f"config.process_index={index!r}; expected 0 <= index < process_count={count}")
    if jax.process_count() > 1 and (index, count) != (jax.process_index(), jax.process_count()):
        raise ConfigError(f"config.process_index/process_count=({index}, {count}) disagree with jax.distributed's "
                          f"({jax.process_index()}, {jax.process_count()}); leave them unset")
    return index, count


def local_mesh(config: ml_collections.ConfigDict) -> tuple[Mesh, tuple]:
    """`config.mesh` over this process's devices only: each process generates its own chunks."""
    mesh = make_mesh({k: v for k, v in dict(config.mesh).items() if k != "rules"}, jax.local_devices())
    return mesh, parse_rules(config.rules if config.get("rules") is not None else DEFAULT_RULES, mesh)


def load_teacher(config: ml_collections.ConfigDict, mesh: Mesh, rules: LogicalRules) -> tuple[nnx.Module, Any, dict]:
    """(model, tokenizer, teacher metadata) for `config.teacher` (see configs/augment.py)."""
    from teacherlm_jax.evaluate import resolve_model
    from teacherlm_jax.models.hf import load_tokenizer
    from teacherlm_jax.train.builders import build_model

    init_from = config.teacher.get("init_from")
    if not init_from:
        raise ConfigError("config.teacher.init_from is required: a Hugging Face directory or hub id, or a "
                          "training run's workdir (e.g. the stage-3 teacher)")
    try:  # the engine's resolution: a run dir becomes its hf_final export, family from the checkpoint
        model_config, tokenizer_path = resolve_model(ml_collections.ConfigDict(
            {"model": config.teacher.to_dict(), "tokenizer": config.get("tokenizer")}))
    except ConfigError as e:
        raise ConfigError(str(e).replace("config.model", "config.teacher")) from e
    model = build_model(model_config, mesh, rules, seed=config.seed)
    tokenizer = load_tokenizer(tokenizer_path)
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigError(f"config.tokenizer: {tokenizer_path} has {len(tokenizer)} tokens but the teacher's "
                          f"vocabulary is {model.config.vocab_size}: they do not belong together")
    teacher = {"init_from": str(init_from), "checkpoint": str(model_config["init_from"]),
               "model_type": model_config["family"], "dtype": model.config.dtype, "tokenizer": str(tokenizer_path)}
    return model, tokenizer, teacher


def _finish(out_dir: Path, dataset: str) -> None:
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
    """Job entry (`config.job = "augment"`)."""
    initialize_distributed(config.get("distributed"))
    settings, datasets = settings_from_config(config)  # fail on bad keys before loading a model
    process_index, process_count = processes(config)
    mesh, rules = local_mesh(config)
    model, tokenizer, teacher = load_teacher(config, mesh, rules)
    max_records = int(config.max_records)
    for spec in datasets:
        records = load_records(spec.dataset, spec.split or "train", data_dir=config.get("data_dir"))
        chosen = records[:max_records] if max_records else records
        out_dir = Path(workdir) / "augmented" / spec.name
        info = {"source": spec.dataset, "split": spec.split, "available": len(records), "max_records": max_records}
        stats = augment_records(model, tokenizer, chosen, out_dir, settings, dataset=spec.name, info=info,
                                teacher=teacher, process_index=process_index, process_count=process_count,
                                mesh=mesh, rules=rules)
        log.info("%s: this run generated %d records (%d tokens) in %.1fs, %d compiled programs", spec.name,
                 stats["records"], stats["tokens"], stats["seconds"], stats["compiled_programs"])
        _finish(out_dir, spec.name)
