"""TeacherLM's text rules on hand-made records (real-data golden strings: test_data_sources.py)."""
import pytest

from teacherlm_jax.data import (KIND_PROMPTS, KINDS, Record, answered_block, eval_context,
                                question_block, remove_duplicated_block, teacher_prompt)


@pytest.mark.parametrize("text,expected", [
    ("a  b", "a b"),
    ("a   b", "a  b"),      # one replace pass, as TeacherLM: three spaces become two
    ("a b  ", "a b"),       # trailing space: strip(" ") on both ends
    ("  a b ", "a b"),
    ("  a b", " a b"),      # no trailing space: leading spaces stay
    ("", ""),
])
def test_remove_duplicated_block_matches_teacherlm(text, expected):
    assert remove_duplicated_block(text) == expected


REC = Record("r1", "Is  water wet?", ("yes", "no", "maybe"), 2, cot="  It  is.  ")


def test_blocks_and_prompts():
    assert question_block(REC) == "Q: Is  water wet? (A) yes (B) no (C) maybe"
    assert answered_block(REC) == "Q: Is  water wet? (A) yes (B) no (C) maybe A: The answer is (C)."
    assert KINDS == tuple(KIND_PROMPTS)
    for kind in KINDS:
        assert teacher_prompt(REC, kind) == (
            f"Q: Is water wet? (A) yes (B) no (C) maybe A: The answer is (C). {KIND_PROMPTS[kind]}")
    with pytest.raises(ValueError, match="unknown kind"):
        teacher_prompt(REC, "summary")


def test_eval_context_keeps_text_verbatim():
    # TeacherLM's lm_eval tasks do not clean the context.
    assert eval_context(REC) == "Q: Is  water wet? (A) yes (B) no (C) maybe A: The answer is ("


@pytest.mark.parametrize("question,shown", [
    ("What is 2+2", "What is 2+2."),
    ('He said "hi"', 'He said "hi"'),
    ("List:\nI. a\nII. b", "List: I. a II. b."),
    ("Ends in newline\n", "Ends in newline ."),  # period test precedes the newline replacement
    ("Fine?", "Fine?"),
])
def test_mmlu_context(question, shown):
    rec = Record("m", question, ("a\nb", "c", "d", "e"), 0, subject="high_school_us_history")
    assert eval_context(rec, mmlu=True) == (
        "The following are multiple choice questions (with answers) about high school us history. "
        f"Q: {shown} (A) a b (B) c (C) d (D) e A: The answer is (")
    with pytest.raises(ValueError, match="no subject"):
        eval_context(Record("m", question, ("a", "b"), 0), mmlu=True)


@pytest.mark.parametrize("kwargs,reason", [
    ({"choices": ["a", "b"]}, "non-empty tuple"),
    ({"choices": ()}, "non-empty tuple"),
    ({"answer": 2}, "outside the 2 choices"),
    ({"answer": True}, "must be an int"),
    ({"question": ""}, "'question' is empty"),
    ({"id": ""}, "'id' is empty"),
    ({"cot": 3}, "'cot' must be a string"),
])
def test_record_validation(kwargs, reason):
    fields = {"id": "x", "question": "Q?", "choices": ("a", "b"), "answer": 0, **kwargs}
    with pytest.raises(ValueError, match=reason):
        Record(**fields)
