"""The final answer a chain of thought concludes with, as an index into the record's choices.

Fine-tune-CoT (Ho et al. 2023) keeps only the teacher's rationales whose final answer is the gold one;
this is the parser that decides it. `final_answer(text, choices)` reads, in order:

1. the LAST answer statement: `the answer is X`, `answer: X`, `the correct option is X` (also
   `final answer`, `correct answer`, `right choice`); X is parsed by `parse_choice`;
2. else the last sentence: a lettered option `(B)` alone in it, a true/false verdict (`... is true`,
   `is not correct`), or exactly one option text named in it; else a verdict word (`Yes` / `No` / `True`
   / `False`) opening the last sentence or the whole text.

`parse_choice(span, choices)` accepts a letter (`B`, `(B)`, `B.`, `option B`, `(B) 8`), an option's
text (case, a leading article, surrounding quotes and end punctuation ignored; `8` for choices `('26', '8', ...)`), and for
two-way choices True/False or yes/no words (true/yes/correct/right vs false/no/incorrect/wrong; `not`
before them flips). Anything else is None: no answer is never guessed (an unparsed rationale is not
answer-consistent). `eval.generative.parse_answer` is the eval job's reader of a student's
` {rationale} --> {answer}`: it falls back to the last option mentioned anywhere, a guess right for
scoring a student but wrong for deciding which teacher texts to keep.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from teacherlm_jax.data.records import LETTERS

POSITIVE = ("true", "yes", "correct", "right")
NEGATIVE = ("false", "no", "incorrect", "wrong")
_STATEMENT = re.compile(r"\b(?:(?:final |correct |right )?answer|(?:correct|right|best) (?:option|choice))\s*(?:is|:|=|would be|will be)\s*"
                        r"(?:therefore\s+|thus\s+)?(.+?)(?=(?<![A-Z(])[.!?;](?:\s|$)|\n|$)", re.IGNORECASE)
_LETTER = re.compile(r"^(?:(?:option|choice|letter)\s+)?\(?([A-Z])\)?(?:[.:)]|\s|$)")
_VERDICT = re.compile(r"\b(?:is|are|was|were|be|seems|sounds)\s+(not\s+)?(true|false|correct|incorrect|right|wrong)\b",
                      re.IGNORECASE)
_SENTENCES = re.compile(r"(?<=[.!?])\s+")
_EDGES = " \t\n\"'`“”‘’.,;:!?*"


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).strip(_EDGES)


def _polarity(word: str, negated: bool = False) -> bool | None:
    word = word.lower()
    value = True if word in POSITIVE else False if word in NEGATIVE else None
    return None if value is None else value != negated


def _by_polarity(value: bool | None, choices: Sequence[str]) -> int | None:
    """The index of the two-way option meaning `value` (True/False or yes/no choices)."""
    if value is None or len(choices) != 2:
        return None
    meanings = [_polarity(_norm(c)) for c in choices]
    return meanings.index(value) if value in meanings and None not in meanings else None


def parse_choice(span: str, choices: Sequence[str]) -> int | None:
    """The option `span` names (a letter, an option text, or a true/false word), else None."""
    span = span.strip(_EDGES + " ")
    letter = _LETTER.match(span)
    if letter and LETTERS.index(letter.group(1)) < len(choices):
        return LETTERS.index(letter.group(1))
    texts = [_norm(c) for c in choices]
    for candidate in (_norm(span), re.sub(r"^(?:a|an|the) ", "", _norm(span))):
        if texts.count(candidate) == 1:
            return texts.index(candidate)
    words = _norm(span).split()
    if words:
        negated = words[0] == "not" and len(words) > 1
        return _by_polarity(_polarity(words[1] if negated else words[0], negated), choices)
    return None


def _named_options(sentence: str, choices: Sequence[str]) -> set[int]:
    text = f" {_norm(sentence)} "
    return {i for i, c in enumerate(choices) if _norm(c) and re.search(rf"(?<!\w){re.escape(_norm(c))}(?!\w)", text)}


def final_answer(text: str, choices: Sequence[str]) -> int | None:
    """The option `text` concludes with (see the module docstring), else None."""
    statements = _STATEMENT.findall(text)
    if statements:
        return parse_choice(statements[-1], choices)
    sentences = [s for s in _SENTENCES.split(text.strip()) if s.strip(_EDGES)]
    if not sentences:
        return None
    last = sentences[-1]
    letters = {m for m in re.findall(r"\(([A-Z])\)", last) if LETTERS.index(m) < len(choices)}
    if len(letters) == 1:
        return LETTERS.index(letters.pop())
    verdicts = _VERDICT.findall(last)
    if verdicts:
        negated, word = verdicts[-1]
        return _by_polarity(_polarity(word, bool(negated)), choices)
    named = _named_options(last, choices)
    if len(named) == 1:
        return named.pop()
    for sentence in (last, text):  # `No, ...` in the last sentence, else a text that opens with its verdict
        first = re.match(r"\W*(\w*)", sentence).group(1)
        if _polarity(first) is not None:
            return _by_polarity(_polarity(first), choices)
    return None
