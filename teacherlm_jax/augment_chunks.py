"""The augment job's engine: prompts of a chunk of records -> batches -> teacher texts -> one part file.

See teacherlm_jax/augment.py for the job, its files and guarantees. `augment_records` is the library
call (tests and notebooks use it with a model in memory); `generate_chunk` does one chunk.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from teacherlm_jax.augment_report import MANIFEST, RUNS, part_path, write_atomic
from teacherlm_jax.data import KINDS, Record, teacher_prompt
from teacherlm_jax.sample import Sampler, generate, num_traces
from teacherlm_jax.sharding import LogicalRules

log = logging.getLogger(__name__)
TRUNCATION = ("left", "skip")


def require_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r}; expected an integer >= {minimum}")


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the teacher samples; defaults are TeacherLM's (transformers `generate`, do_sample, top-k 50).

    TeacherLM allowed 2048 new tokens; 512 is the default here because BLOOM's 2048 positions hold the
    prompt too. temperature 0 is greedy; num_samples > 1 (Fine-tune-CoT's diverse reasoning) needs
    temperature > 0. stop_at_eos=False always generates max_new_tokens (benchmarks).
    """

    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    max_new_tokens: int = 512
    num_samples: int = 1
    stop_at_eos: bool = True
    seed: int = 0

    def __post_init__(self):
        Sampler(self.temperature, self.top_k, self.top_p)  # raises on a bad value, naming it
        require_int("max_new_tokens", self.max_new_tokens, 1)
        require_int("num_samples", self.num_samples, 1)
        require_int("seed", self.seed, 0)
        if not isinstance(self.stop_at_eos, bool):
            raise ValueError(f"stop_at_eos={self.stop_at_eos!r}; expected True or False")
        if self.num_samples > 1 and self.temperature == 0:
            raise ValueError(f"num_samples={self.num_samples} at temperature=0: greedy samples are identical; "
                             f"use temperature > 0 for diverse reasoning")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the job generates and how it cuts the work (see the module docstring)."""

    kinds: tuple[str, ...] = KINDS
    sampling: Sampling = Sampling()
    batch_size: int = 16
    chunk_size: int = 256
    max_prompt_tokens: int = 0
    truncation: str = "left"

    def __post_init__(self):
        kinds = self.kinds
        if isinstance(kinds, str) or not kinds or len(set(kinds)) != len(kinds) or set(kinds) - set(KINDS):
            bad = [k for k in ([kinds] if isinstance(kinds, str) else kinds) if k not in KINDS]
            raise ValueError(f"kinds={kinds!r}; expected a non-empty tuple of distinct kinds out of {KINDS}"
                             + (f" ({bad} unknown)" if bad else ""))
        object.__setattr__(self, "kinds", tuple(kinds))
        require_int("batch_size", self.batch_size, 1)
        require_int("chunk_size", self.chunk_size, 1)
        require_int("max_prompt_tokens", self.max_prompt_tokens, 0)
        if self.truncation not in TRUNCATION:
            raise ValueError(f"truncation={self.truncation!r}; expected one of {TRUNCATION}")

    def prompt_limit(self, max_position_embeddings: int) -> int:
        """Most prompt tokens the teacher reads: what max_new_tokens leaves of the model's positions."""
        room = max_position_embeddings - self.sampling.max_new_tokens
        if room < 1:
            raise ValueError(f"max_new_tokens={self.sampling.max_new_tokens} leaves no room for a prompt in the "
                             f"model's max_position_embeddings={max_position_embeddings}")
        if self.max_prompt_tokens > room:
            raise ValueError(f"max_prompt_tokens={self.max_prompt_tokens} plus max_new_tokens="
                             f"{self.sampling.max_new_tokens} exceeds max_position_embeddings={max_position_embeddings}")
        return self.max_prompt_tokens or room


def prompt_seed(seed: int, dataset: str, record_id: str, kind: str) -> int:
    """A prompt's own seed in [0, 2**32): stable across batching, processes and restarts."""
    digest = hashlib.blake2b(json.dumps([seed, dataset, record_id, kind]).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def _check_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest, or check that the parts already there were written with these settings."""
    manifest = json.loads(json.dumps(manifest))  # tuples -> lists, as read back
    path = out_dir / MANIFEST
    if not path.exists():
        write_atomic(path, json.dumps(manifest, indent=2) + "\n")
        return
    old = json.loads(path.read_text())
    changed = [f"{k}: {old.get(k)!r} -> {manifest.get(k)!r}" for k in sorted(old.keys() | manifest.keys())
               if old.get(k) != manifest.get(k)]
    if changed:
        raise ValueError(f"{path}: {out_dir} holds output written with other settings ({'; '.join(changed)}); "
                         f"rerun with the same settings to resume, or use another workdir")


def _part_done(path: Path, chunk: Sequence[Record]) -> bool:
    """Whether `path` exists; it must then hold exactly the chunk's records (it was renamed into place whole)."""
    if not path.exists():
        return False
    ids = [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if ids != [r.id for r in chunk]:
        raise ValueError(f"{path}: holds records {ids[:3]}... but this chunk is {[r.id for r in chunk][:3]}...; "
                         f"it was written from other input. Delete it, or use another workdir")
    return True


def _decode(tokenizer, tokens: np.ndarray, length: int, eos: set[int]) -> tuple[str, int]:
    """(text, token count) of one generated row, its ending EOS stripped."""
    ids = tokens[:length].tolist()
    if ids and ids[-1] in eos:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=True), len(ids)


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for b, row in enumerate(rows):
        ids[b, width - len(row):] = row
        mask[b, width - len(row):] = 1
    return ids, mask


def generate_chunk(model: nnx.Module, tokenizer, chunk: Sequence[Record], settings: Settings, *, dataset: str,
                   limit: int, teacher: dict[str, Any], mesh: Mesh | None = None,
                   rules: LogicalRules | None = None) -> tuple[list[dict[str, Any]], int]:
    """(one output record per input record, tokens generated) for one chunk."""
    sampling = settings.sampling
    eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.config.eos_token_id
    eos = {eos_id} if sampling.stop_at_eos and eos_id is not None else set()
    pad_id = next((p for p in (tokenizer.pad_token_id, model.config.pad_token_id) if p is not None), 0)
    prompts = {kind: [teacher_prompt(r, kind) for r in chunk] for kind in settings.kinds}
    lengths: dict[tuple[int, str], int] = {}
    items = []  # (record index, kind, prompt token ids)
    for kind in settings.kinds:
        for i, ids in enumerate(tokenizer(prompts[kind])["input_ids"]):  # as TeacherLM's `tokenizer(text)`
            lengths[i, kind] = len(ids)
            if len(ids) <= limit or settings.truncation == "left":
                items.append((i, kind, list(ids)[-limit:]))
    items.sort(key=lambda item: -len(item[2]))  # stable: equal lengths keep (kind, record) order
    outputs: dict[tuple[int, str], list[tuple[str, int]]] = {}
    for start in range(0, len(items), settings.batch_size):
        batch = items[start:start + settings.batch_size]
        rows = batch + [batch[-1]] * (settings.batch_size - len(batch))  # one shape for every batch
        ids, mask = _left_pad([ids for _, _, ids in rows], pad_id)
        out = generate(model, ids, mask, max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                       top_k=sampling.top_k, top_p=sampling.top_p, num_samples=sampling.num_samples,
                       eos_token_id=eos_id, stop_at_eos=sampling.stop_at_eos, mesh=mesh, rules=rules,
                       seed=[prompt_seed(sampling.seed, dataset, chunk[i].id, kind) for i, kind, _ in rows])
        for b, (i, kind, _) in enumerate(batch):
            n = sampling.num_samples
            outputs[i, kind] = [_decode(tokenizer, out.tokens[r], out.lengths[r], eos) for r in range(b * n, b * n + n)]
    records = [_output_record(r, i, settings, prompts, lengths, outputs, limit, teacher) for i, r in enumerate(chunk)]
    return records, sum(n for samples in outputs.values() for _, n in samples)


def _output_record(record: Record, i: int, settings: Settings, prompts: dict[str, list[str]],
                   lengths: dict[tuple[int, str], int], outputs: dict[tuple[int, str], list[tuple[str, int]]],
                   limit: int, teacher: dict[str, Any]) -> dict[str, Any]:
    sampling = settings.sampling
    one = sampling.num_samples == 1
    out: dict[str, Any] = {
        "id": record.id, "question": record.question, "choices": list(record.choices), "answer": record.answer,
        "subject": record.subject, "source": record.source,
        "gold": {k: getattr(record, k) for k in KINDS if getattr(record, k)},
    }
    for kind in settings.kinds:
        samples = outputs.get((i, kind))
        out[kind] = None if samples is None else samples[0][0] if one else [t for t, _ in samples]
    out["prompts"] = {kind: prompts[kind][i] for kind in settings.kinds}
    out["prompt_tokens"] = {kind: lengths[i, kind] for kind in settings.kinds}
    out["new_tokens"] = {kind: None if (i, kind) not in outputs else outputs[i, kind][0][1] if one
                         else [n for _, n in outputs[i, kind]] for kind in settings.kinds}
    long = [kind for kind in settings.kinds if lengths[i, kind] > limit]
    out["truncated"] = long if settings.truncation == "left" else []
    out["skipped"] = long if settings.truncation == "skip" else []
    out["teacher"] = teacher
    out["sampling"] = dataclasses.asdict(sampling)
    return out


@contextlib.contextmanager
def _progress(total: int, done: int, desc: str) -> Iterator[Callable[[int, int], None]]:
    """update(records, tokens): a tqdm bar with records/s and tokens/s on a terminal, else a log line per call."""
    start, counts = time.perf_counter(), [0, 0]

    def rates(records: int, tokens: int) -> tuple[float, float]:
        counts[0] += records
        counts[1] += tokens
        elapsed = max(time.perf_counter() - start, 1e-9)
        return counts[0] / elapsed, counts[1] / elapsed

    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=total, initial=done, desc=desc, unit="record") as bar:
            def update(records: int, tokens: int) -> None:
                records_s, tokens_s = rates(records, tokens)
                bar.set_postfix_str(f"{records_s:.2f} records/s, {tokens_s:.0f} tokens/s", refresh=False)
                bar.update(records)

            yield update
        return

    def log_update(records: int, tokens: int) -> None:
        records_s, tokens_s = rates(records, tokens)
        log.info("%s: %d/%d records, %.2f records/s, %.0f tokens/s", desc, done + counts[0], total, records_s,
                 tokens_s)

    yield log_update


def augment_records(model: nnx.Module, tokenizer, records: Sequence[Record], out_dir: str | Path,
                    settings: Settings = Settings(), *, dataset: str, info: dict[str, Any] | None = None,
                    teacher: dict[str, Any] | None = None, process_index: int = 0, process_count: int = 1,
                    mesh: Mesh | None = None, rules: LogicalRules | None = None) -> dict[str, Any]:
    """Generates this process's missing parts of `records` into `out_dir`; returns this run's statistics
    (also written to out_dir/runs/). `dataset` names the output and keys the seeds; `info` (source,
    split, ...) and `teacher` go into the manifest and, for `teacher`, every output record."""
    out_dir = Path(out_dir)
    (out_dir / RUNS).mkdir(parents=True, exist_ok=True)
    limit = settings.prompt_limit(model.config.max_position_embeddings)
    teacher = dict(teacher or {})
    size = settings.chunk_size
    chunks = [records[i:i + size] for i in range(0, len(records), size)]
    _check_manifest(out_dir, {"dataset": dataset, **(info or {}), "records": len(records),
                              "ids_sha256": hashlib.sha256(json.dumps([r.id for r in records]).encode()).hexdigest(),
                              "chunks": len(chunks), "chunk_size": size, "kinds": settings.kinds,
                              "sampling": dataclasses.asdict(settings.sampling), "truncation": settings.truncation,
                              "max_prompt_tokens": limit, "teacher": teacher})
    mine = range(process_index, len(chunks), process_count)
    for c in mine:  # a killed run's temporary files (parts are renamed whole, never left half-written)
        for stale in out_dir.glob(part_path(out_dir, c, len(chunks)).name + ".tmp*"):
            stale.unlink()
    todo = [c for c in mine if not _part_done(part_path(out_dir, c, len(chunks)), chunks[c])]
    total = sum(len(chunks[c]) for c in mine)
    done = total - sum(len(chunks[c]) for c in todo)
    if done:
        log.info("%s: %d of this process's %d records already written; resuming", dataset, done, total)
    started, traces, tokens = time.time(), num_traces(), 0
    start = time.perf_counter()

    def save_stats() -> dict[str, Any]:
        stats = {"process_index": process_index, "process_count": process_count,
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                 "chunks_generated": len(todo), "chunks_resumed": len(mine) - len(todo), "records": total - done,
                 "tokens": tokens, "seconds": round(time.perf_counter() - start, 3),
                 "compiled_programs": num_traces() - traces}
        write_atomic(out_dir / RUNS / f"{process_index}-{time.time_ns()}.json", json.dumps(stats, indent=2) + "\n")
        return stats

    stats = save_stats() if not todo else {}
    with _progress(total, done, dataset) as progress:
        for k, c in enumerate(todo):
            rows, n = generate_chunk(model, tokenizer, chunks[c], settings, dataset=dataset, limit=limit,
                                     teacher=teacher, mesh=mesh, rules=rules)
            tokens += n
            if k == len(todo) - 1:  # before the last part: whoever then finds every part written finds these stats
                stats = save_stats()
            write_atomic(part_path(out_dir, c, len(chunks)),
                         "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            progress(len(chunks[c]), n)
    return stats
