"""Training texts for teacher stages and students: formats, styles, mixtures, augment output."""
import json

import pytest

from teacherlm_jax.data.examples import Annotated, annotated, build_pairs, read_augmented, text_pairs
from teacherlm_jax.data.records import Record
from teacherlm_jax.errors import DataError

RECORD = Record(id="q1", question="Is 3 more than 2?", choices=("yes", "no"), answer=0,
                cot="3 is one more than 2.", fundamentals="Compare the  numbers.", mistakes=None, source="toy")


def test_teacherlm_style_strings():
    item = annotated(RECORD)
    (answer,) = text_pairs(item, "answer")
    assert answer.prompt + answer.target == "Q: Is 3 more than 2? (A) yes (B) no A: The answer is (A)."
    assert answer.target == "A)."
    (cot,) = text_pairs(item, "cot")
    assert cot.prompt == "Q: Is 3 more than 2? (A) yes (B) no A: The answer is (A). Let's think step by step."
    assert cot.target == " 3 is one more than 2."
    (fund,) = text_pairs(item, "fundamentals")
    assert fund.prompt.endswith("A: The answer is (A). The fundamental of this question is:")
    assert fund.target == " Compare the numbers."  # TeacherLM's cleaner collapses the double space


def test_finetune_cot_style_strings():
    item = annotated(RECORD)
    (cot,) = text_pairs(item, "cot", "finetune_cot")
    assert cot.prompt == "Is 3 more than 2? (A) yes (B) no ###"
    assert cot.target == " 3 is one more than 2. --> A"
    (answer,) = text_pairs(item, "answer", "finetune_cot")
    assert answer.target == " --> A"


def test_mixed_gives_each_present_kind_and_missing_kind_is_an_error():
    pairs = text_pairs(annotated(RECORD), "mixed")
    assert [p.id for p in pairs] == ["q1/cot", "q1/fundamentals"]
    with pytest.raises(DataError, match="toy:q1: has no 'mistakes' annotation"):
        text_pairs(annotated(RECORD), "mistakes")
    with pytest.raises(ValueError, match="unknown format"):
        text_pairs(annotated(RECORD), "essay")


def test_mixture_ratios_repeat_and_subsample_deterministically():
    items = [annotated(Record(id=f"r{i}", question=f"q{i}?", choices=("a", "b"), answer=i % 2,
                              cot=f"c{i}", fundamentals=f"f{i}", mistakes=f"m{i}")) for i in range(10)]
    pairs = build_pairs(items, "mixed", ratios={"cot": 2, "fundamentals": 0.5, "mistakes": 0}, seed=3)
    kinds = [p.id.split("/")[1] for p in pairs]
    assert kinds.count("cot") == 20 and kinds.count("fundamentals") == 5 and kinds.count("mistakes") == 0
    again = build_pairs(items, "mixed", ratios={"cot": 2, "fundamentals": 0.5, "mistakes": 0}, seed=3)
    assert again == pairs
    other = build_pairs(items, "mixed", ratios={"cot": 2, "fundamentals": 0.5, "mistakes": 0}, seed=4)
    assert {p.id for p in other if "fundamentals" in p.id} != {p.id for p in pairs if "fundamentals" in p.id}


def test_read_augmented_with_several_samples(tmp_path):
    rows = [{"id": "a", "question": "Q1?", "choices": ["x", "y"], "answer": 1, "source": "toy",
             "cot": ["first way", "second way"], "fundamentals": "rule", "prompts": {}, "teacher": {}},
            {"id": "b", "question": "Q2?", "choices": ["x", "y"], "answer": 0, "cot": "only"}]
    (tmp_path / "part-00000.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = read_augmented(tmp_path)
    assert [i.record.id for i in items] == ["a", "b"]
    assert items[0].annotations == {"cot": ("first way", "second way"), "fundamentals": ("rule",)}
    pairs = build_pairs(items, "cot")
    assert [p.id for p in pairs] == ["a/cot/0", "a/cot/1", "b/cot"]
    assert pairs[1].target == " second way"


def test_read_augmented_reports_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "question": "Q?", "choices": ["x"], "answer": 0}\n{"id": "b"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not an augmented record \(KeyError"):
        read_augmented(path)
    path.write_text('{"id": "a", "question": "Q?", "choices": ["x"], "answer": 0, "cot": [1]}\n')
    with pytest.raises(DataError, match="bad.jsonl:1: 'cot' must be a string or a list of strings"):
        read_augmented(path)


def test_annotated_keeps_only_present_kinds():
    assert set(annotated(RECORD).annotations) == {"cot", "fundamentals"}
    assert isinstance(annotated(RECORD), Annotated)


def test_read_augmented_refuses_an_unfinished_run(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "part-00000-of-00002.jsonl").write_text(
        '{"id": "a", "question": "Q?", "choices": ["x"], "answer": 0, "cot": "c"}\n')
    with pytest.raises(DataError, match="augment output is incomplete"):
        read_augmented(tmp_path)
    (tmp_path / "summary.json").write_text("{}")
    assert len(read_augmented(tmp_path)) == 1


def test_read_augmented_splits_lines_at_newline_only(tmp_path):
    """The augment job writes texts unescaped (ensure_ascii=False): a U+2028 in a teacher's text is
    inside its line, where str.splitlines would have cut it."""
    row = {"id": "a", "question": "Q?", "choices": ["x"], "answer": 0, "cot": "one\u2028two\x85three"}
    (tmp_path / "part.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    (item,) = read_augmented(tmp_path)
    assert item.annotations["cot"] == ("one\u2028two\x85three",)
