"""Evaluation task names -> (dataset, split, context format).

- `mmlu`: the canonical MMLU test set (14042 questions); `mmlu_2020` / `mmlu_2020_val`: the Sep-2020
  pre-release's test / val; both with TeacherLM's MMLU context.
- `creak`, `ecqa`, `strategyqa`: TeacherLM's own test sets (registry `teacherlm_*`, split test).
- `name:split`: any registry name and split (e.g. `creak:dev`, `mmlu:dev`); MMLU sources get the MMLU
  context. The task's name is `name_split`.
- a path ending `.jsonl`: the generic multiple-choice JSONL; the task's name is the file's stem.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from teacherlm_jax.data import REGISTRY, Record, load_records
from teacherlm_jax.data.sources import EVAL_SETS
from teacherlm_jax.data.specs import DatasetSpec
from teacherlm_jax.errors import DataError

ALIASES = EVAL_SETS  # in the data layer: training runs' decontamination reports name eval sets the same way
MMLU_SOURCES = ("mmlu", "mmlu_2020")


@dataclasses.dataclass(frozen=True)
class Task:
    name: str  # key in metrics.json and directory under eval/
    dataset: str  # registry name or .jsonl path
    split: str
    mmlu: bool  # TeacherLM's MMLU context (header, end punctuation, newlines)

    @property
    def label(self) -> str:
        """What was read: `name/split` for registry data, the path of a JSONL file."""
        return self.dataset if self.dataset.endswith(".jsonl") else f"{self.dataset}/{self.split}"


def resolve_task(spec: str) -> Task:
    """The task a config entry names; unknown names are an error listing what is accepted."""
    spec = spec.strip()
    if spec in ALIASES:
        dataset, split = ALIASES[spec]
        return Task(spec, dataset, split, dataset in MMLU_SOURCES)
    dataset = DatasetSpec.parse(spec)
    if dataset.jsonl or (dataset.registered and dataset.split_named):
        try:
            dataset.check()
        except ValueError as e:
            raise ValueError(f"config.tasks: {e}") from None
        return Task(dataset.name, dataset.source, dataset.split, dataset.source in MMLU_SOURCES)
    raise ValueError(f"config.tasks: unknown task {spec!r}; expected one of {sorted(ALIASES)}, "
                     f"'<registry name>:<split>' with a name from {sorted(REGISTRY)}, or a .jsonl path")


def resolve_tasks(specs: Sequence[str | Task]) -> list[Task]:
    tasks = [s if isinstance(s, Task) else resolve_task(s) for s in specs]
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"config.tasks: task names {duplicates} appear more than once")
    if not tasks:
        raise ValueError("config.tasks is empty")
    return tasks


def subset(records: list[Record], max_examples: int) -> list[Record]:
    """`max_examples` questions evenly spaced over the set (0: all), so that a smoke run of MMLU
    touches every subject rather than the first one only."""
    if max_examples < 0:
        raise ValueError(f"max_examples={max_examples}; expected >= 0 (0 = all)")
    if not max_examples or max_examples >= len(records):
        return records
    return [records[i] for i in np.linspace(0, len(records) - 1, max_examples).round().astype(int)]


def load_task(task: Task, *, data_dir: str | None = None) -> list[Record]:
    """The task's questions; none is an error (an accuracy over no questions means nothing)."""
    records = load_records(task.dataset, task.split, data_dir=data_dir)
    if not records:
        raise DataError(task.label, f"0 records: task {task.name!r} has no questions to evaluate (config.tasks)")
    return records
