"""Decontamination report: word n-gram overlap between what students train on and the evaluation sets.

GPT-3's check (Brown et al. 2020, appendix C), simplified: texts are lowercased and split into words
(`\\w+`, punctuation dropped); an evaluation item is contaminated at n when one of its n-grams occurs in a
training text. Training texts are the examples a run trains on (`TextPair`s): the `prompt` (the question
and its options, in the teacher prompt) and the `target` (the teacher's text, or the answer). An item's
text is its question and options. Per evaluation set and n (default 13 as GPT-3, and 8):
`items`, `checked` (items with at least n words), `contaminated` (items with an overlap), `fraction`
(contaminated / checked), `by_field` (items whose overlap is with a prompt / a target) and `examples`
(the first few: eval id, training dataset, example id, field, the shared n-gram).

Template n-grams (text every item of a set shares, such as CREAK's "Determine the correctness of the
following sentence." or MMLU's header) would flag every item: an n-gram found in more than `common` of a
set's items (and in at least 2) is not counted; how many were ignored is reported.

Where: the training run writes WORKDIR/decontamination.json and .md when `config.data.decontaminate`
names evaluation sets (names as the eval job's `config.tasks`: `creak` is TeacherLM's CREAK test set,
`creak:dev`, a .jsonl path); the demo sets it to its test set for every student.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath

from teacherlm_jax.data.examples import TextPair
from teacherlm_jax.data.records import Record
from teacherlm_jax.data.registry import load_records
from teacherlm_jax.data.sources import EVAL_SETS
from teacherlm_jax.data.specs import DatasetSpec
from teacherlm_jax.paths import workdir_path, write_atomic

NS = (13, 8)
COMMON = 0.05
EXAMPLES = 5
REPORT = "decontamination"
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> set[str]:
    return {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def eval_records(spec: str, data_dir: str | None = None) -> list[Record]:
    """An evaluation set as the eval job names it (`EVAL_SETS` aliases, `name:split`, a .jsonl path)."""
    if spec in EVAL_SETS:
        return load_records(*EVAL_SETS[spec], data_dir=data_dir)
    dataset = DatasetSpec.parse(spec)
    if (dataset.registered and dataset.split_named) or dataset.jsonl:
        return load_records(dataset.source, dataset.split, data_dir=data_dir)
    raise ValueError(f"config.data.decontaminate: unknown evaluation set {spec!r}; expected one of "
                     f"{sorted(EVAL_SETS)}, '<registry name>:<split>' or a .jsonl path")


def contamination(train: Mapping[str, Sequence[TextPair]], evals: Mapping[str, Sequence[Record]],
                  ns: Sequence[int] = NS, common: float = COMMON, examples: int = EXAMPLES) -> dict[str, Any]:
    """The report (see the module docstring) of `train` ({dataset: examples}) against `evals` ({name: items})."""
    report: dict[str, Any] = {"ns": list(ns), "common": common,
                              "train": {name: len(pairs) for name, pairs in train.items()}, "eval_sets": {}}
    for name, items in evals.items():
        tokens = [words(f"{r.question} {' '.join(r.choices)}") for r in items]
        report["eval_sets"][name] = {str(n): _overlap(train, items, tokens, n, common, examples) for n in ns}
    return report


def _overlap(train: Mapping[str, Sequence[TextPair]], items: Sequence[Record], tokens: list[list[str]], n: int,
             common: float, examples: int) -> dict[str, Any]:
    grams = [_ngrams(t, n) for t in tokens]
    owners: dict[str, list[int]] = {}
    for i, item_grams in enumerate(grams):
        for gram in item_grams:
            owners.setdefault(gram, []).append(i)
    limit = max(1, common * len(items))
    template = {g for g, o in owners.items() if len(o) > limit and len(o) >= 2}
    index = {g: o for g, o in owners.items() if g not in template}
    hits: dict[int, dict[str, Any]] = {}
    fields: dict[int, set[str]] = {}
    for dataset, pairs in train.items():
        for pair in pairs:
            for field, text in (("prompt", pair.prompt), ("target", pair.target)):
                for gram in _ngrams(words(text), n) & index.keys():
                    for i in index[gram]:
                        fields.setdefault(i, set()).add(field)
                        hits.setdefault(i, {"eval_id": items[i].id, "dataset": dataset, "example": pair.id,
                                            "field": field, "ngram": gram})
    checked = sum(len(t) >= n for t in tokens)
    return {"items": len(items), "checked": checked, "contaminated": len(hits),
            "fraction": round(len(hits) / checked, 4) if checked else None,
            "by_field": {f: sum(f in s for s in fields.values()) for f in ("prompt", "target")},
            "template_ngrams_ignored": len(template), "examples": [hits[i] for i in sorted(hits)[:examples]]}


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Decontamination", "",
             f"Word n-gram overlap (n = {', '.join(map(str, report['ns']))}) between the training examples "
             f"({', '.join(f'{k}: {v}' for k, v in report['train'].items())}) and each evaluation set; n-grams in "
             f"more than {report['common']:.0%} of a set's items are template text and not counted "
             "(teacherlm_jax/data/decontamination.py).", "",
             "| eval set | n | items | checked | contaminated | fraction | via prompt | via target |",
             "|---|---|---|---|---|---|---|---|"]
    for name, by_n in report["eval_sets"].items():
        for n, r in by_n.items():
            lines.append(f"| {name} | {n} | {r['items']} | {r['checked']} | {r['contaminated']} | {r['fraction']} | "
                         f"{r['by_field']['prompt']} | {r['by_field']['target']} |")
    for name, by_n in report["eval_sets"].items():
        for n, r in by_n.items():
            for e in r["examples"]:
                lines.append(f"- {name} (n={n}): `{e['eval_id']}` shares \"{e['ngram']}\" with {e['dataset']} "
                             f"`{e['example']}` ({e['field']})")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | os.PathLike) -> epath.Path:
    """out_dir/decontamination.json and .md (out_dir may be a cloud URL); returns the JSON's path."""
    path = workdir_path(out_dir) / f"{REPORT}.json"
    write_atomic(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_atomic(path.with_suffix(".md"), markdown(report))
    return path
