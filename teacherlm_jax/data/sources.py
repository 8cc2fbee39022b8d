"""Readers for the real datasets in the shared data folder (layout: its README.md).

Every reader is `(data_dir, split) -> rows` (see records.collect). Choices in the registry:
- creak: `Determine the correctness of the following sentence. {sentence}`, choices (True, False),
  cot = explanation (the contrast set's "n/a" -> None). Splits train/dev/contrast_set.
- strategyqa: worded as TeacherLM's test set: `Fact 1: .. Fact n: .. Given these facts above,
  {question.strip().lower()}` (cleaned), choices (True, False); the facts are in the question, so
  cot = the decomposition joined by spaces (TeacherLM's `analysis`). Splits train/dev (the two halves
  of the public train set) with TeacherLM's 228 test questions removed (matched by text).
- commonsenseqa (train/dev) and ecqa (train/val/test = CommonsenseQA ids in ecqa/author_split).
- gsm8k (train/test): not multiple choice; choices = (final numeric answer,), answer 0,
  cot = the solution before `####`, verbatim (calculator annotations kept).
- mmlu: the canonical reformatted copy (dev/test, 14042 test rows); mmlu_2020: the hendrycks
  Sep-2020 pre-release (dev/val/test, 14079 test rows). subject = file name minus the split.
- teacherlm_creak / teacherlm_ecqa / teacherlm_strategyqa (split test): TeacherLM's own test sets;
  the options are split off the end of their `question` text so that `eval_context` gives back
  exactly `Q: {question} A: The answer is (`. cot = their gold rationale field.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import re
from pathlib import Path
from typing import Callable, Iterator

from teacherlm_jax.data.formats import TRUE_FALSE, TRUE_FALSE_PREFIX, remove_duplicated_block
from teacherlm_jax.data.records import LETTERS, Record, Row, collect, jsonl_rows, numbered_lines
from teacherlm_jax.data.synthetic import SPLITS as SYNTHETIC_SPLITS
from teacherlm_jax.errors import DataError

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]


def default_data_dir() -> Path:
    """$TEACHERLM_DATA_DIR, else `../shared/data` relative to the repository root."""
    env = os.environ.get("TEACHERLM_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@dataclasses.dataclass(frozen=True)
class Source:
    """`license`: the data's license as a Hugging Face license id (shared data README), for dataset cards."""

    splits: tuple[str, ...]
    read: Callable[[Path, str], Iterator[Row]]
    needs_data_dir: bool = True
    license: str = "unknown"


def _true_false(value: object, field: str) -> int:
    if value is True or value == "true":
        return 0
    if value is False or value == "false":
        return 1
    raise ValueError(f"{field} must be true/false, got {value!r}")


def _letter_index(value: str) -> int:
    m = re.fullmatch(r"\(?([A-Z])\)?", value.strip()) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"answer {value!r} is not a letter like 'B' or '(B)'")
    return LETTERS.index(m.group(1))


def _json_array(path: Path) -> list:
    try:
        data = json.loads("".join(text for _, text in numbered_lines(path)))
    except json.JSONDecodeError as e:
        raise DataError(str(path), f"bad JSON: {e}") from None
    if not isinstance(data, list):
        raise DataError(str(path), "expected a JSON array")
    return data


def read_creak(data_dir: Path, split: str) -> Iterator[Row]:
    def convert(row: dict) -> Record:
        explanation = row.get("explanation")
        return Record(id=row["ex_id"], question=TRUE_FALSE_PREFIX + row["sentence"],
                      choices=TRUE_FALSE, answer=_true_false(row["label"], "label"),
                      cot=None if explanation in (None, "n/a") else explanation, source="creak")
    return jsonl_rows(str(data_dir / "creak" / f"{split}.json"), convert)


def _csqa_record(row: dict, source: str) -> Record:
    q = row["question"]
    labels = [c["label"] for c in q["choices"]]
    if labels != list(LETTERS[:len(labels)]):
        raise ValueError(f"choice labels {labels} are not A, B, C, ... in order")
    return Record(id=row["id"], question=q["stem"], choices=tuple(c["text"] for c in q["choices"]),
                  answer=_letter_index(row["answerKey"]), source=source)


def read_commonsenseqa(data_dir: Path, split: str) -> Iterator[Row]:
    return jsonl_rows(str(data_dir / "commonsenseqa" / f"{split}_rand_split.jsonl"),
                      lambda row: _csqa_record(row, "commonsenseqa"))


def read_ecqa(data_dir: Path, split: str) -> Iterator[Row]:
    by_id: dict[str, dict] = {}
    for part in ("train", "dev"):
        path = str(data_dir / "commonsenseqa" / f"{part}_rand_split.jsonl")
        by_id.update(collect(jsonl_rows(path, lambda row: (row["id"], row)), path,
                             skip_invalid=False, report=None))
    ids_path = data_dir / "ecqa" / "author_split" / f"{split}_ids.txt"
    for where, line in numbered_lines(ids_path):
        if line.strip():
            yield where, (lambda qid=line.strip(): _csqa_record(
                _lookup(by_id, qid, "CommonsenseQA train+dev"), "ecqa"))


def _lookup(table: dict, key: str, what: str) -> dict:
    if key not in table:
        raise ValueError(f"id {key!r} not found in {what}")
    return table[key]


def strategyqa_question(facts: list[str], question: str) -> str:
    """TeacherLM's StrategyQA wording (matches all 228 of its test questions), without options."""
    text = " ".join(f"Fact {i}: {fact}" for i, fact in enumerate(facts, 1))
    return remove_duplicated_block(f"{text} Given these facts above, {question.strip().lower()}")


def teacherlm_strategyqa_questions(data_dir: Path) -> set[str]:
    """TeacherLM's 228 StrategyQA test questions in the public release's wording (stripped)."""
    path = data_dir / "teacherlm_eval" / "strategy_qa" / "test.derived.jsonl"
    rows = jsonl_rows(str(path), lambda row: row["origin_question"].strip())
    return set(collect(rows, str(path), skip_invalid=False, report=None))


def read_strategyqa(data_dir: Path, split: str) -> Iterator[Row]:
    path = data_dir / "strategyqa" / f"{split}.json"
    held_out = teacherlm_strategyqa_questions(data_dir)

    def convert(row: dict) -> Record:
        return Record(id=row["qid"], question=strategyqa_question(row["facts"], row["question"]),
                      choices=TRUE_FALSE, answer=_true_false(row["answer"], "answer"),
                      cot=" ".join(row["decomposition"]), source="strategyqa")
    excluded = 0
    for i, row in enumerate(_json_array(path)):
        if isinstance(row, dict) and str(row.get("question", "")).strip() in held_out:
            excluded += 1  # TeacherLM's test question: never train on it
            continue
        yield f"{path}[{i}]", (lambda row=row: convert(row))
    log.info("%s: excluded %d TeacherLM test questions", path, excluded)


def read_gsm8k(data_dir: Path, split: str) -> Iterator[Row]:
    def convert(row: dict, n: int) -> Record:
        solution, sep, final = row["answer"].rpartition("\n#### ")
        if not sep or not final.strip():
            raise ValueError("answer has no final '#### <number>' line")
        return Record(id=f"{split}-{n}", question=row["question"], choices=(final.strip(),),
                      answer=0, cot=solution, source="gsm8k")
    rows = jsonl_rows(str(data_dir / "gsm8k" / f"{split}.jsonl"), lambda row: row)
    for n, (where, build) in enumerate(rows):
        yield where, (lambda build=build, n=n: convert(build(), n))


def _csv_rows(directory: Path, split: str,
              header: list[str] | None) -> Iterator[tuple[str, str, list[str]]]:
    files = sorted(directory.glob(f"*_{split}.csv"))
    if not files:
        raise DataError(str(directory), f"no *_{split}.csv files")
    for path in files:
        subject = path.name[: -len(f"_{split}.csv")]
        reader = csv.reader(text for _, text in numbered_lines(path))
        if header is not None and next(reader, None) != header:
            raise DataError(f"{path}:1", f"expected header {header}")
        for row in reader:
            yield f"{path}:{reader.line_num}", subject, row


def _mmlu_reader(name: str, subdir: str, header: list[str] | None, answer: Callable[[str], int]):
    def read(data_dir: Path, split: str) -> Iterator[Row]:
        def convert(subject: str, row: list[str], i: int) -> Record:
            if len(row) != 6:
                raise ValueError(f"expected 6 columns (question, 4 choices, answer), got {len(row)}")
            return Record(id=f"{subject}/{split}/{i}", question=row[0], choices=tuple(row[1:5]),
                          answer=answer(row[5]), subject=subject, source=name)
        counts: dict[str, int] = {}
        for where, subject, row in _csv_rows(data_dir / subdir / split, split, header):
            i = counts[subject] = counts.get(subject, -1) + 1
            yield where, (lambda s=subject, r=row, i=i: convert(s, r, i))
    return read


def _mmlu_index(value: str) -> int:
    if value.strip() not in ("0", "1", "2", "3"):
        raise ValueError(f"answer {value!r} is not 0..3")
    return int(value)


def split_options(text: str, n: int) -> tuple[str, tuple[str, ...]]:
    """`"{q} (A) a (B) b"` -> (`q`, (`a`, `b`)) for `n` options at the end of `text`."""
    choices = []
    for letter in reversed(LETTERS[:n]):
        text, sep, choice = text.rpartition(f" ({letter}) ")
        if not sep:
            raise ValueError(f"question does not end with {n} options (no ' ({letter}) ')")
        choices.append(choice)
    return text, tuple(reversed(choices))


def _teacherlm_reader(name: str, subdir: str, n: int, id_key: str, cot: Callable[[dict], str]):
    def read(data_dir: Path, split: str) -> Iterator[Row]:
        def convert(row: dict) -> Record:
            question, choices = split_options(row["question"], n)
            return Record(id=str(row[id_key]), question=question, choices=choices,
                          answer=_letter_index(row["answer"]), cot=cot(row),
                          source=name)
        return jsonl_rows(str(data_dir / "teacherlm_eval" / subdir / "test.derived.jsonl"), convert)
    return read


def read_synthetic(data_dir: Path, split: str) -> Iterator[Row]:
    """The project's synthetic reasoning suite (data/synthetic.py), default sizes, seed 0."""
    from teacherlm_jax.data.synthetic import make_suite

    for i, row in enumerate(make_suite(0)[split], start=1):
        yield f"synthetic/{split}:{i}", lambda row=row: Record(**{**row, "choices": tuple(row["choices"]),
                                                                  "source": "synthetic"})


REGISTRY: dict[str, Source] = {
    "creak": Source(("train", "dev", "contrast_set"), read_creak, license="mit"),
    "strategyqa": Source(("train", "dev"), read_strategyqa, license="mit"),
    "commonsenseqa": Source(("train", "dev"), read_commonsenseqa, license="mit"),
    "ecqa": Source(("train", "val", "test"), read_ecqa, license="cdla-sharing-1.0"),
    "gsm8k": Source(("train", "test"), read_gsm8k, license="mit"),
    "mmlu": Source(("dev", "test"), _mmlu_reader(
        "mmlu", "mmlu_canonical_reformatted",
        ["question", "choice0", "choice1", "choice2", "choice3", "answer"],
        _mmlu_index), license="mit"),
    "mmlu_2020": Source(("dev", "val", "test"),
                        _mmlu_reader("mmlu_2020", "mmlu/data", None, _letter_index), license="mit"),
    "teacherlm_creak": Source(("test",), _teacherlm_reader(
        "teacherlm_creak", "creak", 2, "ex_id", lambda row: row["explanation"]), license="apache-2.0"),
    "teacherlm_ecqa": Source(("test",), _teacherlm_reader(
        "teacherlm_ecqa", "ecqa", 5, "q_no", lambda row: row["taskB"]), license="apache-2.0"),
    "teacherlm_strategyqa": Source(("test",), _teacherlm_reader(
        "teacherlm_strategyqa", "strategy_qa", 2, "qid", lambda row: " ".join(row["decomposition"])),
        license="apache-2.0"),
    "synthetic": Source(SYNTHETIC_SPLITS, read_synthetic, needs_data_dir=False, license="generated"),
}

# Evaluation sets by the names the eval job's config.tasks gives them (teacherlm_jax/eval/tasks.py):
# TeacherLM's test sets and MMLU.
EVAL_SETS: dict[str, tuple[str, str]] = {
    "mmlu": ("mmlu", "test"),
    "mmlu_2020": ("mmlu_2020", "test"),
    "mmlu_2020_val": ("mmlu_2020", "val"),
    "creak": ("teacherlm_creak", "test"),
    "ecqa": ("teacherlm_ecqa", "test"),
    "strategyqa": ("teacherlm_strategyqa", "test"),
}
