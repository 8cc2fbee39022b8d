"""User-supplied data: multiple-choice rows from JSONL / Hugging Face / TFDS, and instruction JSONL.

A row becomes a `Record` through a field mapping `{record field: column}`; unmapped fields use their
own name (`id`, `question`, `choices`, `answer`, optional `subject`, `cot`, `fundamentals`,
`mistakes`). Accepted values: `choices` a list of strings or a Hugging Face style
`{"label": [...], "text": [...]}` dict; `answer` an int index or a letter (`"B"` / `"(B)"`); bytes
(TFDS text) are decoded as UTF-8. JSONL rows must carry an `id`; for datasets without an id column
the row's position (`{split}-{index}`) is the id.
"""
from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Iterator, Mapping

from teacherlm_jax.data.records import LETTERS, InstructionRecord, Record, Row, jsonl_rows

RECORD_FIELDS = ("id", "question", "choices", "answer", "subject", "cot", "fundamentals", "mistakes")
_OPTIONAL = RECORD_FIELDS[4:]


def _text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _id(value: Any) -> str:
    value = _text(value)
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Integral)):
        raise ValueError(f"id must be a string or an int, got {value!r}")
    return str(value)


def _choices(value: Any) -> tuple[str, ...]:
    if isinstance(value, Mapping):
        value = value["text"]
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"choices must be a list of strings, got {type(value).__name__}")
    return tuple(_text(c) for c in value)


def _answer(value: Any) -> int:
    value = _text(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        letter = value.strip().strip("()")
        if len(letter) == 1 and letter in LETTERS:
            return LETTERS.index(letter)
    raise ValueError(f"answer {value!r} is neither an index nor a letter like 'B'")


def check_fields(fields: Mapping[str, str] | None) -> dict[str, str]:
    """The full `{record field: column}` mapping; unknown record fields are an error."""
    fields = dict(fields or {})
    unknown = set(fields) - set(RECORD_FIELDS)
    if unknown:
        raise ValueError(f"unknown record fields in mapping: {sorted(unknown)}; known: {RECORD_FIELDS}")
    return {name: fields.get(name, name) for name in RECORD_FIELDS}


def record_from_row(row: Mapping[str, Any], fields: Mapping[str, str], *, source: str,
                    default_id: str | None = None) -> Record:
    """Convert one row; `fields` comes from `check_fields`. `default_id` is used when the row has
    no id column (None: the id is required)."""
    row_id = row[fields["id"]] if default_id is None or fields["id"] in row else default_id
    optional = {name: _text(row.get(fields[name])) for name in _OPTIONAL}
    return Record(id=_id(row_id), question=_text(row[fields["question"]]),
                  choices=_choices(row[fields["choices"]]), answer=_answer(row[fields["answer"]]),
                  source=source, **optional)


def read_mc_jsonl(path: str, *, fields: Mapping[str, str] | None = None) -> Iterator[Row]:
    """The generic multiple-choice JSONL; record source = the file's stem."""
    full = check_fields(fields)
    return jsonl_rows(path, lambda row: record_from_row(row, full, source=Path(path).stem))


def read_instruction_jsonl(path: str) -> Iterator[Row]:
    """`{"id", "prompt", "target"}` per line (stage-1 instruction data)."""
    return jsonl_rows(path, lambda row: InstructionRecord(
        id=_id(row["id"]), prompt=row["prompt"], target=row["target"]))
