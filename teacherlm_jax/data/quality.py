"""Quality flags of the teacher's generated texts, and the filters students train through.

Flags of one generated text (one sample), computed from an augment output row by `row_quality`:
  empty              nothing but whitespace
  cut                the row ended at max_new_tokens, not at EOS: new_tokens >= sampling.max_new_tokens (the
                     engine stops a row at EOS or there, and strips the EOS, so a row that ended at EOS has
                     fewer). None (unknown) when the row lacks `new_tokens` or `sampling` (hand-written files);
                     with sampling.stop_at_eos=False every text runs to max_new_tokens and is cut.
  degenerate         looping: at least DEGENERATE_MIN_NGRAMS word n-grams (n = DEGENERATE_N; punctuation marks
                     are words) of which at least DEGENERATE_REPEATS (a fraction) repeat an earlier one
  final_answer       cot only: the letter of the option the text concludes with (`data.answers`), else None
  answer_consistent  cot only: final_answer is the record's gold answer (False when none is found); None for
                     the other kinds, which state no answer

Filters (`config.data.filter`), on the teacher's texts only (a dataset's own gold texts are not filtered):
  none                     every text
  clean                    not empty, not cut, not degenerate (an unknown `cut` passes, and is counted)
  answer_consistent        cot texts whose final answer is the gold one (Fine-tune-CoT); other kinds pass
  clean_answer_consistent  both
`failures` gives the reasons a text fails a filter; the training run logs and reports the counts.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from teacherlm_jax.data.answers import final_answer
from teacherlm_jax.data.formats import KINDS
from teacherlm_jax.data.records import LETTERS

FILTERS = ("none", "clean", "answer_consistent", "clean_answer_consistent")
REASONS = ("empty", "cut", "degenerate", "not_answer_consistent")
FLAGS = ("empty", "cut", "degenerate", "final_answer", "answer_consistent")
DEGENERATE_N = 4
DEGENERATE_MIN_NGRAMS = 8
DEGENERATE_REPEATS = 0.5
_WORD = re.compile(r"\w+|[^\w\s]")


def degenerate(text: str, n: int = DEGENERATE_N) -> bool:
    """Whether `text` loops: enough word n-grams, most of them repeats (see the module docstring)."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(grams) >= DEGENERATE_MIN_NGRAMS and 1 - len(set(grams)) / len(grams) >= DEGENERATE_REPEATS


def text_flags(text: str, kind: str, new_tokens: int | None, max_new_tokens: int | None,
               choices: Sequence[str], answer: int) -> dict[str, Any]:
    """The flags of one generated text (see the module docstring)."""
    parsed = final_answer(text, choices) if kind == "cot" else None
    return {"empty": not text.strip(),
            "cut": None if new_tokens is None or max_new_tokens is None else new_tokens >= max_new_tokens,
            "degenerate": degenerate(text),
            "final_answer": None if parsed is None else LETTERS[parsed],
            "answer_consistent": (parsed == answer) if kind == "cot" else None}


def _samples(value: Any) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def row_quality(row: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """{kind: flags per sample} for every generated kind of an augment output row (a skipped kind: [])."""
    max_new = (row.get("sampling") or {}).get("max_new_tokens")
    counts = row.get("new_tokens") or {}
    out = {}
    for kind in KINDS:
        if kind not in row:
            continue
        texts = _samples(row[kind])
        tokens = _samples(counts.get(kind)) or [None] * len(texts)
        out[kind] = [text_flags(t, kind, n, max_new, row["choices"], int(row["answer"])) for t, n in zip(texts, tokens)]
    return out


def check_filter(name: str, key: str = "config.data.filter") -> str:
    if name not in FILTERS:
        raise ValueError(f"{key}={name!r}; expected one of {FILTERS}")
    return name


def failures(flags: Mapping[str, Any], name: str) -> list[str]:
    """The reasons (out of REASONS) a text with `flags` fails filter `name`; [] when it is kept."""
    reasons = []
    if name in ("clean", "clean_answer_consistent"):
        reasons += [flag for flag in ("empty", "cut", "degenerate") if flags.get(flag)]
    if name in ("answer_consistent", "clean_answer_consistent") and flags.get("answer_consistent") is False:
        reasons.append("not_answer_consistent")
    return reasons


def quality_counts(qualities: Iterable[Mapping[str, list[Mapping[str, Any]]]], kinds: Sequence[str]) -> dict[str, Any]:
    """For summary.json and the dataset card: per kind, how many texts carry each flag, and how many each
    filter keeps."""
    qualities = list(qualities)
    out = {}
    for kind in kinds:
        texts = [flags for q in qualities for flags in q.get(kind, [])]
        counts = {"texts": len(texts), **{flag: sum(bool(f[flag]) for f in texts) for flag in ("empty", "cut",
                                                                                              "degenerate")},
                  "cut_unknown": sum(f["cut"] is None for f in texts)}
        if kind == "cot":
            counts["final_answer_found"] = sum(f["final_answer"] is not None for f in texts)
            counts["answer_consistent"] = sum(bool(f["answer_consistent"]) for f in texts)
        counts["kept_by_filter"] = {name: sum(not failures(f, name) for f in texts) for name in FILTERS}
        out[kind] = counts
    return out

