"""The demo's own steps (`suite` and `tokenizer` in the pipeline, configs/demo.py): the synthetic reasoning
suite's files and a tokenizer trained on them.

    WORKDIR/suite/{teacher_train,student_train,student_test}.jsonl   the synthetic suite (all families)
    WORKDIR/suite/{students,test}.jsonl                              the students' families only
    WORKDIR/tokenizer/                                               trained on the suite
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import ml_collections

from teacherlm_jax.data.synthetic import SPLITS, make_suite
from teacherlm_jax.demo.tokenizer import train_tokenizer

FILES = (*SPLITS, "students", "test")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)  # a file is complete or absent


def student_families(suite: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Whose questions the students learn and are tested on: `suite.student_families`, else the held-out
    families, else every family."""
    chosen = tuple(suite.student_families) or tuple(suite.heldout_families) or tuple(suite.families)
    unknown = sorted(set(chosen) - set(suite.families))
    if unknown:
        raise ValueError(f"config.suite.student_families: {unknown} are not among config.suite.families "
                         f"{tuple(suite.families)}")
    return chosen


def write_suite(suite: ml_collections.ConfigDict, out: Path) -> dict[str, Path]:
    """The suite's splits, plus the students' training and test questions (their families only)."""
    paths = {name: out / f"{name}.jsonl" for name in FILES}
    out.mkdir(parents=True, exist_ok=True)
    made = make_suite(int(suite.seed), n_teacher_per_family=int(suite.n_teacher_per_family),
                      n_train_per_family=int(suite.n_train_per_family), n_test_per_family=int(suite.n_test_per_family),
                      families=tuple(suite.families), heldout_families=tuple(suite.heldout_families))
    families = set(student_families(suite))
    for split in SPLITS:
        _write_jsonl(paths[split], made[split])
    _write_jsonl(paths["students"], [r for r in made["student_train"] if r["subject"] in families])
    _write_jsonl(paths["test"], [r for r in made["student_test"] if r["subject"] in families])
    return paths


def suite_texts(suite_dir: Path) -> Iterator[str]:
    """Every text a model of the demo reads or writes, for training the tokenizer."""
    from teacherlm_jax.data.examples import STYLES, annotated, build_pairs
    from teacherlm_jax.data.registry import load_records

    for split in SPLITS:
        items = [annotated(r) for r in load_records(str(suite_dir / f"{split}.jsonl"))]
        for style in STYLES:
            for fmt in ("answer", "mixed"):
                for pair in build_pairs(items, fmt, style):
                    yield pair.prompt + pair.target


def write_tokenizer(tokenizer: ml_collections.ConfigDict, suite_dir: Path, out: Path) -> Path:
    """A tokenizer of `tokenizer.vocab_size` tokens trained on the suite in `suite_dir`, saved in `out`."""
    return train_tokenizer(suite_texts(suite_dir), out, vocab_size=int(tokenizer.vocab_size))
