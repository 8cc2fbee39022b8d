"""This process's missing parts of datasets: chunks of records -> one engine's slots -> part files.

Every dataset's pending chunks are tokenized first (the slots' prompt width is the longest prompt's
bucket), then their prompts stream, chunk by chunk, into one engine; a chunk's part is written whole
and atomically once its last row ends, so a kill loses at most the chunks in flight.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from teacherlm_jax import report_json
from teacherlm_jax.augment.chunks import Chunk, decode, make_chunk, output_records, record_inputs
from teacherlm_jax.generation.scheduler import Engine, prompt_width
from teacherlm_jax.augment.files import DAMAGED, RUNS, check_manifest, part_path, remove_temporary, stale_reason
from teacherlm_jax.augment.settings import Settings
from teacherlm_jax.augment.summary import progress
from teacherlm_jax.data import Record
from teacherlm_jax.data.padding import pad_token_id
from teacherlm_jax.paths import workdir_path, write_atomic
from teacherlm_jax.sharding import LogicalRules

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DatasetWork:
    """One dataset to augment: `name` names the output and keys the seeds; `info` goes into the manifest."""

    name: str
    records: Sequence[Record]
    out_dir: epath.Path  # local or a cloud URL: `paths.workdir_path`
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Plan:
    work: DatasetWork
    chunks: list[Sequence[Record]]
    mine: list[int]
    todo: list[int]
    started: float = dataclasses.field(default_factory=time.time)
    tokens: int = 0


def augment_records(model: nnx.Module, tokenizer, records: Sequence[Record], out_dir: str | os.PathLike,
                    settings: Settings = Settings(), *, dataset: str, info: dict[str, Any] | None = None,
                    teacher: dict[str, Any] | None = None, process_index: int = 0, process_count: int = 1,
                    mesh: Mesh | None = None, rules: LogicalRules | None = None, shared: bool = False
                    ) -> dict[str, Any]:
    """Generates this process's missing parts of `records` into `out_dir`; returns this run's statistics
    (also written to out_dir/runs/). `dataset` names the output and keys the seeds; `info` (source,
    split, ...) and `teacher` go into the manifest and, for `teacher`, every output record."""
    work = DatasetWork(dataset, records, workdir_path(out_dir), dict(info or {}))
    return augment_datasets(model, tokenizer, [work], settings, teacher=teacher, process_index=process_index,
                            process_count=process_count, mesh=mesh, rules=rules, shared=shared)[dataset]


def augment_datasets(model: nnx.Module, tokenizer, datasets: Sequence[DatasetWork], settings: Settings = Settings(),
                     *, teacher: dict[str, Any] | None = None, process_index: int = 0, process_count: int = 1,
                     mesh: Mesh | None = None, rules: LogicalRules | None = None, shared: bool = False
                     ) -> dict[str, dict[str, Any]]:
    """`augment_records` for several datasets whose prompts share one engine's slots; statistics per dataset.

    `model` is generated with in its decode layout (`for_decoding()`: made here unless it is one).
    `shared`: every jax process runs this call on one global `mesh` (a teacher larger than a host), with
    process_index 0 of process_count 1: they generate every chunk together. Only jax process 0 reads and
    writes the output; the others decode the parts it finds missing (broadcast), so the workdir need not be
    shared.
    """
    limit = settings.prompt_limit(model.config.max_position_embeddings)
    teacher = dict(teacher or {})
    writer = not shared or jax.process_index() == 0
    plans = [_plan(work, settings, limit, teacher, process_index, process_count, writer) for work in datasets]
    if shared:
        _share_todo(plans)
    pending = [make_chunk(tokenizer, plan.work.name, c, plan.chunks[c], settings, limit)
               for plan in plans for c in plan.todo]
    by_name = {plan.work.name: plan for plan in plans}
    total = sum(len(plan.chunks[c]) for plan in plans for c in plan.mine)
    done = total - sum(len(chunk.records) for chunk in pending)
    if done:
        log.info("%s: %d of this process's %d records already written; resuming",
                 ", ".join(by_name), done, total)
    start, stats, engine = time.perf_counter(), {}, None
    left = {name: len(plan.todo) for name, plan in by_name.items()}

    def finish(chunk: Chunk, update) -> None:
        plan = by_name[chunk.dataset]
        plan.tokens += chunk.tokens
        left[chunk.dataset] -= 1
        if not left[chunk.dataset]:  # before the last part: whoever then finds every part written finds these stats
            stats[chunk.dataset] = _save_stats(plan, process_index, process_count, time.perf_counter() - start,
                                               engine, writer)
        if writer:
            rows = output_records(chunk, settings, limit, teacher)
            write_atomic(part_path(plan.work.out_dir, chunk.index, len(plan.chunks)),
                         "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        update(len(chunk.records), chunk.tokens, _engine_status(engine))

    with progress(total, done, ", ".join(by_name)) as update:
        if pending:
            sampling = settings.sampling
            eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.config.eos_token_id
            eos = {eos_id} if sampling.stop_at_eos and eos_id is not None else set()
            pad_id = pad_token_id(tokenizer, model.config)
            width = prompt_width((p for chunk in pending for _, p in chunk.work), sampling.max_new_tokens,
                                 model.config.max_position_embeddings)
            engine = Engine(model.for_decoding(), batch_size=settings.batch_size, width=width, sampling=sampling,
                            eos_id=eos_id, pad_id=pad_id, refill=settings.engine == "continuous", mesh=mesh,
                            rules=rules)
            for chunk in pending:
                if chunk.done:  # every prompt skipped
                    finish(chunk, update)
            stream = (((number, key), prompt) for number, chunk in enumerate(pending) for key, prompt in chunk.work)
            for (number, key), samples in engine.generate(stream):
                chunk = pending[number]
                chunk.outputs[key] = [decode(tokenizer, tokens, eos) for tokens in samples]
                if chunk.done:
                    finish(chunk, update)
    for name, plan in by_name.items():
        if name not in stats:
            stats[name] = _save_stats(plan, process_index, process_count, time.perf_counter() - start, engine,
                                      writer)
    return stats


def _share_todo(plans: list[_Plan]) -> None:
    """Process 0's missing parts, for every process (which then decode the same chunks in the same order)."""
    from jax.experimental import multihost_utils  # no public broadcast across processes

    offsets = np.cumsum([0] + [len(plan.chunks) for plan in plans])
    missing = np.zeros(offsets[-1], np.int32)
    for plan, offset in zip(plans, offsets):
        missing[[offset + c for c in plan.todo]] = 1
    missing = np.asarray(multihost_utils.broadcast_one_to_all(missing))
    for plan, offset in zip(plans, offsets):
        plan.todo = [c for c in plan.mine if missing[offset + c]]


def _plan(work: DatasetWork, settings: Settings, limit: int, teacher: dict[str, Any], process_index: int,
          process_count: int, writer: bool = True) -> _Plan:
    """The dataset's chunks, checked against the manifest, and which of this process's parts are missing or
    stale (written from other inputs: deleted here, with the reason in the log, so none is ever mixed in).
    A process that does not write (`augment_datasets`'s `shared`) reads nothing: process 0 tells it what to do."""
    size = settings.chunk_size
    chunks = [work.records[i:i + size] for i in range(0, len(work.records), size)]
    mine = list(range(process_index, len(chunks), process_count))
    if not writer:
        return _Plan(work, chunks, mine, mine)
    (work.out_dir / RUNS).mkdir(parents=True, exist_ok=True)
    inputs = [[record_inputs(r, settings, teacher) for r in chunk] for chunk in chunks]
    records = [{k: v for k, v in i.items() if k not in ("teacher", "sampling")} for chunk in inputs for i in chunk]
    changed = check_manifest(work.out_dir, {
        "dataset": work.name, **work.info, "records": len(work.records),
        "records_sha256": hashlib.sha256(json.dumps(records).encode()).hexdigest(),
        "chunks": len(chunks), "chunk_size": size, "kinds": settings.kinds,
        "sampling": dataclasses.asdict(settings.sampling), "truncation": settings.truncation,
        "max_prompt_tokens": limit, "teacher": teacher}, inputs=("records_sha256", "sampling", "teacher"))
    if changed:
        log.info("%s: inputs changed since its parts were written: %s", work.name, "; ".join(changed))
    remove_temporary(work.out_dir, mine, len(chunks))  # a killed run's (parts are renamed whole, never half-written)
    reasons = {c: stale_reason(part_path(work.out_dir, c, len(chunks)), inputs[c]) for c in mine}
    stale: dict[str, list[int]] = {}
    for c, reason in reasons.items():
        if reason not in (None, "missing"):
            stale.setdefault(reason, []).append(c)
    for reason, numbers in stale.items():
        names = [part_path(work.out_dir, c, len(chunks)).name for c in numbers]
        (log.warning if reason.startswith(DAMAGED) else log.info)(
            "%s: regenerating %d parts (%s%s): %s", work.name, len(names), ", ".join(names[:5]),
            ", ..." if len(names) > 5 else "", reason)
        for name in names:
            (work.out_dir / name).unlink()
    todo = [c for c in mine if reasons[c] is not None]
    return _Plan(work, chunks, mine, todo)


def _save_stats(plan: _Plan, process_index: int, process_count: int, seconds: float,
                engine: Engine | None, writer: bool = True) -> dict[str, Any]:
    """This run's figures for one dataset, in out_dir/runs/ (summary.json's throughput reads them)."""
    stats = {"process_index": process_index, "process_count": process_count,
             "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(plan.started)),
             "chunks_generated": len(plan.todo), "chunks_resumed": len(plan.mine) - len(plan.todo),
             "records": sum(len(plan.chunks[c]) for c in plan.todo), "tokens": plan.tokens,
             "seconds": round(seconds, 3) if plan.todo else 0.0,
             "compiled_programs": engine.stats()["compiled_programs"] if engine and plan.todo else 0,
             "program_seconds": engine.stats()["program_seconds"] if engine and plan.todo else {},
             "engine": engine.stats() if engine and plan.todo else None}
    if writer:
        path = plan.work.out_dir / RUNS / f"{process_index}-{time.time_ns()}.json"
        write_atomic(path, report_json.dumps(stats, indent=2) + "\n")
    return stats


def _engine_status(engine: Engine | None) -> str:
    if engine is None:
        return "no prompts"
    s = engine.stats()
    return (f"{s['decode_steps']} decode steps, {100 * s['slot_occupancy']:.0f}% slots busy, "
            f"{s['prefill_tokens']} prefill tokens, {s['compiled_programs']} programs")
