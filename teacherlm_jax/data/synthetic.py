"""A synthetic multiple-choice reasoning suite, generated in-process (nothing to download).

It exists so the end-to-end demo can show TeacherLM's effect with a tiny model trained from scratch:
every question needs 2-3 small steps whose composition is hard to learn from the answer letter alone,
while each step is easy to learn once it is written out in the rationale.

Two kinds of family (`FAMILIES`; the record's `subject` is the family name):
- `WORLD_FAMILIES` (synthetic_world.py, the demo's default): two-hop questions about a generated
  world ("What color is Ann's pet?"): the steps recall facts that only rationales state. A tiny
  model learns these from rationales in minutes; see that module for its Latin-square split.
- `STEP_FAMILIES` (below): the steps compute on the question's own numbers and names, so a rationale
  helps only once the model can copy them out of the question (a phase a tiny model did not reach
  in CPU-minutes, docs/demo.md):
- `add_sub`: "Ann has 14 pens. She gets 5 and then loses 3. ..." -> a +/- b +/- c. The four
  choices are the four sign patterns, the same set whichever two verbs are asked.
- `boxes`: "Ann has 4 boxes of 3 pens. She gets 2 more boxes. ..." -> (a +/- c) x b or a x b +/- c.
  The choices are all four, so the question's unit (boxes or pens) and verb decide.
- `clock`: "A film starts at 2:40 and lasts 50 minutes. When does it end?" (or ends ... start):
  minutes with carry/borrow. Choices: end and start times, each also with the carry mistake.
- `weekday`: "Today is Monday. What day will it be in 10 days?" (or N days ago, or a trip's return
  or leaving day): weeks drop out, then count on or back. Choices: the right day both ways, each also
  off by one (counting today).
- `order`: three pairwise facts ("Cal is shorter than Bob.") about four people; who is tallest /
  second tallest / second shortest / shortest (or oldest ... youngest). Choices: the four names.
- `logic`: three people ("Ann is a wug."), one linking rule ("Every wug is a dax.") and two rules
  about the target ("Every dax is a zib.", "No kol is a zib."); "Is Ann a zib?" -> yes / no / unknown,
  decided by following the rules from what that person is. Both kinds of rule are always there.

Each family's choice set does not depend on which variant is asked (so the set alone does not give
the answer away) and the answer's position is uniform. Wrong choices are the family's typical
mistakes. Gold annotations: `cot` (the steps, ending "So the answer is {choice}."), `fundamentals`
(the family's rule applied to the instance), `mistakes` (the typical error, naming a wrong choice).

Splits of `make_suite` (questions never repeat across splits; per family the pool is drawn once, in
the order student_test | student_train | teacher_train, so growing a later split leaves earlier ones
unchanged, and the student splits do not depend on which families are held out):
- `teacher_train`: the seen families (all but `heldout_families`), with gold annotations: what the
  teacher learns from.
- `student_train`: fresh questions of every family (held-out ones included) for the teacher to
  annotate. Gold annotations are kept (oracle baselines, checks); a pipeline training students on
  the teacher's texts must replace them, and may select held-out families by `subject`.
- `student_test`: fresh questions of every family, for evaluation.
A held-out family asks the teacher to write steps for a template it never saw; the families share
some steps (+/- in add_sub, boxes and clock) but each also has its own (x in boxes, day counting in
weekday), so which families can be held out with the effect intact is for the demo to measure.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Sequence

from teacherlm_jax.data.synthetic_world import WORLD_FAMILIES, world_family

SPLITS = ("teacher_train", "student_train", "student_test")

_PEOPLE = {"Ann": "she", "Eva": "she", "Fay": "she", "Lia": "she",
           "Bob": "he", "Cal": "he", "Dan": "he", "Gus": "he"}
_OBJECTS = {"pens": "pen", "cups": "cup", "cards": "card", "coins": "coin", "books": "book", "eggs": "egg"}
_GAIN = ("gets", "finds", "buys", "wins")
_LOSS = ("loses", "sells", "gives away")
_CONTAINERS = {"boxes": "box", "bags": "bag", "packs": "pack"}
_EVENTS = ("film", "class", "game", "walk", "talk", "nap")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# n with n % 7 in {2, 3, 5, 6}: exactly the n for which the four weekday choices are distinct.
_WEEKDAY_N = tuple(n for n in range(2, 41) if n % 7 in (2, 3, 5, 6))
_CLOCK_MINUTES = (15, 20, 25, 35, 40, 45, 50, 55)  # 30 would make end and start choices collide
_ORDER_WORDS = (("taller", "shorter", "tallest", "shortest"), ("older", "younger", "oldest", "youngest"))
_NONSENSE = ("wug", "dax", "fep", "zib", "kol", "mip", "tor", "lun", "bim", "rax", "pim", "gub", "nep", "vok")

# A family draws one question: (question, correct choice, wrong choices, cot, fundamentals, mistakes).
_Draw = tuple[str, str, list[str], str, str, str]


def _count(n: int, plural: str, singular: str) -> str:
    return f"{n} {singular if n == 1 else plural}"


def _answer(text: str) -> str:
    return f"So the answer is {text}."


def _add_sub(rng: random.Random) -> _Draw:
    name, pron = rng.choice(sorted(_PEOPLE.items()))
    obj = rng.choice(sorted(_OBJECTS))
    b, c = rng.sample(range(2, 10), 2)
    a = rng.randint(b + c + 1, 25)  # keeps every sign pattern positive
    signs = (rng.choice((1, -1)), rng.choice((1, -1)))
    verbs = [rng.choice(_GAIN if s > 0 else _LOSS) for s in signs]
    value = {(s1, s2): a + s1 * b + s2 * c for s1 in (1, -1) for s2 in (1, -1)}
    mid, result = a + signs[0] * b, value[signs]
    op = {1: "+", -1: "-"}
    question = (f"{name} has {a} {obj}. {pron.capitalize()} {verbs[0]} {b} and then {verbs[1]} {c}. "
                f"How many {obj} does {pron} have now?")
    cot = (f"{verbs[0].capitalize()} {b}: {a} {op[signs[0]]} {b} = {mid}. "
           f"{verbs[1].capitalize()} {c}: {mid} {op[signs[1]]} {c} = {result}. {_answer(str(result))}")
    means = {1: "add", -1: "subtract"}
    fundamentals = (f"Apply the changes to the {a} {obj} in order: {verbs[0]} means {means[signs[0]]}, "
                    f"{verbs[1]} means {means[signs[1]]}.")
    step = rng.randrange(2)
    flipped = list(signs)
    flipped[step] = -flipped[step]
    x = (b, c)[step]
    mistakes = (f"A common mistake is to {means[flipped[step]]} {x} when {pron} {verbs[step]} {x}, "
                f"which gives {value[tuple(flipped)]}; but {verbs[step]} means {means[signs[step]]}.")
    wrong = [str(v) for k, v in value.items() if k != signs]
    return question, str(result), wrong, cot, fundamentals, mistakes


def _boxes(rng: random.Random) -> _Draw:
    name, pron = rng.choice(sorted(_PEOPLE.items()))
    objs, obj1 = rng.choice(sorted(_OBJECTS.items()))
    boxes, box1 = rng.choice(sorted(_CONTAINERS.items()))
    a, b = rng.randint(2, 7), rng.randint(2, 6)
    c = rng.randint(1, min(a - 1, 4))
    sign = rng.choice((1, -1))
    in_boxes = rng.random() < 0.5
    value = {(s, u): (a + s * c) * b if u else a * b + s * c for s in (1, -1) for u in (True, False)}
    result = value[(sign, in_boxes)]
    op = "+" if sign > 0 else "-"
    unit = _count(c, boxes, box1) if in_boxes else _count(c, objs, obj1)
    change = f"gets {c} more {unit.split(' ', 1)[1]}" if sign > 0 else f"loses {unit}"
    question = (f"{name} has {a} {boxes} of {b} {objs}. {pron.capitalize()} {change}. "
                f"How many {objs} does {pron} have?")
    if in_boxes:
        steps = f"{a} {op} {c} = {_count(a + sign * c, boxes, box1)}. {a + sign * c} x {b} = {result} {objs}."
    else:
        steps = f"{a} x {b} = {a * b} {objs}. {a * b} {op} {c} = {result} {objs}."
    cot = f"{steps} {_answer(str(result))}"
    fundamentals = (f"Each {box1} holds {b} {objs}, so {boxes} times {b} gives {objs}; "
                    f"change the {boxes} before multiplying and the {objs} after.")
    other = _count(c, objs, obj1) if in_boxes else _count(c, boxes, box1)
    mistakes = (f"A common mistake is to count the {unit} as {other}, which gives "
                f"{value[(sign, not in_boxes)]}; each {box1} holds {b} {objs}.")
    wrong = [str(v) for k, v in value.items() if k != (sign, in_boxes)]
    return question, str(result), wrong, cot, fundamentals, mistakes


def _time(minutes: int) -> str:
    return f"{minutes // 60}:{minutes % 60:02d}"


def _clock(rng: random.Random) -> _Draw:
    event = rng.choice(_EVENTS)
    ends = rng.random() < 0.5  # True: given the start, ask the end
    carry = rng.random() < 0.5  # whether the minutes cross the hour
    while True:
        mm, m = rng.randrange(0, 60, 5), rng.choice(_CLOCK_MINUTES)
        if (mm + m >= 60 if ends else mm < m) == carry:
            break
    h = rng.randint(2, 11)
    t = 60 * h + mm
    end, start = t + m, t - m
    # The carry mistake keeps the given hour where the hour changes, and changes it where it does not.
    end_wrong = end - 60 if mm + m >= 60 else end + 60
    start_wrong = start + 60 if mm < m else start - 60
    given = "starts" if ends else "ends"
    asked = "When does it end?" if ends else "When does it start?"
    question = f"A {event} {given} at {_time(t)} and lasts {m} minutes. {asked}"
    if ends:
        result, mistake = end, end_wrong
        steps = (f"{mm} + {m} = {mm + m}, that is 1 hour and {mm + m - 60} minutes. {h} + 1 = {h + 1}."
                 if carry else f"{mm} + {m} = {mm + m}, less than 60, so the hour stays {h}.")
        fundamentals = (f"To find the end, add {m} minutes to {_time(t)}; an hour has 60 minutes, "
                        f"so 60 minutes or more carry 1 hour.")
        why = (f"{mm + m} minutes is more than an hour" if carry
               else f"{mm + m} minutes is less than an hour")
    else:
        result, mistake = start, start_wrong
        steps = (f"{mm} - {m} is below 0, so borrow 1 hour: {mm} + 60 - {m} = {mm + 60 - m}. {h} - 1 = {h - 1}."
                 if carry else f"{mm} - {m} = {mm - m}, not below 0, so the hour stays {h}.")
        fundamentals = (f"To find the start, take {m} minutes from {_time(t)}; an hour has 60 minutes, "
                        f"so minutes below 0 borrow 1 hour.")
        why = f"{mm} minutes is less than {m}" if carry else f"{mm} minutes is at least {m}"
    action = ("forget the carry" if ends else "forget to borrow") if carry else (
        "carry an hour anyway" if ends else "borrow an hour anyway")
    cot = f"{steps} {_answer(_time(result))}"
    mistakes = f"A common mistake is to {action}, which gives {_time(mistake)}; but {why}."
    wrong = [_time(v) for v in (end, end_wrong, start, start_wrong) if v != result]
    return question, _time(result), wrong, cot, fundamentals, mistakes


def _count_days(day: int, steps: int, direction: int) -> list[str]:
    return [_DAYS[(day + direction * k) % 7] for k in range(1, steps + 1)]


def _weekday(rng: random.Random) -> _Draw:
    d, n = rng.randrange(7), rng.choice(_WEEKDAY_N)
    after = rng.random() < 0.5
    q, r = divmod(n, 7)
    day = _DAYS[d]
    name, pron = rng.choice(sorted(_PEOPLE.items()))
    question = rng.choice((
        f"Today is {day}. What day will it be in {n} days?" if after
        else f"Today is {day}. What day was it {n} days ago?",
        f"What day is {n} days {'after' if after else 'before'} {day}?",
        f"{name} left on {day} and came back {n} days later. What day did {pron} come back?" if after
        else f"{name} came back on {day}, {n} days after leaving. What day did {pron} leave?"))
    sign = 1 if after else -1
    result = _DAYS[(d + sign * n) % 7]
    counted = _count_days(d, r, sign)
    cot = (f"{n} = {q} x 7 + {r}. Count {r} {'on' if after else 'back'} from {day}: "
           f"{', '.join(counted)}. {_answer(result)}")
    fundamentals = (f"The days repeat every 7 days, so {n} days {'after' if after else 'before'} is the "
                    f"same as {r} days; then count {'on' if after else 'back'} from {day}.")
    off_by_one = _DAYS[(d + sign * (n - 1)) % 7]
    mistakes = (f"A common mistake is to count {day} itself as the first day, which gives {off_by_one}; "
                f"the first day is the day {'after' if after else 'before'}.")
    wrong = [_DAYS[(d + n - 1) % 7], _DAYS[(d + n) % 7], _DAYS[(d - n) % 7], _DAYS[(d - n + 1) % 7]]
    wrong.remove(result)
    return question, result, wrong, cot, fundamentals, mistakes


def _order(rng: random.Random) -> _Draw:
    more, less, most, least = rng.choice(_ORDER_WORDS)
    people = rng.sample(sorted(_PEOPLE), 4)  # people[0] is the most, people[3] the least
    facts = []
    for hi, lo in zip(people, people[1:]):
        flip = rng.random() < 0.5
        facts.append((f"{lo} is {less} than {hi}." if flip else f"{hi} is {more} than {lo}.", hi, lo))
    rng.shuffle(facts)
    labels = (f"the {most}", f"the second {most}", f"the second {least}", f"the {least}")
    pos = rng.randrange(4)
    question = " ".join(f for f, _, _ in facts) + f" Who is {labels[pos]}?"
    cot = (f"{more.capitalize()} first: {', '.join(f'{hi} > {lo}' for _, hi, lo in facts)}. "
           f"Order: {', '.join(people)}. {_answer(people[pos])}")
    fundamentals = (f"Rewrite each fact as {more} > {less}; the facts chain into one order "
                    f"from {most} to {least}.")
    mistakes = (f"A common mistake is to count from the wrong end, which gives {people[3 - pos]}, "
                f"who is {labels[3 - pos]}.")
    return question, people[pos], [p for p in people if p != people[pos]], cot, fundamentals, mistakes


def _logic(rng: random.Random) -> _Draw:
    *starts, link, t = rng.sample(_NONSENSE, 5)
    people = rng.sample(sorted(_PEOPLE), 3)
    owner = rng.randrange(3)  # this person's word also links on: 'Every {starts[owner]} is a {link}'
    reach = [[w, link] if i == owner else [w] for i, w in enumerate(starts)]
    yes_i, no_i, _ = rng.sample(range(3), 3)  # whom 'Every s1 is a t' / 'No s2 is a t' decide
    s1, s2 = rng.choice(reach[yes_i]), rng.choice(reach[no_i])
    who_i = rng.randrange(3)
    who, path = people[who_i], reach[who_i]
    label = "yes" if who_i == yes_i else "no" if who_i == no_i else "unknown"
    rules = [f"Every {starts[owner]} is a {link}.", f"Every {s1} is a {t}.", f"No {s2} is a {t}."]
    rng.shuffle(rules)
    members = [f"{n} is a {w}." for n, w in zip(people, starts)]
    rng.shuffle(members)
    question = " ".join(members + rules) + f" Is {who} a {t}?"
    if label == "yes":
        path = path[: path.index(s1) + 1]
        steps = f"{who} is a {', so a '.join(path)}. Every {s1} is a {t}."
        mistakes = f"A common mistake is to answer no from the rule about {s2}, but {who} is a {s1}, not a {s2}."
    elif label == "no":
        path = path[: path.index(s2) + 1]
        steps = f"{who} is a {', so a '.join(path)}. No {s2} is a {t}."
        mistakes = f"A common mistake is to answer yes from the rule about {s1}, but {who} is a {s2}, not a {s1}."
    else:
        steps = f"{who} is only a {' and a '.join(path)}, and no rule links that to {t}."
        wrong, s = rng.choice((("yes", s1), ("no", s2)))
        mistakes = f"A common mistake is to answer {wrong} from the rule about {s}, but {who} is not a {s}."
    fundamentals = (f"'Every X is a Y' passes from X to Y, never back; a rule about {t} counts for {who} "
                    f"only through what {who} is.")
    wrong = [x for x in ("yes", "no", "unknown") if x != label]
    return question, label, wrong, f"{steps} {_answer(label)}", fundamentals, mistakes


_GENERATORS: dict[str, Callable[[random.Random], _Draw]] = {
    "add_sub": _add_sub, "boxes": _boxes, "clock": _clock,
    "weekday": _weekday, "order": _order, "logic": _logic,
}
STEP_FAMILIES = tuple(_GENERATORS)  # the steps compute on the question's own numbers and names
FAMILIES = STEP_FAMILIES + WORLD_FAMILIES  # WORLD_FAMILIES: the steps recall facts (synthetic_world.py)


def _check_family(name: str) -> None:
    if name not in FAMILIES:
        raise ValueError(f"unknown synthetic family {name!r}; expected one of {FAMILIES}")


def generate_family(name: str, n: int, seed: int = 0) -> list[dict]:
    """`n` records of one family with distinct questions, ids `{name}-{i:05d}`. Deterministic in
    (name, n, seed), and the first k records do not depend on n."""
    _check_family(name)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if name in WORLD_FAMILIES:
        return world_family(name, n, seed)
    rng = random.Random(f"teacherlm-synthetic:{seed}:{name}")
    draw = _GENERATORS[name]
    records, seen, misses = [], set(), 0
    while len(records) < n:
        question, correct, wrong, cot, fundamentals, mistakes = draw(rng)
        if question in seen:
            # With k of K questions found, a run of 20k repeats has chance (k/K)**(20k) < e**-20.
            misses += 1
            if misses > 20 * len(records) + 1000:
                raise ValueError(f"family {name!r} gave only {len(records)} distinct questions "
                                 f"({misses} repeats in a row); asked for {n}: ask for fewer")
            continue
        misses = 0
        seen.add(question)
        choices = [correct, *wrong]
        if len(set(choices)) != len(choices):
            raise AssertionError(f"{name}: duplicate choices {choices} for {question!r}")
        rng.shuffle(choices)
        records.append({"id": f"{name}-{len(records):05d}", "question": question, "choices": choices,
                        "answer": choices.index(correct), "subject": name, "cot": cot,
                        "fundamentals": fundamentals, "mistakes": mistakes})
    return records


def make_suite(seed: int = 0, *, n_teacher_per_family: int = 300, n_train_per_family: int = 200,
               n_test_per_family: int = 100, families: Sequence[str] = STEP_FAMILIES,
               heldout_families: Sequence[str] = ()) -> dict[str, list[dict]]:
    """The three splits (`SPLITS`) described in the module docstring; ids `{family}-{split}-{i:05d}`."""
    families, heldout = tuple(families), tuple(heldout_families)
    for name in families + heldout:
        _check_family(name)
    if not families or len(set(families)) != len(families):
        raise ValueError(f"families must be non-empty and distinct, got {families}")
    if not set(heldout) <= set(families):
        raise ValueError(f"heldout_families {heldout} must be among families {families}")
    if set(heldout) == set(families):
        raise ValueError("every family is held out: the teacher would have nothing to learn from")
    sizes = {"student_test": n_test_per_family, "student_train": n_train_per_family,
             "teacher_train": n_teacher_per_family}
    if min(sizes.values()) < 0:
        raise ValueError(f"split sizes must be >= 0, got {sizes}")
    suite: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for name in families:
        pool = generate_family(name, sum(sizes.values()), seed)
        start = 0
        for split, size in sizes.items():
            part = pool[start:start + size]
            start += size
            if split == "teacher_train" and name in heldout:
                continue
            suite[split] += [dict(r, id=f"{name}-{split}-{i:05d}") for i, r in enumerate(part)]
    return suite


def write_suite(out_dir: str | Path, **kwargs) -> dict[str, Path]:
    """Writes `make_suite(**kwargs)` as `out_dir/<split>.jsonl` (one JSON object a line)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, records in make_suite(**kwargs).items():
        paths[split] = out / f"{split}.jsonl"
        with open(paths[split], "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    return paths
