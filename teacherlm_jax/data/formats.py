"""TeacherLM's exact texts, from hahaplus/TeacherLM @ 20694a9 (enhance/data_prepare.py and
evaluate/lm_eval/tasks/).

- `question_block`: `Q: {question} (A) {c0} (B) {c1} ...`, verbatim. TeacherLM's own test sets store
  the question as `question_block` minus `Q: ` (for ECQA including a leading `Q: `, so TeacherLM's ECQA
  context reads `Q: Q: ...`; reproduced on purpose).
- `teacher_prompt`: `question_block + " A: The answer is (X)." + " " + KIND_PROMPTS[kind]`, then
  `remove_duplicated_block` exactly as `data_prepare.add_prompts` does.
- `eval_context`: lm_eval `doc_to_text`: `question_block + " A: The answer is ("`, no cleaning (their
  eval code applies none); with `mmlu=True` the MMLU task's header, end punctuation and newline rules.
"""
from __future__ import annotations

from teacherlm_jax.data.records import LETTERS, Record

KINDS = ("cot", "fundamentals", "mistakes")
KIND_PROMPTS = {
    "cot": "Let's think step by step.",
    "fundamentals": "The fundamental of this question is:",
    "mistakes": "The common mistakes are:",
}
TRUE_FALSE = ("True", "False")
TRUE_FALSE_PREFIX = "Determine the correctness of the following sentence. "
_MMLU_END = (".", ",", "?", "!", '"')


def remove_duplicated_block(text: str) -> str:
    """TeacherLM's cleaner, same quirks: ONE pass of `"  "` -> `" "` (three spaces become two), and
    only when the result ends in a space, `strip(" ")` on both ends."""
    out = text.replace("  ", " ")
    if out and out[-1] == " ":
        out = out.strip(" ")
    return out


def options_text(choices: tuple[str, ...]) -> str:
    return " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))


def question_block(record: Record) -> str:
    return f"Q: {record.question} {options_text(record.choices)}"


def answered_block(record: Record) -> str:
    return f"{question_block(record)} A: The answer is ({LETTERS[record.answer]})."


def teacher_prompt(record: Record, kind: str) -> str:
    """What the teacher reads before writing a `kind` annotation."""
    if kind not in KIND_PROMPTS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    return remove_duplicated_block(f"{answered_block(record)} {KIND_PROMPTS[kind]}")


def finetune_cot_prompt(record: Record) -> str:
    """Fine-tune-CoT's prompt (Ho et al. 2023) for a multiple-choice record: `{question} {options} ###`;
    the student writes ` {rationale} --> {letter}`. Student training and generative eval both use it."""
    return f"{record.question} {options_text(record.choices)} ###"


def eval_context(record: Record, *, mmlu: bool = False) -> str:
    """Context whose continuation is the answer letter (scored by log-likelihood)."""
    if not mmlu:
        return f"{question_block(record)} A: The answer is ("
    if not record.subject:
        raise ValueError(f"MMLU record {record.id!r} has no subject")
    question = record.question
    if question[-1] not in _MMLU_END:  # checked before newlines are replaced, as TeacherLM does
        question += "."
    choices = tuple(c.replace("\n", " ") for c in record.choices)
    return (f"The following are multiple choice questions (with answers) about "
            f"{record.subject.replace('_', ' ')}. Q: {question.replace(chr(10), ' ')} "
            f"{options_text(choices)} A: The answer is (")
