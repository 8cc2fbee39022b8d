"""Rationale quality (#14 item 4) and the augment output as a Hugging Face dataset (#14 item 3): the final
answer parser, the per-text flags, `config.data.filter` with its counts, the parquet shards and dataset
card, and student data read from parquet equal to the same data read from the JSONL parts."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from teacherlm_jax.augment import Settings, augment_records
from teacherlm_jax.augment.export import CARD, schema, write_dataset
from teacherlm_jax.augment.files import read_parts
from teacherlm_jax.augment.summary import write_summary
from teacherlm_jax.data import KINDS
from teacherlm_jax.data.answers import final_answer
from teacherlm_jax.data.examples import build_pairs, filter_texts, read_augmented
from teacherlm_jax.data.quality import FILTERS, degenerate, row_quality
from teacherlm_jax.data.training import load_pairs, make_records_iterator
from teacherlm_jax.errors import ConfigError
from teacherlm_jax.generation.sampler import Sampling
from teacherlm_jax.tokenizers import byte_tokenizer
from teacherlm_jax.train.data import make_train_data

from test_augment import model, records, teacher_dir, tokenizer, toy_jsonl  # noqa: F401 (fixtures)

TF = ("True", "False")
ECQA = ("greedy", "worry", "have knowledge", "take charge", "boss")
EGGS = ("26", "8", "12", "30")


@pytest.mark.parametrize("text, choices, expected", [
    ("Sells 9: 19 - 9 = 10. Gives away 2: 10 - 2 = 8. So the answer is 8.", EGGS, 1),
    ("19 - 9 = 10 and 10 - 2 = 8. The answer is (B).", EGGS, 1),
    ("Therefore, the final answer is B. Adding would give 26.", EGGS, 1),
    ("Answer: D", EGGS, 3),
    ("The answer is (A) 26, since selling adds eggs.", EGGS, 0),
    ("Pink Floyd is a band, not a dress code. So the answer is False.", TF, 1),
    ("Floyd concerts admit anyone with a ticket, so the sentence is false.", TF, 1),
    ("Caesar had three children. Thus the claim is not false.", TF, 0),
    ("Yes, Genghis Khan has far more descendants.", TF, 0),
    ("No. Julius Caesar had only three children.", ("yes", "no"), 1),
    ("People in charge look for those who have knowledge.", ECQA, 2),
    ("So the correct option is have knowledge.", ECQA, 2),
    ("the answer is a boss", ECQA, 4),
    # No answer, or an ambiguous one: never guessed.
    ("", TF, None),
    ("The rock group would not be as popular if they had such requirements.", TF, None),
    ("Greedy people and a boss are both wrong here.", ECQA, None),
    ("The answer is (F).", ECQA, None),
    ("The answer is that it depends.", EGGS, None),
    ("Caesar had three children and Khan had sixteen.", TF, None),
])
def test_final_answer(text, choices, expected):
    assert final_answer(text, choices) == expected


def test_flags_of_a_row_and_old_rows_without_counts():
    assert degenerate("the cat sat on the mat " * 4) and degenerate("!" * 40)
    assert not degenerate("Sells 9: 19 - 9 = 10. Gives away 2: 10 - 2 = 8. So the answer is 8.")
    assert not degenerate("no no no")  # too short to call
    row = {"choices": list(EGGS), "answer": 1, "cot": ["So the answer is 8.", "  ", "So the answer is (A)."],
           "mistakes": "Adding 9. " * 6, "new_tokens": {"cot": [5, 0, 16], "mistakes": 16},
           "sampling": {"max_new_tokens": 16}}
    q = row_quality(row)
    assert [(f["empty"], f["cut"], f["final_answer"], f["answer_consistent"]) for f in q["cot"]] == \
           [(False, False, "B", True), (True, False, None, False), (False, True, "A", False)]
    assert q["mistakes"] == [{"empty": False, "cut": True, "degenerate": True, "final_answer": None,
                              "answer_consistent": None}]
    old = {"choices": list(EGGS), "answer": 1, "cot": "So the answer is 8."}  # hand-written: no counts
    assert row_quality(old)["cot"][0]["cut"] is None


def write_rows(directory: Path, rows: list[dict]) -> Path:
    """A finished augment output directory holding `rows` in one JSONL part."""
    directory.mkdir(parents=True)
    (directory / "part-00000-of-00001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "manifest.json").write_text("{}")
    (directory / "summary.json").write_text("{}")
    return directory


def planted_rows() -> list[dict]:
    """Teacher texts with planted faults; max_new_tokens 20."""
    texts = [("So the answer is 8.", 6),  # kept by every filter
             ("So the answer is 26.", 7),  # not answer-consistent
             ("", 0),  # empty (and no answer)
             ("We subtract 9 and then 2, which", 20),  # cut at max_new_tokens (no answer either)
             ("minus minus minus minus " * 5, 18),  # degenerate
             ("19 - 9 - 2 = 8. The answer is (B).", 12)]  # kept
    return [{"id": f"q{i}", "question": "Dan has 19 eggs. He sells 9 and gives away 2. How many are left?",
             "choices": list(EGGS), "answer": 1, "source": "toy", "cot": text, "fundamentals": "Subtract in order.",
             "new_tokens": {"cot": n, "fundamentals": 4}, "sampling": {"max_new_tokens": 20}, "skipped": []}
            for i, (text, n) in enumerate(texts)]


def data_config(datasets, **overrides) -> ml_collections.ConfigDict:
    data = dict(source="records", datasets=tuple(datasets), split="train", format="cot", style="teacherlm",
                kind_ratios={}, seq_len=160, loss_on="all", add_eos=False, skip_invalid=False, eval_fraction=0.0,
                filter="none")
    return ml_collections.ConfigDict(dict(seed=0, batch_size=2, data={**data, **overrides}))


@pytest.mark.parametrize("name, kept, dropped", [
    ("none", ["q0", "q1", "q2", "q3", "q4", "q5"], {}),
    ("clean", ["q0", "q1", "q5"], {"empty": 1, "cut": 1, "degenerate": 1}),
    ("answer_consistent", ["q0", "q5"], {"not_answer_consistent": 4}),
    ("clean_answer_consistent", ["q0", "q5"], {"empty": 1, "cut": 1, "degenerate": 1, "not_answer_consistent": 4}),
])
def test_filter_drops_counts_and_logs(tmp_path, caplog, name, kept, dropped):
    out = write_rows(tmp_path / "augmented" / "toy", planted_rows())
    config = data_config([str(out)], filter=name)
    report: dict = {}
    with caplog.at_level(logging.INFO, logger="teacherlm_jax.data.training"):
        iterator = make_records_iterator(config, byte_tokenizer(), 0, 1, report=report)
    assert next(iterator)["input_ids"].shape == (2, 160)
    entry = report["datasets"][str(out)]
    assert entry["examples"] == report["examples"]["train"] == len(kept) and entry["records"] == 6
    assert entry["filter"] == {"name": name, "texts": 6, "kept": len(kept), "dropped": 6 - len(kept),
                               "cut_unknown": 0, "dropped_by_reason": dropped}
    assert [p.id for p in load_pairs(config.data)] == [f"{i}/cot" for i in kept]
    if name != "none":
        assert f"filter {name!r} kept {len(kept)} of 6 teacher texts; dropped {6 - len(kept)}" in caplog.text
    # format mixed: fundamentals carry no answer and pass answer_consistent; a record whose cot was dropped
    # still gives its fundamentals example.
    mixed = load_pairs(data_config([str(out)], filter=name, format="mixed").data)
    assert sum(p.id.endswith("/fundamentals") for p in mixed) == 6


def test_filter_value_is_validated_naming_the_key(tmp_path):
    config = data_config(["creak"], filter="consistent")
    with pytest.raises(ConfigError, match=re.escape("config.data.filter='consistent'; expected one of")):
        make_train_data(config, byte_tokenizer(), 0, 1)
    with pytest.raises(ConfigError, match=re.escape("config.data.filter='consistent'")):
        load_pairs(config.data)


def test_old_rows_without_token_counts_have_unknown_cut_and_pass_clean(tmp_path):
    rows = [{k: v for k, v in row.items() if k not in ("new_tokens", "sampling")} for row in planted_rows()]
    out = write_rows(tmp_path / "old", rows)
    items, counts = filter_texts(read_augmented(out), "clean", ("cot",))
    assert counts["cut_unknown"] == 6 and counts["cut"] == 0 and counts["kept"] == 4  # empty, degenerate dropped


@pytest.fixture(scope="module")
def augmented(model, tokenizer, records, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("augmented") / "toy"
    teacher = {"init_from": "tiny", "model_type": "bloom", "dtype": "float32",
               "weights": {"sha256": "f" * 64, "method": "file bytes (sha256)", "files": 3, "bytes": 1000}}
    config = Settings(sampling=Sampling(temperature=0.0, max_new_tokens=16), batch_size=4, chunk_size=5)
    augment_records(model, tokenizer, records, out, config, dataset="toy", teacher=teacher,
                    info={"source": "creak", "split": "train", "available": 10176, "max_records": 24})
    write_summary(out)
    return out


def test_parquet_shards_load_with_datasets_and_carry_the_flags(augmented, tmp_path):
    from datasets import load_dataset

    rows = read_parts(augmented)
    summary = json.loads((augmented / "summary.json").read_text())
    shards = sorted((augmented / "data").glob("*.parquet"))
    assert [p.name for p in shards] == ["train-00000-of-00001.parquet"]
    dataset = load_dataset("parquet", data_files=str(augmented / "data" / "*.parquet"),
                           cache_dir=str(tmp_path / "hf_cache"))["train"]
    assert dataset.num_rows == len(rows) == summary["records"]
    for loaded, row in zip(dataset, rows):
        assert {k: loaded[k] for k in ("id", "question", "choices", "answer", *KINDS, "new_tokens", "skipped")} == \
               {k: row[k] for k in ("id", "question", "choices", "answer", *KINDS, "new_tokens", "skipped")}
        assert loaded["gold"] == {k: row["gold"].get(k) for k in KINDS}
        assert loaded["quality"] == row_quality(row)
    # The summary counts the same flags; cut = reached max_new_tokens.
    quality = summary["quality"]
    for kind in KINDS:
        flags = [f for row in rows for f in row_quality(row)[kind]]
        assert quality[kind]["texts"] == len(flags) == len(rows)
        assert quality[kind]["cut"] == summary["reached_max_new_tokens"][kind] > 0
        assert quality[kind]["kept_by_filter"]["none"] == len(rows)
        assert quality[kind]["kept_by_filter"]["clean"] == sum(not (f["empty"] or f["cut"] or f["degenerate"])
                                                               for f in flags)
    assert quality["cot"]["answer_consistent"] == sum(f["answer_consistent"] for row in rows
                                                      for f in row_quality(row)["cot"])
    assert summary["license"] == "mit" and summary["prompts"]["cot"] == "Let's think step by step."

    card = (augmented / CARD).read_text()
    assert card.startswith("---\nlicense: mit\n") and "path: data/train-*.parquet" in card
    for fact in ("f" * 64, "file bytes (sha256)", "`Let's think step by step.`", "| creak | train | 24 | 10176 |",
                 "| temperature | top_k |", f"{summary['tokens']} generated tokens"):
        assert fact in card, fact
    assert "records_per_s" not in card  # nothing that varies between runs


def test_shards_are_deterministic_and_restartable(augmented, tmp_path):
    """Several shards, rewritten from the same parts: the same bytes; shards of an earlier write are removed."""
    rows = read_parts(augmented)
    summary = json.loads((augmented / "summary.json").read_text())
    qualities = [row_quality(row) for row in rows]
    first = write_dataset(tmp_path, rows, qualities, summary, rows_per_shard=5)
    assert [p.name for p in first][-1] == "train-00004-of-00005.parquet"
    data = {p: p.read_bytes() for p in first}
    second = write_dataset(tmp_path, rows, qualities, summary, rows_per_shard=10)
    assert sorted((tmp_path / "data").iterdir()) == second and len(second) == 3
    assert write_dataset(tmp_path, rows, qualities, summary, rows_per_shard=5) == first
    assert {p: p.read_bytes() for p in first} == data
    assert schema(["cot"], 2).field("cot").type == schema(["cot"], 2).field("skipped").type  # list<string>


@pytest.mark.parametrize("name", FILTERS)
def test_student_reads_parquet_as_it_reads_the_parts(augmented, name):
    from_parts = read_augmented(augmented)
    from_parquet = read_augmented(augmented / "data")
    assert from_parquet == from_parts
    assert read_augmented(next((augmented / "data").glob("*.parquet"))) == from_parts
    for fmt in ("cot", "mixed"):
        parts = load_pairs(data_config([str(augmented)], format=fmt, filter=name).data)
        parquet = load_pairs(data_config([str(augmented / "data")], format=fmt, filter=name).data)
        assert parts == parquet == build_pairs(filter_texts(from_parts, name)[0], fmt)
    config = data_config([str(augmented / "data")], filter=name)
    if not load_pairs(config.data):  # random texts: no chain of thought concludes with the gold answer
        with pytest.raises(ConfigError, match=f"no train examples .*filter={name!r}"):
            make_records_iterator(config, byte_tokenizer(), 0, 1)
        return
    a = make_records_iterator(config, byte_tokenizer(), 0, 1)
    b = make_records_iterator(data_config([str(augmented)], filter=name), byte_tokenizer(), 0, 1)
    for _ in range(3):
        np.testing.assert_array_equal(next(a)["input_ids"], next(b)["input_ids"])
