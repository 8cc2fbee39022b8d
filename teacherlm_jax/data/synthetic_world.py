"""Two-hop questions about a small generated world: the synthetic families where rationales teach.

A question names a person and asks for an attribute of something the person has: "What color is
Ann's pet?" The answer needs two facts, which person has which pet and which color that pet is,
and neither is in the question. The chain of thought writes both out ("Ann's pet is Rex. Rex is
brown. So the answer is brown."), so a student trained on the teacher's rationales reads the facts
and the two steps, while a student trained on answers only sees a letter per (person, attribute)
and never the facts that connect them: on a new (person, attribute) pair it can only guess. This is
TeacherLM's claim in miniature: the rationale is what transfers (to a model small enough to train
on a laptop CPU in minutes, unlike the arithmetic families of `synthetic.py`, whose rationales need
copying numbers and names out of the question, which such a model does not learn in that time).

Each record's gold texts carry information its answer does not, each kind its own (docs/ablation.md):
  cot           the two facts chained to the answer: "Ann's pet is Rex. Rex is brown. So the answer is brown."
  fundamentals  the facts the question needs, as background: "The color belongs to the pet, not the
                person. Ann's pet is Rex. Rex is brown."
  mistakes      the confusable facts, those of a similar person (one who lives in the same town, for a pet
                question; who has the same pet, for a town question) whose pet (town) differs in the asked
                attribute, then the right link: "A common mistake is to answer for Bob: Bob's pet is Mimi.
                Mimi is black, which gives black. But Ann's pet is Rex."

The world (`build_world(seed)`): 48 people, 8 pets and 8 towns; every person has one pet and lives
in one town (6 people per pet and per town); pets and towns have six attributes each, every value
shared by 2 of the 8. Families (`WORLD_FAMILIES`, one per attribute) ask one attribute: `pet_kind`,
`pet_color`, `pet_size`, `pet_toy`, `pet_bed`, `pet_food`, `town_country`, `town_weather`,
`town_food`, `town_sport`, `town_houses`, `town_travel`. Choices are the attribute's four values in a
fixed order (a closed set, like a form); the answer's position is uniform because values are balanced.

Splits are a Latin square: a person's six pet questions (and six town questions) go two to each
split, and the owners of every pet (residents of every town) are spread evenly over the splits in
every family. So for each held-out test question, the student training split holds two other
questions naming the same person's pet (town) and two naming that pet's attribute, and so does the
teacher's split: every fact a test rationale needs was written by the teacher for the student, in
more than one context, yet the question itself was never seen. (Facts met in a single context are
recalled only in that context by a model this small: that is why there are six attributes.)
`world_family` returns a family's questions in split order, a third each, test first, matching
`make_suite`'s order `student_test | student_train | teacher_train` with 16 questions per split;
other sizes keep the splits disjoint but lose the guarantee.
"""
from __future__ import annotations

import dataclasses
import random

PEOPLE = ("Ann", "Bob", "Cal", "Dan", "Eva", "Fay", "Gus", "Hal", "Ida", "Jon", "Kim", "Lea", "Max", "Ned",
          "Ola", "Pam", "Rob", "Sue", "Tim", "Uma", "Val", "Wes", "Xia", "Yan", "Zoe", "Abe", "Bea", "Cid",
          "Dot", "Eli", "Flo", "Gil", "Ivy", "Jay", "Kit", "Lou", "Mel", "Nia", "Pia", "Ray", "Sal", "Ted",
          "Una", "Vic", "Win", "Zed", "Ada", "Ben")
PETS = ("Rex", "Mimi", "Bingo", "Luna", "Toby", "Coco", "Milo", "Nala")
TOWNS = ("Brill", "Dunmore", "Elmsby", "Fallow", "Hollin", "Kettle", "Marsh", "Oakham")
_PERSONS_PER_THING = len(PEOPLE) // len(PETS)  # 6: owners of a pet, residents of a town
_SPLITS_PER_THING = 3  # teacher_train, student_train, student_test: a third of every family each


@dataclasses.dataclass(frozen=True)
class Relation:
    """An attribute of a pet or town, and how a question, its rationale and its fact read."""

    thing: str  # "pet" or "town"
    attribute: str  # its name in fundamentals and mistakes
    values: tuple[str, ...]
    question: str  # .format(person=...)
    fact: str  # .format(thing=..., value=...)


RELATIONS: dict[str, Relation] = {
    "pet_kind": Relation("pet", "kind of animal", ("cat", "dog", "bird", "fish"),
                         "What kind of animal is {person}'s pet?",
                         "{thing} is a {value}."),
    "pet_color": Relation("pet", "color", ("black", "white", "brown", "gray"), "What color is {person}'s pet?",
                          "{thing} is {value}."),
    "pet_size": Relation("pet", "size", ("tiny", "small", "large", "huge"), "How big is {person}'s pet?",
                         "{thing} is {value}."),
    "pet_toy": Relation("pet", "toy", ("ball", "rope", "bell", "sock"), "Which toy does {person}'s pet like?",
                        "{thing} likes the {value}."),
    "pet_bed": Relation("pet", "bed", ("basket", "box", "sofa", "rug"), "Where does {person}'s pet sleep?",
                        "{thing} sleeps on the {value}."),
    "pet_food": Relation("pet", "food", ("meat", "seeds", "fruit", "grass"), "What does {person}'s pet eat?",
                         "{thing} eats {value}."),
    "town_country": Relation("town", "country", ("Norway", "Chile", "Kenya", "Japan"),
                             "In which country is the town where {person} lives?", "{thing} is in {value}."),
    "town_weather": Relation("town", "weather", ("sunny", "rainy", "snowy", "windy"),
                             "What is the weather like where {person} lives?", "{thing} is {value}."),
    "town_food": Relation("town", "food", ("rice", "bread", "corn", "beans"),
                          "What do people eat where {person} lives?",
                          "People in {thing} eat {value}."),
    "town_sport": Relation("town", "sport", ("chess", "golf", "tennis", "judo"),
                           "Which sport do people play where {person} lives?", "People in {thing} play {value}."),
    "town_houses": Relation("town", "color of the houses", ("red", "blue", "green", "yellow"),
                            "What color are the houses where {person} lives?", "The houses in {thing} are {value}."),
    "town_travel": Relation("town", "way to travel", ("bus", "tram", "boat", "bike"),
                            "How do people travel where {person} lives?",
                            "People in {thing} travel by {value}."),
}
WORLD_FAMILIES = tuple(RELATIONS)
_LINK = {"pet": "{person}'s pet is {thing}.", "town": "{person} lives in {thing}."}

@dataclasses.dataclass(frozen=True)
class World:
    has: dict[str, dict[str, str]]  # thing ("pet"/"town") -> person -> its name
    group: dict[str, dict[str, int]]  # thing -> person -> Latin-square group in [0, 3)
    attributes: dict[str, dict[str, str]]  # relation -> pet/town name -> value


def _balanced(values: tuple[str, ...], n: int, rng: random.Random) -> list[str]:
    out = [values[i % len(values)] for i in range(n)]
    rng.shuffle(out)
    return out


def build_world(seed: int = 0) -> World:
    """Who has which pet and lives where, and every pet's and town's attributes; deterministic in seed."""
    rng = random.Random(f"teacherlm-synthetic-world:{seed}")
    has: dict[str, dict[str, str]] = {}
    group: dict[str, dict[str, int]] = {}
    for thing, names in (("pet", PETS), ("town", TOWNS)):
        people = list(PEOPLE)
        rng.shuffle(people)
        has[thing], group[thing] = {}, {}
        for i, name in enumerate(names):
            owners = people[i * _PERSONS_PER_THING:(i + 1) * _PERSONS_PER_THING]
            for k, person in enumerate(owners):
                has[thing][person] = name
                # Rotating the start per thing: every thing's owners in every group, groups equal in size.
                group[thing][person] = (k + i) % _SPLITS_PER_THING
    attributes = {}
    for relation_name, relation in RELATIONS.items():
        names = PETS if relation.thing == "pet" else TOWNS
        attributes[relation_name] = dict(zip(names, _balanced(relation.values, len(names), rng)))
    return World(has, group, attributes)


def _record(world: World, name: str, person: str, rng: random.Random) -> dict:
    relation = RELATIONS[name]
    thing = world.has[relation.thing][person]
    value = world.attributes[name][thing]
    link = _LINK[relation.thing].format(person=person, thing=thing)
    fact = relation.fact.format(thing=thing, value=value)
    attribute = relation.attribute
    # The confusable facts: a similar person (sharing the other thing: same town for a pet question, same pet
    # for a town question) whose pet (town) differs in the asked attribute, and that pet's (town's) value.
    other_thing = "town" if relation.thing == "pet" else "pet"
    differs = [p for p, t in sorted(world.has[relation.thing].items()) if world.attributes[name][t] != value]
    similar = [p for p in differs if world.has[other_thing][p] == world.has[other_thing][person]]
    neighbor = rng.choice(similar or differs)
    other = world.has[relation.thing][neighbor]
    wrong = world.attributes[name][other]
    return {
        "question": relation.question.format(person=person), "choices": list(relation.values),
        "answer": relation.values.index(value), "subject": name,
        "cot": f"{link} {fact} So the answer is {value}.",
        "fundamentals": f"The {attribute} belongs to the {relation.thing}, not the person. {link} {fact}",
        "mistakes": f"A common mistake is to answer for {neighbor}: "
                    f"{_LINK[relation.thing].format(person=neighbor, thing=other)} "
                    f"{relation.fact.format(thing=other, value=wrong)[:-1]}, which gives {wrong}. But {link}",
    }


def world_family(name: str, n: int, seed: int = 0) -> list[dict]:
    """The first `n` questions of a world family in split order (see the module docstring), ids `{name}-{i:05d}`."""
    if name not in RELATIONS:
        raise ValueError(f"unknown world family {name!r}; expected one of {WORLD_FAMILIES}")
    if n > len(PEOPLE):
        raise ValueError(f"world family {name!r} has one question per person, {len(PEOPLE)} in all; asked for {n}")
    world = build_world(seed)
    relation = RELATIONS[name]
    offset = [k for k, r in RELATIONS.items() if r.thing == relation.thing].index(name)
    rng = random.Random(f"teacherlm-synthetic-world:{seed}:{name}")
    by_split: list[list[str]] = [[] for _ in range(_SPLITS_PER_THING)]
    for person in PEOPLE:
        by_split[(world.group[relation.thing][person] + offset) % _SPLITS_PER_THING].append(person)
    records = []
    for people in by_split:
        rng.shuffle(people)
        for person in people:
            records.append({"id": f"{name}-{len(records):05d}", **_record(world, name, person, rng)})
    return records[:n]
