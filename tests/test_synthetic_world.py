"""The two-hop world families: answers re-derived from the world's facts, balanced choices, and the
Latin-square split that puts every fact a test rationale needs in both training splits."""
import collections
import re

import pytest

from teacherlm_jax.data.records import Record
from teacherlm_jax.data.synthetic import generate_family, make_suite
from teacherlm_jax.data.synthetic_world import PEOPLE, PETS, RELATIONS, WORLD_FAMILIES, build_world, world_family

def person_of(question: str) -> str:
    named = [w for w in re.findall(r"\w+", question) if w in PEOPLE]
    assert len(named) == 1, question
    return named[0]


@pytest.mark.parametrize("family", WORLD_FAMILIES)
def test_answers_follow_the_world_and_are_balanced(family):
    world = build_world(seed=4)
    relation = RELATIONS[family]
    records = generate_family(family, len(PEOPLE), seed=4)
    assert sorted(person_of(r["question"]) for r in records) == sorted(PEOPLE)  # one question per person
    for r in records:
        thing = world.has[relation.thing][person_of(r["question"])]
        value = world.attributes[family][thing]
        assert r["choices"] == list(relation.values) and r["choices"][r["answer"]] == value, r
        assert thing not in r["question"] and value not in r["question"]  # both hops are hidden
        assert thing in r["cot"] and r["cot"].endswith(f"So the answer is {value}."), r
        wrong = re.search(r"which gives (\w+)", r["mistakes"])[1]
        assert wrong in r["choices"] and wrong != value
        Record(**{**r, "choices": tuple(r["choices"])})
    positions = collections.Counter(r["answer"] for r in records)
    assert sorted(positions) == [0, 1, 2, 3] and max(positions.values()) - min(positions.values()) <= 3


def test_world_is_balanced_and_deterministic():
    world = build_world(seed=1)
    for thing in ("pet", "town"):
        owners = collections.Counter(world.has[thing].values())
        assert set(owners.values()) == {len(PEOPLE) // len(owners)} and len(owners) == len(PETS)
    for family, relation in RELATIONS.items():
        assert set(collections.Counter(world.attributes[family].values()).values()) == {len(PETS) // 4}, family
    assert build_world(seed=1) == world and build_world(seed=2) != world
    assert world_family("pet_color", 48, seed=1)[:16] == world_family("pet_color", 16, seed=1)


def test_latin_square_split_teaches_every_fact_a_test_rationale_needs():
    suite = make_suite(3, n_teacher_per_family=16, n_train_per_family=16, n_test_per_family=16,
                       families=WORLD_FAMILIES)
    keys = {split: {(r["subject"], person_of(r["question"])) for r in records} for split, records in suite.items()}
    assert all(len(k) == 16 * len(WORLD_FAMILIES) for k in keys.values())
    assert not (keys["student_test"] & keys["student_train"]) and not (keys["student_test"] & keys["teacher_train"])
    for split in ("student_train", "teacher_train"):
        sentences = {s for r in suite[split] for s in re.findall(r"[^.]+\.", r["cot"])}
        for r in suite["student_test"]:
            link, fact = re.findall(r"[^.]+\.", r["cot"])[:2]
            assert link.strip() in {s.strip() for s in sentences}, (split, r["cot"])
            assert fact.strip() in {s.strip() for s in sentences}, (split, r["cot"])


def test_too_many_questions_raise():
    with pytest.raises(ValueError, match="one question per person"):
        world_family("town_food", len(PEOPLE) + 1)
    with pytest.raises(ValueError, match="unknown world family"):
        world_family("pet_age", 3)
