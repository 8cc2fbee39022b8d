"""Training texts: which (prompt, target) pairs a teacher stage or a student learns from a record.

Formats (what part of a record is taught):
  answer          the question and its answer only (stage-1 multi-task; the `text` student)
  cot | fundamentals | mistakes   one annotation kind (stage 3; students on one teacher kind)
  mixed           every kind the record has, each as its own example (stage 2; the `mixed` student)
Styles (how the text is laid out):
  teacherlm       the teacher prompt then its continuation:
                  `Q: ... (A) .. A: The answer is (X). Let's think step by step.` + ` <text>`;
                  the answer format is `Q: ... A: The answer is (` + `X).`
  finetune_cot    Fine-tune-CoT (Ho et al. 2023): `{question} (A) .. ###` + ` <text> --> X`
                  (answer format: ` --> X`), trained on the completion only.
An annotation that is a list (several teacher samples, Fine-tune-CoT's diverse reasoning) gives one
example per sample.
Augment output: a kind the augment job skipped (prompt over max_prompt_tokens with truncation="skip":
null, listed under the record's `skipped`) gives no example for that record, and `skipped_kinds` counts
such records (the training run logs the count); a truncated kind is used as written. Any other missing
kind is an error. `filter_texts` drops the teacher's texts that fail a quality filter (`data.quality`); a
kind whose every sample was dropped gives no example either, and the drops are counted per reason.
Augment output is read from its JSONL parts or its parquet shards (`read_augmented`), the same examples
either way: flags a row does not carry (JSONL parts) are computed from it by `data.quality.row_quality`.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from etils import epath

from teacherlm_jax.data.formats import (KIND_PROMPTS, KINDS, finetune_cot_prompt, question_block,
                                        remove_duplicated_block, teacher_prompt)
from teacherlm_jax.data.quality import failures, row_quality
from teacherlm_jax.data.records import LETTERS, Record, json_object, numbered_lines
from teacherlm_jax.errors import DataError
from teacherlm_jax.paths import reading, workdir_path

FORMATS = ("answer", *KINDS, "mixed")
STYLES = ("teacherlm", "finetune_cot")


@dataclasses.dataclass(frozen=True)
class TextPair:
    id: str
    prompt: str
    target: str


@dataclasses.dataclass(frozen=True)
class Annotated:
    """A record with annotations that may hold several samples each (augment output). `skipped`: the
    kinds the augment job did not generate for it (prompt too long, truncation="skip"); `quality`: each
    sample's flags (`data.quality`, teacher texts only); `dropped`: kinds whose every sample a filter dropped."""

    record: Record
    annotations: Mapping[str, tuple[str, ...]]
    skipped: tuple[str, ...] = ()
    quality: Mapping[str, tuple[Mapping[str, Any], ...]] = dataclasses.field(default_factory=dict)
    dropped: tuple[str, ...] = ()


def annotated(record: Record) -> Annotated:
    """A record's own (gold) annotations, one sample each."""
    return Annotated(record, {k: (getattr(record, k),) for k in KINDS if getattr(record, k)})


def _answer_pair(record: Record, style: str) -> tuple[str, str]:
    letter = LETTERS[record.answer]
    if style == "teacherlm":
        return f"{question_block(record)} A: The answer is (", f"{letter})."
    return finetune_cot_prompt(record), f" --> {letter}"


def _kind_pair(record: Record, kind: str, text: str, style: str) -> tuple[str, str]:
    text = remove_duplicated_block(text.strip())
    if style == "teacherlm":
        return teacher_prompt(record, kind), f" {text}"
    return finetune_cot_prompt(record), f" {text} --> {LETTERS[record.answer]}"


def text_pairs(item: Annotated, fmt: str, style: str = "teacherlm") -> list[TextPair]:
    """The examples `item` gives in format `fmt`; none for a kind the augment job skipped; a record
    lacking the asked kind otherwise is an error."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    record = item.record
    if fmt == "answer":
        return [TextPair(record.id, *_answer_pair(record, style))]
    where = f"{record.source or 'records'}:{record.id}"
    if fmt == "mixed":
        kinds = [k for k in KINDS if item.annotations.get(k)]
        if not kinds and not item.skipped and not item.dropped:
            raise DataError(where, "has no annotation of any kind")
    elif item.annotations.get(fmt):
        kinds = [fmt]
    elif fmt in item.skipped or fmt in item.dropped:
        kinds = []  # skipped by the augment job or dropped by a filter: no example (both counted)
    else:
        raise DataError(where, f"has no {fmt!r} annotation")
    pairs = []
    for kind in kinds:
        samples = item.annotations[kind]
        for s, text in enumerate(samples):
            suffix = f"/{kind}" + (f"/{s}" if len(samples) > 1 else "")
            pairs.append(TextPair(record.id + suffix, *_kind_pair(record, kind, text, style)))
    return pairs


def mix_by_ratio(pairs_by_kind: Mapping[str, Sequence[TextPair]], ratios: Mapping[str, float],
                 seed: int) -> list[TextPair]:
    """Stage 2's mixture: each kind's examples repeated `ratio` times (a fractional part takes a
    seeded subset), so ratios 1:1:1 keep everything once."""
    mixed: list[TextPair] = []
    for i, (kind, pairs) in enumerate(sorted(pairs_by_kind.items())):
        ratio = float(ratios.get(kind, 1.0))
        if ratio < 0:
            raise ValueError(f"ratio for {kind!r} is negative: {ratio}")
        whole, frac = int(ratio), ratio - int(ratio)
        mixed.extend(list(pairs) * whole)
        if frac:
            take = np.random.default_rng([seed, i]).permutation(len(pairs))[:round(frac * len(pairs))]
            mixed.extend(pairs[j] for j in sorted(take))
    return mixed


def is_augmented(path: str | Path) -> bool:
    """Whether `path` (local, or a cloud URL) is augment output: a directory of JSONL parts or parquet shards,
    or a parquet shard (a single .jsonl file is read as generic multiple-choice data)."""
    path = workdir_path(path)
    return bool(_augmented_files(path)) if path.is_dir() else path.suffix == ".parquet"


def _augmented_files(path: epath.Path) -> list[epath.Path]:
    """A directory's JSONL parts, else its parquet shards (in `data/` for an augment output directory)."""
    return (sorted(path.glob("*.jsonl")) or sorted(path.glob("*.parquet"))
            or sorted((path / "data").glob("*.parquet")))


def _rows(file: epath.Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for each record of a JSONL part or a parquet shard."""
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        with reading(file) as f:  # local or in a bucket
            rows = pq.read_table(f).to_pylist()
        for i, row in enumerate(rows):
            yield f"{file}[row {i}]", row
        return
    for where, line in numbered_lines(file):
        if line.strip():
            try:
                yield where, json_object(line)
            except ValueError as e:
                raise DataError(where, f"not an augmented record ({e})") from None


def read_augmented(path: str | Path) -> list[Annotated]:
    """Records written by the augment job (`augmented/<dataset>/`: its `*.jsonl` parts, else its parquet
    shards `data/*.parquet`; or one such file): the teacher's texts under `cot` / `fundamentals` /
    `mistakes`, a string or a list of samples (null, and listed under `skipped`, for a kind it skipped),
    with each sample's quality flags."""
    path = workdir_path(path)
    if path.is_dir() and (path / "manifest.json").exists() and not (path / "summary.json").exists():
        raise DataError(str(path), "augment output is incomplete (no summary.json yet): rerun the augment job "
                                   "with the same command to finish it")
    files = _augmented_files(path) if path.is_dir() else [path]
    if not files:
        raise DataError(str(path), "no augmented .jsonl parts or .parquet shards found")
    return [_annotated_row(where, row, path.name) for file in files for where, row in _rows(file)]


def _annotated_row(where: str, row: dict[str, Any], default_source: str) -> Annotated:
    try:
        record = Record(id=str(row["id"]), question=row["question"], choices=tuple(row["choices"]),
                        answer=int(row["answer"]), subject=row.get("subject"), source=row.get("source") or default_source)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(where, f"not an augmented record ({type(e).__name__}: {e})") from e
    annotations = {}
    for kind in KINDS:
        value = row.get(kind)
        if value is None:
            continue
        samples = (value,) if isinstance(value, str) else tuple(value)
        if not all(isinstance(s, str) for s in samples):
            raise DataError(where, f"{kind!r} must be a string or a list of strings")
        annotations[kind] = samples
    skipped = row.get("skipped") or []
    if not isinstance(skipped, list) or not set(skipped) <= set(KINDS):
        raise DataError(where, f"'skipped' must be a list of kinds {KINDS}, got {skipped!r}")
    quality = row.get("quality") or row_quality(row)
    return Annotated(record, annotations, tuple(skipped), {k: tuple(v) for k, v in quality.items()})


def filter_texts(items: Iterable[Annotated], name: str, kinds: Sequence[str] = KINDS) -> tuple[list[Annotated],
                                                                                              Counter]:
    """`items` with the samples of `kinds` that fail filter `name` (`data.quality.FILTERS`) removed, and the
    counts: `texts` (of `kinds` with flags), `kept`, `dropped` (texts that failed), one count per reason,
    `cut_unknown` (texts whose `cut` is unknown: kept by `clean`)."""
    counts: Counter = Counter()
    out = []
    for item in items:
        annotations, dropped = dict(item.annotations), list(item.dropped)
        for kind in kinds:
            flags = item.quality.get(kind)
            if kind not in annotations or not flags:  # gold texts carry no flags: never filtered
                continue
            kept = []
            for text, f in zip(annotations[kind], flags):
                reasons = failures(f, name)
                counts.update(reasons)
                counts.update(texts=1, kept=not reasons, dropped=bool(reasons), cut_unknown=f["cut"] is None)
                if not reasons:
                    kept.append(text)
            if kept:
                annotations[kind] = tuple(kept)
            else:
                del annotations[kind]
                dropped.append(kind)
        out.append(dataclasses.replace(item, annotations=annotations, dropped=tuple(dropped)))
    return out, counts


def skipped_kinds(items: Iterable[Annotated], fmt: str) -> dict[str, int]:
    """{kind: records that give no example of it in format `fmt` because the augment job skipped it}."""
    kinds = KINDS if fmt == "mixed" else (fmt,) if fmt in KINDS else ()
    counts = {k: sum(k in item.skipped and not item.annotations.get(k) for item in items) for k in kinds}
    return {k: n for k, n in counts.items() if n}


def build_pairs(items: Iterable[Annotated], fmt: str, style: str = "teacherlm", *,
                ratios: Mapping[str, float] | None = None, seed: int = 0) -> list[TextPair]:
    """Every item's examples in format `fmt`; `mixed` applies per-kind `ratios` (default 1 each)."""
    items = list(items)
    if fmt != "mixed" or not ratios:
        return [pair for item in items for pair in text_pairs(item, fmt, style)]
    by_kind: dict[str, list[TextPair]] = {k: [] for k in KIND_PROMPTS}
    for item in items:
        for kind in KINDS:
            if item.annotations.get(kind):
                by_kind[kind].extend(text_pairs(Annotated(item.record, {kind: item.annotations[kind]}), kind, style))
    return mix_by_ratio(by_kind, ratios, seed)
