"""The synthetic suite: schema, determinism, split hygiene, and answers re-derived by independent
solvers that parse the question text (not the generator's internals)."""
import collections
import json
import re

import pytest

from teacherlm_jax.data import synthetic
from teacherlm_jax.data.records import Record
from teacherlm_jax.data.synthetic import SPLITS, STEP_FAMILIES, generate_family, make_suite, write_suite

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
SIGN = {"gets": 1, "finds": 1, "buys": 1, "wins": 1, "loses": -1, "sells": -1, "gives away": -1}


def solve_add_sub(q):
    m = re.fullmatch(r"\w+ has (\d+) (\w+)\. (?:She|He) (.+?) (\d+) and then (.+?) (\d+)\. "
                     r"How many \2 does (?:she|he) have now\?", q)
    a, v1, b, v2, c = int(m[1]), m[3], int(m[4]), m[5], int(m[6])
    return str(a + SIGN[v1] * b + SIGN[v2] * c)


def solve_boxes(q):
    m = re.fullmatch(r"\w+ has (\d+) (\w+) of (\d+) (\w+)\. (?:She|He) (?:gets (\d+) more|loses (\d+)) (\w+)\. "
                     r"How many \4 does (?:she|he) have\?", q)
    a, boxes, b, objs, unit = int(m[1]), m[2], int(m[3]), m[4], m[7]
    change = int(m[5]) if m[5] else -int(m[6])
    assert unit in (boxes, boxes.removesuffix("es"), boxes.removesuffix("s"), objs, objs[:-1]), q
    in_boxes = unit.startswith(boxes[:3])
    return str((a + change) * b if in_boxes else a * b + change)


def solve_clock(q):
    m = re.fullmatch(r"A \w+ (starts|ends) at (\d+):(\d\d) and lasts (\d+) minutes\. When does it (end|start)\?", q)
    assert (m[1], m[5]) in (("starts", "end"), ("ends", "start")), q
    t = 60 * int(m[2]) + int(m[3]) + (int(m[4]) if m[5] == "end" else -int(m[4]))
    return f"{t // 60}:{t % 60:02d}"


def solve_weekday(q):
    patterns = [(r"Today is (\w+)\. What day will it be in (\d+) days\?", 1),
                (r"Today is (\w+)\. What day was it (\d+) days ago\?", -1),
                (r"\w+ left on (\w+) and came back (\d+) days later\. What day did (?:she|he) come back\?", 1),
                (r"\w+ came back on (\w+), (\d+) days after leaving\. What day did (?:she|he) leave\?", -1)]
    for pattern, sign in patterns:
        if m := re.fullmatch(pattern, q):
            return DAYS[(DAYS.index(m[1]) + sign * int(m[2])) % 7]
    m = re.fullmatch(r"What day is (\d+) days (after|before) (\w+)\?", q)
    return DAYS[(DAYS.index(m[3]) + (1 if m[2] == "after" else -1) * int(m[1])) % 7]


def solve_order(q):
    *facts, ask = re.split(r"(?<=\.) ", q)
    above = {}  # name -> set of names directly below it
    for fact in facts:
        m = re.fullmatch(r"(\w+) is (taller|shorter|older|younger) than (\w+)\.", fact)
        hi, lo = (m[1], m[3]) if m[2] in ("taller", "older") else (m[3], m[1])
        above.setdefault(hi, set()).add(lo)
        above.setdefault(lo, set())
    def below(name):  # everyone below `name`, by transitivity
        out = set(above[name])
        for x in above[name]:
            out |= below(x)
        return out
    ranked = sorted(above, key=lambda n: -len(below(n)))
    assert [len(below(n)) for n in ranked] == [3, 2, 1, 0], q
    m = re.fullmatch(r"Who is the (second )?(tallest|shortest|oldest|youngest)\?", ask)
    pos = 1 if m[1] else 0
    return ranked[pos] if m[2] in ("tallest", "oldest") else ranked[3 - pos]


def solve_logic(q):
    *facts, ask = re.split(r"(?<=\.) ", q)
    member, every, no = {}, collections.defaultdict(set), collections.defaultdict(set)
    for fact in facts:
        if m := re.fullmatch(r"Every (\w+) is a (\w+)\.", fact):
            every[m[1]].add(m[2])
        elif m := re.fullmatch(r"No (\w+) is a (\w+)\.", fact):
            no[m[1]].add(m[2])
            no[m[2]].add(m[1])
        else:
            m = re.fullmatch(r"([A-Z]\w+) is a (\w+)\.", fact)
            member[m[1]] = m[2]
    who, t = re.fullmatch(r"Is (\w+) a (\w+)\?", ask).groups()
    kinds, todo = set(), [member[who]]
    while todo:
        w = todo.pop()
        if w not in kinds:
            kinds.add(w)
            todo += every[w]
    if t in kinds:
        assert not any(t in no[k] for k in kinds), f"contradictory facts: {q}"
        return "yes"
    return "no" if any(t in no[k] for k in kinds) else "unknown"


SOLVERS = {"add_sub": solve_add_sub, "boxes": solve_boxes, "clock": solve_clock,
           "weekday": solve_weekday, "order": solve_order, "logic": solve_logic}
KEYS = {"id", "question", "choices", "answer", "subject", "cot", "fundamentals", "mistakes"}


def test_every_step_family_has_a_solver():
    assert set(STEP_FAMILIES) == set(SOLVERS)


@pytest.mark.parametrize("family", STEP_FAMILIES)
def test_records_are_valid_and_labelled_right(family):
    records = generate_family(family, 600, seed=3)
    assert len({r["id"] for r in records}) == len({r["question"] for r in records}) == 600
    for r in records:
        assert set(r) == KEYS and r["subject"] == family
        choices, answer = r["choices"], r["answer"]
        assert len(choices) == (3 if family == "logic" else 4)
        assert len(set(choices)) == len(choices) and 0 <= answer < len(choices)
        assert SOLVERS[family](r["question"]) == choices[answer], r
        assert r["cot"].endswith(f"So the answer is {choices[answer]}."), r
        mistake = re.search(r"(?:which gives|to answer) ([\w:]+)", r["mistakes"])
        assert mistake and mistake[1] in choices and mistake[1] != choices[answer], r
        for text in (r["question"], r["cot"], r["fundamentals"], r["mistakes"]):
            assert text.isascii() and text == text.strip() and "  " not in text
        Record(**{**r, "choices": tuple(choices)})  # the project's record type accepts it


@pytest.mark.parametrize("family", STEP_FAMILIES)
def test_cot_arithmetic_is_right(family):
    for r in generate_family(family, 300, seed=4):
        for expr, value in re.findall(r"(\d+(?: [-+x] \d+)+) = (\d+)", r["cot"]):
            assert eval(expr.replace("x", "*")) == int(value), r["cot"]
        for n, q, rem in re.findall(r"(\d+) = (\d+) x 7 \+ (\d+)", r["cot"]):
            assert int(n) == 7 * int(q) + int(rem) and int(rem) < 7, r["cot"]


@pytest.mark.parametrize("family", STEP_FAMILIES)
def test_answer_not_given_away_by_position_or_size(family):
    """Position is uniform; for number and time answers, picking the largest or smallest choice is
    no better than chance (the choice set is the same whichever variant is asked)."""
    records = generate_family(family, 2000, seed=5)
    k = len(records[0]["choices"])
    positions = collections.Counter(r["answer"] for r in records)
    assert all(abs(positions[i] / len(records) - 1 / k) < 0.04 for i in range(k)), positions
    if family in ("add_sub", "boxes", "clock"):
        def size(c):
            return tuple(int(x) for x in c.split(":"))
        for pick in (max, min):
            hits = sum(pick(range(k), key=lambda i: size(r["choices"][i])) == r["answer"] for r in records)
            assert abs(hits / len(records) - 1 / k) < 0.04, (pick.__name__, hits)


def test_generation_is_deterministic_and_prefix_stable():
    for family in STEP_FAMILIES:
        a = generate_family(family, 50, seed=7)
        assert a == generate_family(family, 50, seed=7)
        assert a[:20] == generate_family(family, 20, seed=7)
        assert [r["question"] for r in a] != [r["question"] for r in generate_family(family, 50, seed=8)]


def test_suite_splits_sizes_heldout_and_no_leakage():
    suite = make_suite(1, n_teacher_per_family=30, n_train_per_family=20, n_test_per_family=10,
                       heldout_families=("boxes", "logic"))
    assert tuple(suite) == SPLITS
    by_split = {s: collections.Counter(r["subject"] for r in rs) for s, rs in suite.items()}
    seen = [f for f in STEP_FAMILIES if f not in ("boxes", "logic")]
    assert by_split["teacher_train"] == {f: 30 for f in seen}
    assert by_split["student_train"] == {f: 20 for f in STEP_FAMILIES}
    assert by_split["student_test"] == {f: 10 for f in STEP_FAMILIES}
    everything = [r for rs in suite.values() for r in rs]
    assert len({r["id"] for r in everything}) == len(everything)
    assert len({r["question"] for r in everything}) == len(everything)
    assert suite == make_suite(1, n_teacher_per_family=30, n_train_per_family=20, n_test_per_family=10,
                               heldout_families=("boxes", "logic"))


def test_student_splits_do_not_depend_on_teacher_size_or_heldout():
    a = make_suite(2, n_teacher_per_family=5, n_train_per_family=8, n_test_per_family=6)
    b = make_suite(2, n_teacher_per_family=40, n_train_per_family=8, n_test_per_family=6,
                   heldout_families=("clock",))
    assert a["student_train"] == b["student_train"] and a["student_test"] == b["student_test"]
    assert a["teacher_train"] != b["teacher_train"]


def test_write_suite_round_trips(tmp_path):
    kwargs = dict(seed=3, n_teacher_per_family=4, n_train_per_family=3, n_test_per_family=2,
                  families=("order", "weekday"))
    paths = write_suite(tmp_path / "suite", **kwargs)
    assert set(paths) == set(SPLITS)
    suite = make_suite(**kwargs)
    for split, path in paths.items():
        assert path == tmp_path / "suite" / f"{split}.jsonl"
        assert [json.loads(line) for line in path.read_text().splitlines()] == suite[split]


@pytest.mark.parametrize("kwargs, message", [
    (dict(families=("add_sub", "nope")), "unknown synthetic family 'nope'"),
    (dict(families=("add_sub",), heldout_families=("clock",)), "must be among families"),
    (dict(families=("add_sub",), heldout_families=("add_sub",)), "every family is held out"),
    (dict(families=("add_sub", "add_sub")), "distinct"),
    (dict(families=("weekday",), n_test_per_family=4000), "gave only"),
    (dict(n_train_per_family=-1), "split sizes must be >= 0"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_suite(**kwargs)


def test_negative_count_raises():
    with pytest.raises(ValueError, match="n must be >= 0"):
        synthetic.generate_family("clock", -1)
