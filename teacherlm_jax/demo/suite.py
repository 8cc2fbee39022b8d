"""The demo's own steps (`suite` and `tokenizer` in the pipeline, configs/demo.py): the synthetic reasoning
suite's files and a tokenizer trained on them.

    WORKDIR/suite/{teacher_train,student_train,student_test}.jsonl   the synthetic suite (all families)
    WORKDIR/suite/{students,test}.jsonl                              the students' families only
    WORKDIR/tokenizer/                                               trained on the suite
"""
from __future__ import annotations

import json
from collections.abc import Iterator

import ml_collections
from etils import epath

from teacherlm_jax.data.synthetic import SPLITS, make_suite
from teacherlm_jax.demo.tokenizer import train_tokenizer
from teacherlm_jax.paths import local_dir, write_atomic

FILES = (*SPLITS, "students", "test")


def _write_jsonl(path: epath.Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))  # a file is complete or absent


def student_families(suite: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Whose questions the students learn and are tested on: `suite.student_families`, else the held-out
    families, else every family."""
    chosen = tuple(suite.student_families) or tuple(suite.heldout_families) or tuple(suite.families)
    unknown = sorted(set(chosen) - set(suite.families))
    if unknown:
        raise ValueError(f"config.suite.student_families: {unknown} are not among config.suite.families "
                         f"{tuple(suite.families)}")
    return chosen


def write_suite(suite: ml_collections.ConfigDict, out: epath.Path) -> dict[str, epath.Path]:
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


def suite_texts(suite_dir: epath.Path) -> Iterator[str]:
    """Every text a model of the demo reads or writes, for training the tokenizer."""
    from teacherlm_jax.data.examples import STYLES, annotated, build_pairs
    from teacherlm_jax.data.registry import load_records

    for split in SPLITS:
        items = [annotated(r) for r in load_records(str(suite_dir / f"{split}.jsonl"))]
        for style in STYLES:
            for fmt in ("answer", "mixed"):
                for pair in build_pairs(items, fmt, style):
                    yield pair.prompt + pair.target


def write_tokenizer(tokenizer: ml_collections.ConfigDict, suite_dir: epath.Path, out: epath.Path) -> None:
    """A tokenizer of `tokenizer.vocab_size` tokens trained on the suite in `suite_dir`, saved in `out`."""
    with local_dir(out) as local:
        train_tokenizer(suite_texts(suite_dir), local, vocab_size=int(tokenizer.vocab_size))
