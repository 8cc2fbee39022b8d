"""A chunk of records <-> the teacher's work: its prompts (tokenized, cut or skipped at the limit) and,
once every row has ended, its output records (one per input record, schema in `teacherlm_jax.augment`)."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from teacherlm_jax.generation.scheduler import Prompt
from teacherlm_jax.augment.settings import Settings, prompt_seed
from teacherlm_jax.data import KINDS, Record, teacher_prompt


@dataclasses.dataclass
class Chunk:
    """One part's records, the prompts the teacher continues and, as rows end, their texts."""

    dataset: str
    index: int  # the chunk's number: its part file
    records: Sequence[Record]
    prompts: dict[str, list[str]]  # kind -> prompt text per record
    prompt_tokens: dict[tuple[int, str], int]  # (record, kind) -> tokens before truncation
    work: list[tuple[tuple[int, str], Prompt]]  # ((record, kind), prompt) to generate, longest first
    outputs: dict[tuple[int, str], list[tuple[str, int]]] = dataclasses.field(default_factory=dict)

    @property
    def done(self) -> bool:
        return len(self.outputs) == len(self.work)

    @property
    def tokens(self) -> int:
        return sum(n for samples in self.outputs.values() for _, n in samples)


def make_chunk(tokenizer, dataset: str, index: int, records: Sequence[Record], settings: Settings,
               limit: int) -> Chunk:
    """Tokenizes every kind's prompt as TeacherLM's `tokenizer(text)` does; prompts over `limit` tokens keep
    their last tokens (truncation "left") or are not generated ("skip"). A record's kinds follow each
    other, marked with the tokens they share (the question and its answer), records longest first."""
    prompts = {kind: [teacher_prompt(r, kind) for r in records] for kind in settings.kinds}
    lengths: dict[tuple[int, str], int] = {}
    kept: dict[int, dict[str, tuple[int, ...]]] = {i: {} for i in range(len(records))}
    for kind in settings.kinds:
        for i, ids in enumerate(tokenizer(prompts[kind])["input_ids"]):
            lengths[i, kind] = len(ids)
            if len(ids) <= limit or settings.truncation == "left":
                kept[i][kind] = tuple(ids[-limit:])
    work = []
    for i in sorted(kept, key=lambda i: -max(map(len, kept[i].values()), default=0)):  # stable
        shared = _shared_prefix(list(kept[i].values()))
        for kind, ids in kept[i].items():
            seed = prompt_seed(settings.sampling.seed, dataset, records[i].id, kind)
            work.append(((i, kind), Prompt(ids, seed, shared)))
    return Chunk(dataset, index, records, prompts, lengths, work)


def _shared_prefix(rows: list[tuple[int, ...]]) -> int:
    """Leading tokens common to every row, leaving each at least one of its own (0 for a single row)."""
    if len(rows) < 2:
        return 0
    common = 0
    for column in zip(*rows):
        if len(set(column)) > 1:
            break
        common += 1
    return min(common, min(map(len, rows)) - 1)


def decode(tokenizer, tokens: np.ndarray, eos: set[int]) -> tuple[str, int]:
    """(text, token count) of one generated row, its ending EOS stripped."""
    ids = tokens.tolist()
    if ids and ids[-1] in eos:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=True), len(ids)


def output_records(chunk: Chunk, settings: Settings, limit: int, teacher: dict[str, Any]) -> list[dict[str, Any]]:
    """One output record per input record of a finished chunk, in input order."""
    return [_output_record(chunk, i, settings, limit, teacher) for i in range(len(chunk.records))]


def record_inputs(record: Record, settings: Settings, teacher: dict[str, Any]) -> dict[str, Any]:
    """What a record's output is generated from, as its output record holds it (JSON types): the record,
    its prompts, the teacher (its weights' fingerprint included) and the sampling. A part whose rows hold
    other inputs is stale."""
    inputs = {"id": record.id, "question": record.question, "choices": list(record.choices),
              "answer": record.answer, "subject": record.subject, "source": record.source,
              "gold": {k: getattr(record, k) for k in KINDS if getattr(record, k)},
              "prompts": {kind: teacher_prompt(record, kind) for kind in settings.kinds},
              "teacher": teacher, "sampling": dataclasses.asdict(settings.sampling)}
    return json.loads(json.dumps(inputs))


def _output_record(chunk: Chunk, i: int, settings: Settings, limit: int, teacher: dict[str, Any]) -> dict[str, Any]:
    one = settings.sampling.num_samples == 1
    inputs = record_inputs(chunk.records[i], settings, teacher)
    out = {k: inputs[k] for k in ("id", "question", "choices", "answer", "subject", "source", "gold")}
    for kind in settings.kinds:
        samples = chunk.outputs.get((i, kind))
        out[kind] = None if samples is None else samples[0][0] if one else [t for t, _ in samples]
    out["prompts"] = inputs["prompts"]
    out["prompt_tokens"] = {kind: chunk.prompt_tokens[i, kind] for kind in settings.kinds}
    out["new_tokens"] = {kind: None if (i, kind) not in chunk.outputs else chunk.outputs[i, kind][0][1] if one
                         else [n for _, n in chunk.outputs[i, kind]] for kind in settings.kinds}
    long = [kind for kind in settings.kinds if chunk.prompt_tokens[i, kind] > limit]
    out["truncated"] = long if settings.truncation == "left" else []
    out["skipped"] = long if settings.truncation == "skip" else []
    out["teacher"] = inputs["teacher"]
    out["sampling"] = inputs["sampling"]
    return out
