"""The one record type every source becomes, and the row-by-row loading loop that validates it.

Readers yield `(where, build)` pairs: `where` names the row ("path:line"), `build()` parses and
converts it. `collect` runs the builds, so a malformed row raises `DataError` naming file, line and
reason, or, with `skip_invalid=True`, is skipped and counted in a `LoadReport` (and logged), never
dropped silently.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Iterable, Iterator, TypeVar

from teacherlm_jax.errors import DataError
from teacherlm_jax.paths import reading

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

log = logging.getLogger(__name__)
T = TypeVar("T")


def _check_text(name: str, value: Any, *, required: bool) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str):
        raise ValueError(f"field {name!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"field {name!r} is empty")


@dataclasses.dataclass(frozen=True)
class Record:
    """A multiple-choice question; `answer` indexes `choices`. Valid by construction."""

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str | None = None
    cot: str | None = None
    fundamentals: str | None = None
    mistakes: str | None = None
    source: str = ""

    def __post_init__(self):
        _check_text("id", self.id, required=True)
        _check_text("question", self.question, required=True)
        if not isinstance(self.choices, tuple) or not self.choices:
            raise ValueError("field 'choices' must be a non-empty tuple of strings")
        if len(self.choices) > len(LETTERS):
            raise ValueError(f"{len(self.choices)} choices; at most {len(LETTERS)} can be lettered")
        for c in self.choices:
            _check_text("choices", c, required=False)
        if isinstance(self.answer, bool) or not isinstance(self.answer, int):
            raise ValueError(f"field 'answer' must be an int index, got {self.answer!r}")
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(f"answer {self.answer} is outside the {len(self.choices)} choices")
        for name in ("subject", "cot", "fundamentals", "mistakes"):
            _check_text(name, getattr(self, name), required=False)


@dataclasses.dataclass(frozen=True)
class InstructionRecord:
    """Stage-1 instruction data: the model reads `prompt` and learns to write `target`."""

    id: str
    prompt: str
    target: str

    def __post_init__(self):
        for name in ("id", "prompt", "target"):
            _check_text(name, getattr(self, name), required=True)


@dataclasses.dataclass(frozen=True)
class SkippedRow:
    source: str
    where: str
    reason: str


@dataclasses.dataclass
class LoadReport:
    """What a run loaded: rows kept per source and every skipped row. Pass one report to every
    `load_records`/`load_instructions` call of a run and put `summary()` in the run summary."""

    loaded: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: list[SkippedRow] = dataclasses.field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def summary(self) -> dict[str, Any]:
        per_source: dict[str, int] = {}
        for row in self.skipped:
            per_source[row.source] = per_source.get(row.source, 0) + 1
        return {"loaded": dict(self.loaded), "skipped": per_source, "num_skipped": self.num_skipped}


Row = tuple[str, Callable[[], T]]


def collect(rows: Iterable[Row], source: str, *, skip_invalid: bool,
            report: LoadReport | None) -> list[T]:
    """Build every row; raise `DataError` on the first bad one unless `skip_invalid`."""
    out: list[T] = []
    skipped = 0
    for where, build in rows:
        try:
            out.append(build())
            continue
        except KeyError as e:
            reason = f"missing field {e}"
        except (ValueError, TypeError, IndexError) as e:
            reason = str(e) or type(e).__name__
        if not skip_invalid:
            raise DataError(where, reason)
        skipped += 1
        if report is not None:
            report.skipped.append(SkippedRow(source, where, reason))
        log.warning("skipping invalid row %s: %s", where, reason)
    if skipped:
        log.warning("%s: skipped %d invalid rows (kept %d)", source, skipped, len(out))
    if report is not None:
        report.loaded[source] = report.loaded.get(source, 0) + len(out)
    return out


def numbered_lines(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """`("path:line", text)` for each line of a UTF-8 data file, streamed, split at "\n" only (JSON
    lines may hold U+2028 and the like, which `str.splitlines` would split at).

    Every reader of data files reads through here, so a byte that is not UTF-8 is a `DataError` naming
    file, line, offset and byte, not a bare UnicodeDecodeError. It is never skipped (not even with
    `skip_invalid`): a wrong encoding is the file's fault, not one row's."""
    with reading(path) as f:  # a local path or a cloud URL (augment parts)
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(where, f"not UTF-8: byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line "
                                       f"({e.reason}); save the file as UTF-8") from None
            yield where, text


def jsonl_rows(path: str, convert: Callable[[dict], T]) -> Iterator[Row]:
    """`(path:line, build)` for each non-blank line of a JSON-lines file."""
    for where, line in numbered_lines(path):
        if line.strip():
            yield where, (lambda line=line: convert(json_object(line)))


def json_object(line: str) -> dict:
    """One JSON-lines row; ValueError (the caller adds file:line) unless it is a JSON object."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"bad JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj
