"""Registry readers on the real shared data: row counts, exclusions, and TeacherLM's exact texts."""
import functools
import json

import pytest

from teacherlm_jax.data import (KINDS, REGISTRY, answered_block, eval_context, load_records,
                                teacher_prompt)
from teacherlm_jax.data.records import LETTERS
from teacherlm_jax.data.sources import strategyqa_question

# ../shared/data/README.md
ROW_COUNTS = {
    ("creak", "train"): 10176, ("creak", "dev"): 1371, ("creak", "contrast_set"): 500,
    ("commonsenseqa", "train"): 9741, ("commonsenseqa", "dev"): 1221,
    ("ecqa", "train"): 7598, ("ecqa", "val"): 1090, ("ecqa", "test"): 2194,
    ("gsm8k", "train"): 7473, ("gsm8k", "test"): 1319,
    ("mmlu", "dev"): 285, ("mmlu", "test"): 14042,
    ("mmlu_2020", "dev"): 285, ("mmlu_2020", "val"): 1542, ("mmlu_2020", "test"): 14079,
    ("teacherlm_creak", "test"): 1371, ("teacherlm_ecqa", "test"): 2194,
    ("teacherlm_strategyqa", "test"): 228,
}
STRATEGYQA_PUBLIC = {"train": 2061, "dev": 229}


@functools.cache
def _load(name, split, data_dir):
    return load_records(name, split, data_dir=str(data_dir))


@pytest.fixture
def load(shared_data_dir):
    return lambda name, split: _load(name, split, shared_data_dir)


def _jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_every_registry_split_is_counted():
    listed = {(n, s) for n, src in REGISTRY.items() for s in src.splits if src.needs_data_dir}
    assert listed - {("strategyqa", s) for s in STRATEGYQA_PUBLIC} == set(ROW_COUNTS)


@pytest.mark.parametrize("name,split", sorted(ROW_COUNTS))
def test_row_counts_match_readme(load, name, split):
    records = load(name, split)
    assert len(records) == ROW_COUNTS[name, split]
    assert len({r.id for r in records}) == len(records), "ids must be unique within a split"
    assert {r.source for r in records} == {name}


def test_strategyqa_excludes_teacherlm_test_questions(load, shared_data_dir):
    train, dev = load("strategyqa", "train"), load("strategyqa", "dev")
    test = load("teacherlm_strategyqa", "test")
    assert len(train) + len(dev) == sum(STRATEGYQA_PUBLIC.values()) - len(test)
    assert not {r.question for r in train + dev} & {r.question for r in test}
    # The wording matches TeacherLM's for each of its test items, built from the public rows.
    public = {}
    for split in STRATEGYQA_PUBLIC:
        for row in json.load(open(shared_data_dir / "strategyqa" / f"{split}.json")):
            public[row["question"].strip()] = row
    for row in _jsonl(shared_data_dir / "teacherlm_eval/strategy_qa/test.derived.jsonl"):
        raw = public[row["origin_question"].strip()]
        ours = strategyqa_question(raw["facts"], raw["question"])
        assert ours + " (A) True (B) False" == row["question"]


@pytest.mark.parametrize("name,subdir", [("teacherlm_creak", "creak"), ("teacherlm_ecqa", "ecqa"),
                                         ("teacherlm_strategyqa", "strategy_qa")])
def test_teacherlm_eval_context_is_theirs(load, shared_data_dir, name, subdir):
    """lm_eval tasks/{creak,ecqa,strategy_qa}.py: doc_to_text is
    f"Q: {doc['question']} A: The answer is ("; gold is doc['answer'], compared with '(A)', '(B)'..."""
    rows = _jsonl(shared_data_dir / "teacherlm_eval" / subdir / "test.derived.jsonl")
    records = load(name, "test")
    for row, record in zip(rows, records, strict=True):
        assert eval_context(record) == f"Q: {row['question']} A: The answer is ("
        assert f"({LETTERS[record.answer]})" == row["answer"]


def test_creak_teacher_prompts_are_teacherlms(load, shared_data_dir):
    """enhance/data_prepare.py's text / cot_text / error_text / fundamental_text for CREAK dev."""
    rows = _jsonl(shared_data_dir / "teacherlm_eval/enhance_CREAK_validation/validation.derived.jsonl")
    fields = {"cot": "cot_text", "mistakes": "error_text", "fundamentals": "fundamental_text"}
    for row, record in zip(rows, load("creak", "dev"), strict=True):
        assert answered_block(record) == row["text"]
        for kind in KINDS:
            assert teacher_prompt(record, kind) == row[fields[kind]]
        assert record.cot == row["explanation"]


def test_ecqa_matches_teacherlm_ecqa(load):
    ours = {r.id: r for r in load("ecqa", "test")}
    for theirs in load("teacherlm_ecqa", "test"):
        mine = ours[theirs.id]
        assert theirs.question == "Q: " + mine.question and theirs.choices == mine.choices
        # 7 items have a duplicated choice text; TeacherLM's letter points at the other copy.
        assert theirs.choices[theirs.answer] == mine.choices[mine.answer]


# (name, split, index) -> (eval context, cot teacher prompt or None). Written from TeacherLM's rules.
GOLDEN = {
    ("creak", "contrast_set", 0): (
        "Q: Determine the correctness of the following sentence. W. B. Yeats was born in London and "
        "educated in Ireland. (A) True (B) False A: The answer is (",
        "Q: Determine the correctness of the following sentence. W. B. Yeats was born in London and "
        "educated in Ireland. (A) True (B) False A: The answer is (A). Let's think step by step."),
    ("strategyqa", "train", 0): (
        "Q: Fact 1: Julius Caesar had three children. Fact 2: Genghis Khan had sixteen children. "
        "Fact 3: Modern geneticists have determined that out of every 200 men today has DNA that can "
        "be traced to Genghis Khan. Given these facts above, are more people today related to genghis "
        "khan than julius caesar? (A) True (B) False A: The answer is (", None),
    ("commonsenseqa", "dev", 0): (
        "Q: A revolving door is convenient for two direction travel, but it also serves as a security "
        "measure at a what? (A) bank (B) library (C) department store (D) mall (E) new york "
        "A: The answer is (",
        "Q: A revolving door is convenient for two direction travel, but it also serves as a security "
        "measure at a what? (A) bank (B) library (C) department store (D) mall (E) new york "
        "A: The answer is (A). Let's think step by step."),
    ("ecqa", "test", 0): (
        "Q: What kind of people will someone who is in charge of project look for? (A) greedy "
        "(B) worry (C) have knowledge (D) take charge (E) boss A: The answer is (", None),
    ("gsm8k", "train", 0): (
        "Q: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
        "May. How many clips did Natalia sell altogether in April and May? (A) 72 A: The answer is (",
        "Q: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
        "May. How many clips did Natalia sell altogether in April and May? (A) 72 A: The answer is (A). "
        "Let's think step by step."),
    ("teacherlm_ecqa", "test", 0): (
        "Q: Q: What kind of people will someone who is in charge of project look for? (A) greedy "
        "(B) worry (C) have knowledge (D) take charge (E) boss A: The answer is (", None),
    ("teacherlm_strategyqa", "test", 0): (
        "Q: Fact 1: An ocelot can run up to 61 kilometers per hour. Fact 2: Kindergartners are human "
        "children usually aged five to six years old. Fact 3: Human children under 10 are not likely "
        "to exceed 20 kilometers per hour. Given these facts above, could an ocelot outrun a "
        "kindergartner? (A) True (B) False A: The answer is (", None),
    ("teacherlm_creak", "test", 0): (
        "Q: Determine the correctness of the following sentence. Eating soup means eating only "
        "solids. (A) True (B) False A: The answer is (",
        "Q: Determine the correctness of the following sentence. Eating soup means eating only "
        "solids. (A) True (B) False A: The answer is (B). Let's think step by step."),
}
# MMLU (tasks/mmlu.py): subject header, a period when the question lacks end punctuation (checked
# before newlines become spaces), newlines -> spaces.
MMLU_GOLDEN = {
    ("mmlu", "test", "abstract_algebra/test/2"):
        "The following are multiple choice questions (with answers) about abstract algebra. Q: Find all "
        "zeros in the indicated finite field of the given polynomial with coefficients in that field. "
        "x^5 + 3x^3 + x^2 + 2x in Z_5. (A) 0 (B) 1 (C) 0,1 (D) 0,4 A: The answer is (",
    ("mmlu", "test", "college_biology/test/13"):
        "The following are multiple choice questions (with answers) about college biology. Q: A cell "
        "nucleus contains which of the following? I. DNA II. Protein III. RNA. (A) I only (B) II only "
        "(C) III only (D) I, II, and III A: The answer is (",
    ("mmlu_2020", "test", "abstract_algebra/test/0"):
        "The following are multiple choice questions (with answers) about abstract algebra. Q: Find the "
        "degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q. (A) 0 (B) 4 (C) 2 "
        "(D) 6 A: The answer is (",
}


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_golden_strings(load, key):
    name, split, index = key
    record = load(name, split)[index]
    context, prompt = GOLDEN[key]
    assert eval_context(record) == context
    if prompt is not None:
        assert teacher_prompt(record, "cot") == prompt


@pytest.mark.parametrize("key", sorted(MMLU_GOLDEN))
def test_mmlu_golden_strings(load, key):
    name, split, record_id = key
    (record,) = [r for r in load(name, split) if r.id == record_id]
    assert eval_context(record, mmlu=True) == MMLU_GOLDEN[key]


def test_gold_rationales_map_to_cot(load):
    assert load("creak", "train")[0].cot == (
        "The rock group would not be as popular is they had such requirements for their concerts.")
    assert load("gsm8k", "train")[0].cot == (
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.")
    assert load("strategyqa", "train")[0].cot == (
        "How many kids did Julius Caesar have? How many kids did Genghis Khan have? "
        "Is #2 greater than #1?")
    assert all(r.cot is None for r in load("creak", "contrast_set"))  # its explanations are "n/a"


def test_unknown_split_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="splits"):
        load_records("creak", "test")
    with pytest.raises(FileNotFoundError, match="TEACHERLM_DATA_DIR"):
        load_records("creak", "train", data_dir=str(tmp_path / "absent"))
